/**
 * express-session 1.x with its recommended options (resave: false, saveUninitialized: false).
 * Store from config: memory (its MemoryStore) | redis (connect-redis 9 on node-redis) |
 * file (session-file-store).
 */
import { createServer } from 'node:http';
import { RedisStore } from 'connect-redis';
import express from 'express';
import session, { type Store } from 'express-session';
import sessionFileStore from 'session-file-store';
import {
  ANON_BODY,
  closeRedis,
  closeServer,
  connectRedis,
  listen,
  SECRET,
  serve,
  WRITE_BODY,
} from './_shared.js';

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
  let counter = 0;
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
  app.get('/setup', (req, res) => {
    (req as unknown as SessionRequest).session.k = 'hello';
    res.type('text/plain').send(WRITE_BODY);
  });
  app.get('/read', (req, res) => {
    res.type('text/plain').send(String((req as unknown as SessionRequest).session.k ?? 'missing'));
  });
  app.get('/write', (req, res) => {
    (req as unknown as SessionRequest).session.n = ++counter;
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
      await closeStore();
    },
  };
});
