import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join, resolve } from 'node:path';
import express, { type NextFunction, type Request, type Response } from 'express';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStore, type SessionError, SessionManager } from '../../src/index.js';
import { csrfProtection, session } from '../../src/integrations/express.js';
import { sessionPlugin } from '../../src/integrations/fastify.js';
import { withSession } from '../../src/integrations/node.js';
import { cookieHeader, readSession, seedSession, sessionCookie, TestClock } from '../../src/testing/index.js';
import { runNodeTest } from '../helpers/node-test.js';
import { listen, SECRET } from '../helpers/session-kit.js';

/** An app's session data, as an interface (a declared type, not a record). */
interface Shop {
  cart: string[];
  visits: number;
  theme: 'light' | 'dark';
}

const root = resolve(import.meta.dirname, '../..');
const START = Date.UTC(2026, 2, 2, 9, 0, 0);

function shop(clock: TestClock, options: { binding?: { ip?: boolean; userAgent?: boolean } } = {}) {
  const warnings: string[] = [];
  const manager = new SessionManager<Shop>({
    secret: SECRET,
    store: new MemoryStore({ now: clock.now }),
    now: clock.now,
    // The tests talk plain HTTP to the app: a Secure cookie would never come back.
    cookie: { name: 'sid', secure: false },
    warn: (w) => warnings.push(w),
    ...options,
  });
  return { manager, warnings };
}

describe('Express app (over HTTP, fetch)', () => {
  const clock = new TestClock(START);
  const { manager, warnings } = shop(clock);
  let url: string;
  let close: () => Promise<void>;

  beforeAll(async () => {
    const app = express();
    app.use(express.json());
    app.use(session(manager));
    app.use(csrfProtection(manager));
    app.post('/cart', (req, res) => {
      const cart = (req.session.get('cart') as string[] | undefined) ?? [];
      req.session.set('cart', [...cart, String(req.body.item)]);
      res.json({ items: cart.length + 1 });
    });
    app.get('/me', (req, res) => {
      const user = req.session.userId;
      res.status(user ? 200 : 401).json({ user: user ?? null, ended: req.session.endedReason ?? null });
    });
    app.post('/logout', async (req, res) => {
      await req.session.logout();
      res.status(204).end();
    });
    app.use((err: SessionError, _req: Request, res: Response, _next: NextFunction) => {
      res.status(err.status ?? 500).json({ code: err.code ?? null });
    });
    ({ url, close } = await listen(createServer(app)));
  });
  afterAll(async () => close());

  const post = (path: string, cookie: string, token: string, body: object = {}) =>
    fetch(`${url}${path}`, {
      method: 'POST',
      headers: { cookie, origin: url, 'content-type': 'application/json', 'x-csrf-token': token },
      body: JSON.stringify(body),
    });

  it('starts with a cart, the handler adds to it, the test reads it back', async () => {
    const seeded = await seedSession(manager, { userId: 'alice', data: { cart: ['x'] } });
    const res = await post('/cart', seeded.cookie, seeded.csrfToken, { item: 'y' });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ items: 2 });
    const stored = await readSession(manager, [seeded.cookie, res]);
    expect(stored).toMatchObject({
      active: true,
      id: seeded.id,
      userId: 'alice',
      data: { cart: ['x', 'y'] },
    });
    expect(stored.authenticatedAt).toBe(START);
  });

  it('a seeded session passes the CSRF check only with its token', async () => {
    const { cookie } = await seedSession(manager, { data: { cart: [] } });
    const res = await post('/cart', cookie, 'not-the-token', { item: 'y' });
    expect(res.status).toBe(403);
    expect((await readSession(manager, cookie)).data).toEqual({ cart: [] });
  });

  it('after 30 idle minutes the user is logged out', async () => {
    const cookie = await sessionCookie(manager, { userId: 'alice' });
    clock.advance(manager.options.idleTimeout - 1);
    expect((await fetch(`${url}/me`, { headers: { cookie } })).status).toBe(200); // and touched
    clock.advance(manager.options.idleTimeout - 1);
    expect((await fetch(`${url}/me`, { headers: { cookie } })).status).toBe(200);
    expect(clock.advancePastIdleTimeout(manager)).toBe(30 * 60_000);
    const res = await fetch(`${url}/me`, { headers: { cookie } });
    expect(res.status).toBe(401);
    expect(await res.json()).toEqual({ user: null, ended: 'idle' });
    expect(await readSession(manager, cookie)).toMatchObject({ active: false, userId: undefined, data: {} });
  });

  it('logout: the response clears the cookie, and the old cookie names no session', async () => {
    const seeded = await seedSession(manager, { userId: 'bob', data: { visits: 3 } });
    const res = await post('/logout', seeded.cookie, seeded.csrfToken);
    expect(res.status).toBe(204);
    expect(cookieHeader(seeded.cookie, res)).toBeUndefined();
    expect((await readSession(manager, [seeded.cookie, res])).active).toBe(false);
    expect((await readSession(manager, seeded.cookie)).active).toBe(false);
    expect(warnings).toEqual([]);
  });
});

