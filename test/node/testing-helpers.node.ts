/**
 * `sessionflow/testing`'s app helpers under `node:test` and `node:assert`, no vitest anywhere:
 * run with `node --import tsx --test test/node/testing-helpers.node.ts` (the vitest suite
 * test/unit/testing-helpers.test.ts runs it so, and checks its TAP counts).
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import Fastify from 'fastify';
import { MemoryStore, SessionManager } from '../../src/index.js';
import { sessionPlugin } from '../../src/integrations/fastify.js';
import { withSession } from '../../src/integrations/node.js';
import { readSession, sessionCookie, TestClock } from '../../src/testing/index.js';

interface Shop {
  cart: string[];
  visits: number;
}

const SECRET = 'q9Vb3-kL0pX7rT2mW8zN4cJ6hY1dF5gS0aE3uI9oP2lK7jH4';

const clock = new TestClock(Date.UTC(2026, 2, 2, 9, 0, 0));
const manager = new SessionManager<Shop>({
  secret: SECRET,
  store: new MemoryStore({ now: clock.now }),
  now: clock.now,
  cookie: { name: 'sid', secure: false },
});

describe('Fastify app through inject', () => {
  const app = Fastify();
  before(async () => {
    await app.register(sessionPlugin(manager));
    app.post('/cart', async (request) => {
      const cart = (request.session.get('cart') as string[] | undefined) ?? [];
      request.session.set('cart', [...cart, 'y']);
      return { items: cart.length + 1 };
    });
    app.get('/me', async (request, reply) =>
      reply.code(request.session.userId ? 200 : 401).send({ ended: request.session.endedReason ?? null }),
    );
    await app.ready();
  });
  after(() => app.close());

  it('starts with a cart, the handler adds to it, the test reads it back', async () => {
    const cookie = await sessionCookie(manager, { userId: 'alice', data: { cart: ['x'] } });
    const res = await app.inject({ method: 'POST', url: '/cart', headers: { cookie } });
    assert.deepEqual(res.json(), { items: 2 });
    const stored = await readSession(manager, [cookie, res]);
    assert.equal(stored.userId, 'alice');
    assert.deepEqual(stored.data, { cart: ['x', 'y'] });
  });

  it('after 30 idle minutes the user is logged out', async () => {
    const cookie = await sessionCookie(manager, { userId: 'alice' });
    clock.advance(manager.options.idleTimeout - 1);
    assert.equal((await app.inject({ url: '/me', headers: { cookie } })).statusCode, 200);
    clock.advancePastIdleTimeout(manager);
    const res = await app.inject({ url: '/me', headers: { cookie } });
    assert.equal(res.statusCode, 401);
    assert.deepEqual(res.json(), { ended: 'idle' });
  });

  it('12 hours after login the user is logged out, however active', async () => {
    const cookie = await sessionCookie(manager, { userId: 'bob' });
    await clock.advanceWhileActive(manager, manager.options.absoluteTimeout - 1, async () => {
      assert.equal((await app.inject({ url: '/me', headers: { cookie } })).statusCode, 200);
    });
    clock.advance(1);
    const res = await app.inject({ url: '/me', headers: { cookie } });
    assert.deepEqual(res.json(), { ended: 'absolute' });
  });
});

describe('node:http handler', () => {
  const server = createServer(
    withSession(manager, async (_req, res, session) => {
      session.set('visits', (session.get('visits') ?? 0) + 1);
      res.end('ok');
    }),
  );
  let url = '';
  before(async () => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });

  it('starts with a visit count, the handler increments it, the test reads it back', async () => {
    const cookie = await sessionCookie(manager, { data: { visits: 9 } });
    const res = await fetch(url, { headers: { cookie } });
    assert.equal(await res.text(), 'ok');
    assert.deepEqual((await readSession(manager, [cookie, res])).data, { visits: 10 });
  });

  it('typed per call: sessionCookie<Shop> and readSession<Shop> on an untyped manager', async () => {
    const untyped = new SessionManager({
      secret: SECRET,
      store: new MemoryStore(),
      cookie: { secure: false },
    });
    const cookie = await sessionCookie<Shop>(untyped, { data: { cart: ['z'] } });
    const cart: string[] | undefined = (await readSession<Shop>(untyped, cookie)).data.cart;
    assert.deepEqual(cart, ['z']);
  });
});
