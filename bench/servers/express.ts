/**
 * Plain Express 5, no session: the baseline of the Express rows. With `waitMs`, a control row:
 * the same app behind a middleware that waits on a timer, as a store's load waits for its server.
 * With `dictionaryMode`, the other control: a first middleware puts `req` and `res` into V8's
 * dictionary mode as sessionflow's `session()` does (src/integrations/express.ts), so that what
 * that alone saves Express shows apart from what the session costs.
 */
import { createServer } from 'node:http';
import express from 'express';
import { ANON_BODY, closeServer, listen, STORED_VALUE, serve, WRITE_BODY } from './_shared.js';

serve(async (config) => {
  const app = express();
  const wait = config.waitMs;
  if (config.dictionaryMode) {
    const a = Symbol('a');
    const b = Symbol('b');
    app.use((req, res, next) => {
      for (const o of [req, res] as unknown as Record<symbol, unknown>[]) {
        o[a] = 0;
        o[b] = 0;
        delete o[a]; // not the last property added: V8 moves the object to dictionary mode
        delete o[b];
      }
      next();
    });
  }
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