describe('Fastify app (inject)', () => {
  const clock = new TestClock(START);
  const { manager } = shop(clock);
  let app: FastifyInstance;

  beforeAll(async () => {
    app = Fastify();
    await app.register(sessionPlugin(manager));
    app.get('/visit', async (request) => {
      const visits = ((request.session.get('visits') as number | undefined) ?? 0) + 1;
      request.session.set('visits', visits);
      return { visits };
    });
    app.post('/login', async (request) => {
      await request.session.login('carol');
      return { ok: true };
    });
    app.get('/me', async (request, reply) => {
      const user = request.session.userId;
      return reply.code(user ? 200 : 401).send({ user: user ?? null, ended: request.session.endedReason });
    });
    await app.ready();
  });
  afterAll(async () => app.close());

  it('starts with a visit count, the handler increments it, the test reads it back', async () => {
    const cookie = await sessionCookie(manager, { data: { visits: 41, theme: 'dark' } });
    const res = await app.inject({ url: '/visit', headers: { cookie } });
    expect(res.json()).toEqual({ visits: 42 });
    // A changed value keeps the cookie: no Set-Cookie, the sent cookie still names the session.
    expect(res.headers['set-cookie']).toBeUndefined();
    const stored = await readSession(manager, [cookie, res]);
    expect(stored.data).toEqual({ visits: 42, theme: 'dark' });
    expect(stored.userId).toBeUndefined();
  });

  it('a login in the handler: the new cookie from the response names the logged-in session', async () => {
    const cookie = await sessionCookie(manager, { data: { cart: ['keep?'] } });
    const res = await app.inject({ method: 'POST', url: '/login', headers: { cookie } });
    expect(res.statusCode).toBe(200);
    const after = await readSession(manager, [cookie, res.headers['set-cookie']]);
    // login() drops pre-login data (keepOnLogin is empty) and gives a new ID.
    expect(after).toMatchObject({ active: true, userId: 'carol', data: {} });
    // The cookie the test started with was retired by the ID change.
    expect(await readSession(manager, cookie)).toMatchObject({ active: false, endedReason: 'regenerated' });
  });

  it('an anonymous cart ends after the anonymous idle timeout, a signed-in user stays', async () => {
    const visitor = await sessionCookie(manager, { data: { cart: ['x'] } });
    const user = await sessionCookie(manager, { userId: 'dave', data: { cart: ['x'] } });
    expect(clock.advancePastIdleTimeout(manager, { anonymous: true })).toBe(15 * 60_000);
    expect((await app.inject({ url: '/me', headers: { cookie: user } })).statusCode).toBe(200);
    expect(await readSession(manager, visitor)).toMatchObject({ active: false, endedReason: 'idle' });
  });

  it('the absolute timeout ends a session however active, 12 hours after login', async () => {
    const cookie = await sessionCookie(manager, { userId: 'erin' });
    let requests = 0;
    await clock.advanceWhileActive(manager, manager.options.absoluteTimeout - 1, async () => {
      requests++;
      const res = await app.inject({ url: '/me', headers: { cookie } });
      expect(res.statusCode).toBe(200);
    });
    expect(requests).toBe(48); // every 15 minutes, never idle
    clock.advance(1);
    const res = await app.inject({ url: '/me', headers: { cookie } });
    expect(res.statusCode).toBe(401);
    expect(res.json()).toEqual({ user: null, ended: 'absolute' });
  });

  it('advancePastAbsoluteTimeout: one jump of absoluteTimeout ends any session', async () => {
    const cookie = await sessionCookie(manager, { userId: 'erin' });
    expect(clock.advancePastAbsoluteTimeout(manager)).toBe(12 * 3_600_000);
    // The store runs on the same clock: 12 hours on, it has already dropped the idle record.
    expect(await readSession(manager, cookie)).toMatchObject({ active: false, endedReason: undefined });
  });
});

