import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStore, SessionManager } from '../../src/index.js';
import { attachSession } from '../../src/integrations/node.js';

const secret = 'lazy-hold-secret-0123456789abcdefghijklmnopq';

describe('node:http: the response is held only for sessions that need a commit', () => {
  let server: Server;
  let url: string;
  const held: boolean[] = [];
  beforeAll(async () => {
    const manager = new SessionManager({ secret, store: new MemoryStore(), cookie: { secure: false } });
    server = createServer(async (req, res) => {
      const session = await attachSession(manager, req, res);
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (path === '/write') session.set('n', 1);
      held.push(Object.hasOwn(res, 'end'));
      res.end(String(session.get('n') ?? 'none'));
    });
    server.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((r) => server.close(r)));

  it('SM-59: an anonymous visitor who never writes gets no hold, no cookie; the first write holds and sets the cookie', async () => {
    const anonymous = await fetch(`${url}/read`);
    expect(await anonymous.text()).toBe('none');
    expect(anonymous.headers.getSetCookie()).toEqual([]);
    const write = await fetch(`${url}/write`);
    const cookie = write.headers.getSetCookie()[0]?.split(';')[0];
    expect(cookie).toMatch(/^id=/);
    const back = await fetch(`${url}/read`, { headers: { cookie: cookie! } });
    expect(await back.text()).toBe('1');
    // Untouched new session: not held. First write: held. Existing session: held (touch, renewal).
    expect(held).toEqual([false, true, true]);
  });
});
