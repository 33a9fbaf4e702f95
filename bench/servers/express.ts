/**
 * Plain Express 5, no session: the baseline of the Express rows. With `waitMs`, the control row:
 * the same app behind a middleware that waits on a timer, as a store's load waits for its server.
 */
import { createServer } from 'node:http';
import express from 'express';
import { ANON_BODY, closeServer, listen, STORED_VALUE, serve, WRITE_BODY } from './_shared.js';

serve(async (config) => {
  const app = express();
  const wait = config.waitMs;
  if (wait) app.use((_req, _res, next) => void setTimeout(next, wait));
  app.get('/setup', (_req, res) => {
    res.type('text/plain').send(WRITE_BODY);
  });
  app.get('/read', (_req, res) => {
    res.type('text/plain').send(STORED_VALUE);
  });
  app.get('/write', (_req, res) => {
    res.type('text/plain').send(WRITE_BODY);
  });
  app.get('/anon', (_req, res) => {
    res.type('text/plain').send(ANON_BODY);
  });
  const server = createServer(app);
  return { port: await listen(server), close: () => closeServer(server) };
});
