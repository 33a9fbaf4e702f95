/** sessionflow's Express middleware, mounted app-wide as its docs show. Store from config. */
import express from 'express';
import { express as integration } from './_dist.js';
import { serveExpressRoutes } from './_express.js';
import { sessionflow } from './_sessionflow.js';
import { serve } from './_shared.js';

serve(async (config) => {
  const { manager, close } = await sessionflow(config);
  const app = express();
  app.use(integration.session(manager));
  return serveExpressRoutes(
    app,
    {
      get: (req, key) => req.session.get(key),
      set: (req, key, value) => req.session.set(key, value),
    },
    close,
  );
});
