/** The benchmark's four routes on an Express app, shared by every Express scenario. */
import { createServer } from 'node:http';
import type { Express, Request } from 'express';
import { ANON_BODY, closeServer, listen, STORED_VALUE, type Started, WRITE_BODY } from './_shared.js';

/** How a scenario's session library reads and writes one key of the request's session. */
export interface SessionAccess {
  get(req: Request, key: string): unknown;
  set(req: Request, key: string, value: unknown): void;
}

/** Mounts /setup, /read, /write and /anon, listens, and closes `closeStore` after the server. */
export async function serveExpressRoutes(
  app: Express,
  session: SessionAccess,
  closeStore: () => Promise<void>,
): Promise<Started> {
  let counter = 0;
  app.get('/setup', (req, res) => {
    session.set(req, 'k', STORED_VALUE);
    res.type('text/plain').send(WRITE_BODY);
  });
  app.get('/read', (req, res) => {
    res.type('text/plain').send(String(session.get(req, 'k') ?? 'missing'));
  });
  app.get('/write', (req, res) => {
    session.set(req, 'n', ++counter);
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
}
