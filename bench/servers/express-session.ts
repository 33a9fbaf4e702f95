/**
 * express-session 1.x with its recommended options (resave: false, saveUninitialized: false).
 * Store from config: memory (its MemoryStore) | redis (connect-redis 9 on node-redis) |
 * file (session-file-store).
 */
import { RedisStore } from 'connect-redis';
import express from 'express';
import session, { type Store } from 'express-session';
import sessionFileStore from 'session-file-store';
import { serveExpressRoutes } from './_express.js';
import { closeRedis, connectRedis, SECRET, serve } from './_shared.js';

/** express-session's `req.session`: its data plus the session's own methods. */
type SessionRequest = { session: Record<string, unknown> };

serve(async (config) => {
  let store: Store | undefined;
  let closeStore = async () => {};
  if (config.store === 'redis') {
    const client = await connectRedis(config.redisUrl);
    store = new RedisStore({ client, prefix: config.prefix ?? 'sfbench:es:' });
    closeStore = () => closeRedis(client, config.prefix);
  } else if (config.store === 'file') {
    const FileStore = sessionFileStore(session);
    store = new FileStore({ path: config.dir, reapInterval: -1, logFn: () => {} });
  } else if (config.store !== 'memory') {
    throw new Error(`unknown store ${String(config.store)}`);
  }
  const app = express();
  app.use(
    session({
      secret: SECRET,
      resave: false,
      saveUninitialized: false,
      cookie: { secure: false },
      ...(store ? { store } : {}),
    }),
  );
  // express-session keeps the data as properties of req.session.
  const data = (req: unknown) => (req as SessionRequest).session;
  return serveExpressRoutes(
    app,
    {
      get: (req, key) => data(req)[key],
      set: (req, key, value) => {
        data(req)[key] = value;
      },
    },
    closeStore,
  );
});