describe('node:http handler (withSession, fetch)', () => {
  const clock = new TestClock(START);
  const { manager } = shop(clock, { binding: { ip: true, userAgent: true } });
  let url: string;
  let close: () => Promise<void>;

  beforeAll(async () => {
    const server = createServer(
      withSession(manager, async (_req, res, s) => {
        s.set('theme', s.get('theme') === 'dark' ? 'light' : 'dark');
        s.flash.success('Theme switched');
        res.writeHead(303, { location: '/' }).end();
      }),
    );
    ({ url, close } = await listen(server));
  });
  afterAll(async () => close());

  // With binding on, the seed and the read name the client the app will see.
  const client = { ip: '127.0.0.1', userAgent: 'theme-test/1.0' };

  it('starts with a theme, the handler switches it, the test reads it back', async () => {
    const cookie = await sessionCookie(manager, { data: { theme: 'dark' }, ...client });
    const res = await fetch(`${url}/theme`, {
      method: 'POST',
      redirect: 'manual',
      headers: { cookie, 'user-agent': client.userAgent },
    });
    expect(res.status).toBe(303);
    const stored = await readSession(manager, [cookie, res.headers], client);
    expect(stored).toMatchObject({ active: true, data: { theme: 'light' } });
  });

  it('a seeded session bound to another user agent is refused by the app', async () => {
    const cookie = await sessionCookie(manager, { data: { theme: 'dark' }, ...client });
    await fetch(`${url}/theme`, { method: 'POST', redirect: 'manual', headers: { cookie } }); // other UA
    expect(await readSession(manager, cookie, client)).toMatchObject({ active: false });
  });
});

