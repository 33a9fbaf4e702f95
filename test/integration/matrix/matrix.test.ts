/**
 * One scenario matrix, run unchanged against every integration: each file in `./adapters/`
 * default-exports a MatrixAdapter (see `./adapter.ts`), so a new integration is covered by
 * adding its adapter file.
 */
import { readdirSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStore, SessionManager } from '../../../src/index.js';
import {
  cookiePair,
  cookiesOf,
  InstrumentedStore,
  SECRET,
  sessionCookieOf,
} from '../../helpers/session-kit.js';
import {
  MATRIX_COOKIE,
  type MatrixAdapter,
  type MatrixData,
  type MeBody,
  type RefusalBody,
} from './adapter.js';

const dir = new URL('./adapters/', import.meta.url);
const files = readdirSync(dir)
  .filter((f) => /\.(ts|js|mjs)$/.test(f) && !f.endsWith('.d.ts'))
  .sort();
const adapters: MatrixAdapter[] = [];
for (const file of files) {
  const mod = (await import(new URL(file, dir).href)) as { default: MatrixAdapter };
  adapters.push(mod.default);
}

it('finds the adapters', () => {
  expect(adapters.map((a) => a.name)).toEqual(
    expect.arrayContaining(['node:http', 'express4', 'express5', 'fastify', 'fetch']),
  );
});

