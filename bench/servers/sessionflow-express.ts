/** sessionflow's Express middleware, mounted app-wide as its docs show. Store from config. */
import { createServer } from 'node:http';
import express from 'express';
import { session } from '../../src/integrations/express.js';
import { sessionflow } from './_sessionflow.js';
import { ANON_BODY, closeServer, listen, serve, WRITE_BODY } from './_shared.js';

serve(async (config) => {
  const { manager, close } = await sessionflow(config);
  let counter = 0;
  const app = express();
  app.use(session(manager));
  app.get('/setup', (req, res) => {
    req.session.set('k', 'hello');
    res.type('text/plain').send(WRITE_BODY);
  });
  app.get('/read', (req, res) => {
    res.type('text/plain').send(String(req.session.get('k') ?? 'missing'));
  });
  app.get('/write', (req, res) => {
    req.session.set('n', ++counter);
    res.type('text/plain').send(WRITE_BODY);
  });
  app.get('/anon', (_req, res) => {
    res.type('text/plain').send(ANON_BODY);
  });
  const server = createServer(app);
  const port = await listen(server);
  return {
    port,
    close: async () => {
      await closeServer(server);
      await close();
    },
  };
});