describe('helpers', () => {
  const clock = new TestClock(START);
  const { manager } = shop(clock);

  it('seedSession: prepare() reaches the whole session API; bags and flash are not data', async () => {
    const seeded = await seedSession(manager, {
      data: { cart: ['a'] },
      prepare: (s) => {
        s.flash.notice('hello');
        s.bag('wizard').set('step', 2);
      },
    });
    expect(seeded.cookie).toMatch(/^sid=[\w-]+\.[\w-]+\.[\w-]+$/);
    expect(seeded.csrfToken).toMatch(/^[\w-]{43}$/);
    expect(await readSession(manager, seeded.cookie)).toMatchObject({ id: seeded.id, data: { cart: ['a'] } });
  });

  it('seedSession: a session that ends up not stored is an error that says so', async () => {
    await expect(
      seedSession(manager, { data: { cart: ['a'] }, prepare: (s) => s.destroy() }),
    ).rejects.toThrow(/left nothing to store.*`data` or a `userId`/);
    await expect(sessionCookie(manager, {})).rejects.toThrow(/left nothing to store/);
    await expect(sessionCookie(manager, { data: {} })).rejects.toThrow(/left nothing to store/);
  });

  it('readSession with no cookie, or a foreign one, is an inactive snapshot', async () => {
    expect(await readSession(manager, undefined)).toEqual({
      active: false,
      id: undefined,
      userId: undefined,
      authenticatedAt: undefined,
      data: {},
      endedReason: undefined,
    });
    expect((await readSession(manager, 'sid=forged.value.here')).active).toBe(false);
  });

  it('a read writes nothing and does not refresh the idle timer', async () => {
    const cookie = await sessionCookie(manager, { userId: 'fay' });
    clock.advance(manager.options.idleTimeout - 1);
    expect((await readSession(manager, cookie)).active).toBe(true);
    clock.advance(1);
    expect(await readSession(manager, cookie)).toMatchObject({ active: false, endedReason: 'idle' });
  });

  it('cookieHeader: a browser cookie jar over Cookie and Set-Cookie headers, Headers and responses', () => {
    expect(cookieHeader('a=1; b=2', ['b=3; Path=/; HttpOnly', 'c=4; Path=/'])).toBe('a=1; b=3; c=4');
    expect(cookieHeader('a=1; b=2', 'a=; Path=/; Max-Age=0')).toBe('b=2');
    expect(cookieHeader('a=1', 'a=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT')).toBeUndefined();
    const headers = new Headers();
    headers.append('set-cookie', 'sid=v2; Path=/; HttpOnly');
    headers.append('set-cookie', 'sid-pre=; Path=/; Max-Age=0');
    expect(cookieHeader('sid=v1; sid-pre=p', { headers })).toBe('sid=v2');
    expect(cookieHeader('sid=v1', { headers: { 'set-cookie': 'sid=v3; Path=/' } })).toBe('sid=v3');
    expect(cookieHeader({ 'Set-Cookie': ['x=1; Secure'] }, null, undefined, [[]])).toBe('x=1');
    expect(cookieHeader('k=a=b==')).toBe('k=a=b==');
    expect(cookieHeader()).toBeUndefined();
  });

  it('TestClock: refuses a manager on another clock, time travel backwards and NaN', async () => {
    const other = new TestClock();
    expect(() => other.advancePastIdleTimeout(manager)).toThrow(
      /does not run on this clock.*now: clock\.now/,
    );
    expect(() => other.advancePastAbsoluteTimeout(manager)).toThrow(/does not run on this clock/);
    expect(() => clock.advance(-1)).toThrow(RangeError);
    expect(() => clock.advance(Number.NaN)).toThrow(TypeError);
    expect(() => new TestClock(Number.NaN)).toThrow(TypeError);
    const at = new TestClock(new Date(START));
    expect(at.time).toBe(START);
    expect(at.advance(5)).toBe(START + 5);
    at.set(new Date(0));
    expect(at.now()).toBe(0);
    const unset = new TestClock();
    expect(Math.abs(unset.time - Date.now())).toBeLessThan(5_000);
  });

  it('typed: the data type checks keys and values of the seed and types what is read back', async () => {
    // An untyped manager, typed per call.
    const untyped = new SessionManager({
      secret: SECRET,
      store: new MemoryStore(),
      cookie: { secure: false },
    });
    const cookie = await sessionCookie<Shop>(untyped, { data: { cart: ['x'], theme: 'dark' } });
    const read = await readSession<Shop>(untyped, cookie);
    const cart: string[] | undefined = read.data.cart;
    expect(cart).toEqual(['x']);
    if (process.env.NEVER) {
      // @ts-expect-error a key the data type does not have
      await sessionCookie<Shop>(untyped, { data: { crat: ['x'] } });
      // @ts-expect-error a value of the wrong type
      await sessionCookie<Shop>(untyped, { data: { visits: '1' } });
      // @ts-expect-error a value outside the union
      await sessionCookie(manager, { data: { theme: 'blue' } });
      // @ts-expect-error what is read back is typed
      const n: number | undefined = (await readSession(manager, cookie)).data.cart;
      void n;
    }
  });

  it('sessionflow/testing imports no test runner; the helpers are on its entry point', () => {
    const text = readFileSync(join(root, 'src/testing/app.ts'), 'utf8');
    expect(text).not.toMatch(
      /^\s*(import|export)\b[^;]*from '(vitest|@vitest\/[^']+|jest|mocha|node:test)'/m,
    );
    expect(text).not.toMatch(/from '(express|fastify)'/);
  });
});

describe('the same helpers under node --test', () => {
  it('test/node/testing-helpers.node.ts passes with node:test and node:assert', async () => {
    const { stdout, code, fail, pass } = await runNodeTest(
      join(root, 'test/node/testing-helpers.node.ts'),
      root,
    );
    expect(fail, stdout).toBe(0);
    expect(code, stdout).toBe(0);
    expect(pass, stdout).toBe(5);
  });
});