describe.each(adapters.map((a) => [a.name, a] as const))('%s', (_name, adapter) => {
  let store: InstrumentedStore;
  let manager: SessionManager<MatrixData>;
  let url: string;
  let close: (() => Promise<void>) | undefined;

  beforeAll(async () => {
    store = new InstrumentedStore(new MemoryStore());
    manager = new SessionManager<MatrixData>({
      secret: SECRET,
      store,
      cookie: { name: MATRIX_COOKIE, secure: false },
      warn: () => {},
      audit: () => {},
    });
    const started = await adapter.start(manager);
    url = started.url;
    close = () => started.close();
  });
  afterAll(async () => {
    await close?.();
  });
  afterEach(() => {
    store.failing.clear();
  });

  /** A scenario, unless the adapter declares it cannot run it yet (reported as skipped). */
  const scenario = (id: string, title: string, fn: () => Promise<void>) => {
    const reason = adapter.skip?.[id];
    if (reason) it.skip(`${id}: ${title} (skipped: ${reason})`, fn);
    else it(`${id}: ${title}`, fn);
  };

  /** A browser on the app's own page: its cookies and, once shown a form, its CSRF token. */
  async function visitor(): Promise<{ cookie: string; token: string }> {
    const res = await fetch(`${url}/form`);
    expect(res.status).toBe(200);
    const { token } = (await res.json()) as { token: string };
    return { cookie: cookiesOf(res)!, token };
  }

  function post(
    path: string,
    opts: {
      cookie?: string;
      token?: string;
      body?: unknown;
      form?: boolean;
      headers?: Record<string, string>;
    },
  ) {
    const body = { ...(opts.body as object) } as Record<string, unknown>;
    const headers: Record<string, string> = { origin: url };
    if (opts.cookie) headers.cookie = opts.cookie;
    let payload: string;
    if (opts.form) {
      if (opts.token) body._csrf = opts.token;
      headers['content-type'] = 'application/x-www-form-urlencoded';
      payload = new URLSearchParams(body as Record<string, string>).toString();
    } else {
      if (opts.token) headers['x-csrf-token'] = opts.token;
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    return fetch(`${url}${path}`, {
      method: 'POST',
      redirect: 'manual',
      headers: { ...headers, ...opts.headers },
      body: payload,
    });
  }

  async function me(cookie: string): Promise<{ status: number; body: MeBody }> {
    const res = await fetch(`${url}/me`, { headers: { cookie } });
    return { status: res.status, body: (await res.json()) as MeBody };
  }

  /** Logs in a fresh visitor; returns the session cookie and the (rotated) token. */
  async function login(
    user = 'alice',
    form = false,
  ): Promise<{ cookie: string; token: string; res: Response }> {
    const v = await visitor();
    const res = await post('/login', { ...v, form, body: { user, name: user.toUpperCase() } });
    const sid = sessionCookieOf(res, MATRIX_COOKIE);
    expect(sid, `login answered ${res.status} without a session cookie`).toBeDefined();
    const form2 = await fetch(`${url}/form`, { headers: { cookie: sid! } });
    const { token } = (await form2.json()) as { token: string };
    return { cookie: sid!, token, res };
  }

  scenario('login', 'login (JSON) answers 303/200 with a session cookie', async () => {
    const { res } = await login('alice');
    expect([200, 303]).toContain(res.status);
  });

  scenario('login-form', 'login from a urlencoded form works the same', async () => {
    const { cookie } = await login('fiona', true);
    expect((await me(cookie)).body.user).toBe('fiona');
  });

  scenario('typed-read', 'GET /me returns the typed value written at login', async () => {
    const { cookie } = await login('bob');
    const { status, body } = await me(cookie);
    expect(status).toBe(200);
    expect(body).toEqual({ user: 'bob', profile: { name: 'BOB', plan: 'free' }, cart: {} });
  });

  scenario('typed-write', 'POST /cart, then GET /me shows it', async () => {
    const { cookie, token } = await login('carol');
    const res = await post('/cart', { cookie, token, body: { item: 'apple', qty: 3 } });
    expect(res.status).toBe(200);
    expect((await me(cookie)).body.cart).toEqual({ apple: 3 });
  });

  scenario('flash-once', 'a flash set at login shows once, then is gone', async () => {
    const { cookie } = await login('dave');
    const first = await fetch(`${url}/flash`, { headers: { cookie } });
    expect(await first.json()).toEqual({ messages: ['welcome DAVE'] });
    const second = await fetch(`${url}/flash`, { headers: { cookie } });
    expect(await second.json()).toEqual({ messages: [] });
  });

  scenario('csrf-accept', 'a valid token is accepted', async () => {
    const { cookie, token } = await login('erin');
    expect((await post('/cart', { cookie, token, body: { item: 'a', qty: 1 } })).status).toBe(200);
  });

  scenario('csrf-token-missing', 'a missing token is refused 403 token-missing', async () => {
    const { cookie } = await login('erin');
    const res = await post('/cart', { cookie, body: { item: 'a', qty: 1 } });
    expect(res.status).toBe(403);
    expect(((await res.json()) as RefusalBody).reason).toBe('token-missing');
    expect((await me(cookie)).body.cart).toEqual({});
  });

  scenario('csrf-login-token-missing', 'login without a token is refused 403, no session', async () => {
    const v = await visitor();
    const res = await post('/login', { cookie: v.cookie, body: { user: 'mallory', name: 'M' } });
    expect(res.status).toBe(403);
    expect(((await res.json()) as RefusalBody).reason).toBe('token-missing');
    expect(sessionCookieOf(res, MATRIX_COOKIE)).toBeUndefined();
  });

  scenario('csrf-cross-origin', 'a cross-site Origin is refused 403 origin-mismatch', async () => {
    const { cookie, token } = await login('erin');
    const res = await post('/cart', {
      cookie,
      token,
      body: { item: 'a', qty: 1 },
      headers: { origin: 'https://evil.example' },
    });
    expect(res.status).toBe(403);
    expect(((await res.json()) as RefusalBody).reason).toBe('origin-mismatch');
  });

  scenario('csrf-fetch-metadata', 'Sec-Fetch-Site: cross-site is refused 403 cross-site', async () => {
    const { cookie, token } = await login('erin');
    const res = await post('/cart', {
      cookie,
      token,
      body: { item: 'a', qty: 1 },
      headers: { 'sec-fetch-site': 'cross-site' },
    });
    expect(res.status).toBe(403);
    expect(((await res.json()) as RefusalBody).reason).toBe('cross-site');
  });

  scenario('logout-replay', 'logout clears the cookie and the replayed old cookie is dead', async () => {
    const { cookie, token } = await login('frank');
    const res = await post('/logout', { cookie, token });
    expect([200, 303]).toContain(res.status);
    const cleared = res.headers
      .getSetCookie()
      .map(cookiePair)
      .find((p) => p.name === MATRIX_COOKIE);
    expect(cleared?.cleared).toBe(true);
    const replay = await me(cookie);
    expect(replay.status).toBe(401);
    expect(replay.body.user).toBeNull();
  });

  scenario('store-outage-load', 'store down when loading → 503, no Set-Cookie', async () => {
    const { cookie } = await login('gina');
    store.failing.add('load');
    const res = await fetch(`${url}/me`, { headers: { cookie } });
    expect(res.status).toBe(503);
    expect(res.headers.getSetCookie()).toEqual([]);
    await res.arrayBuffer();
  });

  scenario('store-outage-commit', 'store down when saving a write → 503, no Set-Cookie', async () => {
    const { cookie, token } = await login('hank');
    store.failing.add('commit');
    const res = await post('/cart', { cookie, token, body: { item: 'x', qty: 1 } });
    expect(res.status).toBe(503);
    expect(res.headers.getSetCookie()).toEqual([]);
    await res.arrayBuffer();
    store.failing.clear();
    expect((await me(cookie)).body.cart).toEqual({});
  });

  scenario('store-outage-login', 'store down while logging in → 503, no Set-Cookie', async () => {
    const v = await visitor();
    for (const op of ['create', 'commit', 'destroy'] as const) store.failing.add(op);
    const res = await post('/login', { ...v, body: { user: 'jane', name: 'J' } });
    expect(res.status).toBe(503);
    expect(res.headers.getSetCookie()).toEqual([]);
    await res.arrayBuffer();
  });

  scenario('concurrent-writes', '10 concurrent POST /cart of different keys all survive', async () => {
    const { cookie, token } = await login('ivy');
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        post('/cart', { cookie, token, body: { item: `k${i}`, qty: i + 1 } }),
      ),
    );
    expect(results.map((r) => r.status)).toEqual(Array(10).fill(200));
    const { cart } = (await me(cookie)).body;
    expect(cart).toEqual(Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`k${i}`, i + 1])));
  });
});
