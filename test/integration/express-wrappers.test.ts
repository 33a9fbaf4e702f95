import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type NextFunction, type Request, type Response } from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStore, SessionManager } from '../../src/index.js';
import { session } from '../../src/integrations/express.js';

const secret = 'express-wrappers-secret-0123456789abcdefghij';

/** Middleware that wraps res.end per response, as compression and response-time loggers do. */
function wrapsEnd(tag: string) {
  return (_req: Request, res: Response, next: NextFunction) => {
    const end = res.end;
    res.end = function (this: Response, ...args: Parameters<Response['end']>) {
      res.setHeader(`x-${tag}`, 'ran');
      return end.apply(this, args);
    } as Response['end'];
    next();
  };
}

describe('Express: session() next to middleware that wraps res.end', () => {
  let server: Server;
  let url: string;
  beforeAll(async () => {
    const manager = new SessionManager({ secret, store: new MemoryStore(), cookie: { secure: false } });
    const app = express();
    app.use(wrapsEnd('before'));
    app.use(session(manager));
    app.use(wrapsEnd('after'));
    app.get('/write', (req, res) => {
      req.session.set('n', 1);
      res.redirect(303, '/read');
    });
    app.get('/read', (req, res) => {
      res.send(String(req.session.get('n') ?? 'none'));
    });
    server = app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((r) => server.close(r)));

  it('SM-57: both wrappers run and the session cookie goes out with the redirect, on every request', async () => {
    for (let i = 0; i < 3; i++) {
      const write = await fetch(`${url}/write`, { redirect: 'manual' });
      expect(write.status).toBe(303);
      expect(write.headers.get('x-before')).toBe('ran');
      expect(write.headers.get('x-after')).toBe('ran');
      const cookie = write.headers.getSetCookie()[0]?.split(';')[0];
      expect(cookie).toMatch(/^id=/);
      const read = await fetch(`${url}/read`, { headers: { cookie: cookie! } });
      expect(await read.text()).toBe('1');
    }
  });
});
