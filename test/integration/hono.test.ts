import type { Server } from 'node:http';
import { type HttpBindings, serve } from '@hono/node-server';
import { Hono } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { SessionManagerOptions } from '../../src/index.js';
import { CsrfError, csrfProtection, type SessionVariables, session } from '../../src/integrations/hono.js';
import { oneSocketClient } from '../helpers/raw-http.js';
import { cookiePair, cookiesOf, flipAt, sessionCookieOf, setup } from '../helpers/session-kit.js';

const NAME = 'sid';

type Data = {
  profile: { name: string; plan: 'free' | 'pro' };
  [key: `k${number}`]: number;
};

type Kit = ReturnType<typeof setup<Data>>;

interface Started {
  url: string;
  kit: Kit;
  refusals: CsrfError[];
  close: () => Promise<void>;
}

/** The app under test, on a real @hono/node-server server on 127.0.0.1. */
async function start(options: Partial<SessionManagerOptions> = {}): Promise<Started> {
  const kit = setup<Data>({ cookie: { name: NAME, secure: false }, ...options });
  const refusals: CsrfError[] = [];
  const app = new Hono<{ Bindings: HttpBindings; Variables: SessionVariables<Data> }>();
  app.use(session(kit.manager));
  app.use(csrfProtection(kit.manager));
  app.get('/form', (c) => c.json({ token: c.get('session').csrf.token() }));
  app.post('/login', async (c) => {
    const body = await c.req.parseBody();
    const s = c.get('session');
    await s.login(String(body.user));
    s.set('profile', { name: String(body.name), plan: 'free' });
    s.flash.success(`welcome ${body.name}`);
    return c.redirect('/me', 303);
  });
  app.get('/me', (c) => {
    const s = c.get('session');
    const profile = s.get('profile') ?? null;
    return c.json({ user: s.userId ?? null, profile }, s.userId ? 200 : 401);
  });
  app.get('/flash', (c) => c.json({ messages: c.get('session').flash.messages('success') }));
  app.post('/write/:n', (c) => {
    const n = Number(c.req.param('n'));
    c.get('session').set(`k${n}`, n);
    return c.json({ ok: true });
  });
  app.get('/keys', (c) => {
    const s = c.get('session');
    return c.json(Array.from({ length: 10 }, (_, n) => s.get(`k${n}`) ?? null));
  });
  app.post('/logout', async (c) => {
    await c.get('session').logout();
    return c.json({ ok: true });
  });
  // A redirect built by the Fetch API: its headers are immutable.
  app.post('/login-raw', async (c) => {
    await c.get('session').login('raw');
    return Response.redirect(new URL('/me', c.req.url), 303);
  });
  app.onError((err, c) => {
    if (err instanceof HTTPException && err.cause instanceof CsrfError) {
      refusals.push(err.cause);
      return c.json({ code: err.cause.code, reason: err.cause.reason }, 403);
    }
    if (err instanceof HTTPException) return err.getResponse();
    return c.text('unexpected', 500);
  });
  const server = await new Promise<Server>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s as Server));
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    kit,
    refusals,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

let app: Started;
beforeAll(async () => {
  app = await start();
});
afterAll(() => app.close());
afterEach(() => {
  app.kit.store.failing.clear();
  app.refusals.length = 0;
});

/** A visitor shown a form: its cookies (the pre-session one holds the token) and the token. */
async function form(): Promise<{ cookie: string; token: string }> {
  const res = await fetch(`${app.url}/form`);
  const { token } = (await res.json()) as { token: string };
  return { cookie: cookiesOf(res)!, token };
}

function post(
  path: string,
  cookie: string | undefined,
  init: { headers?: Record<string, string>; body?: string } = {},
) {
  return fetch(`${app.url}${path}`, {
    method: 'POST',
    redirect: 'manual',
    headers: { origin: app.url, ...(cookie ? { cookie } : {}), ...init.headers },
    ...(init.body === undefined ? {} : { body: init.body }),
  });
}

const formBody = (fields: Record<string, string>) => ({
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams(fields).toString(),
});

/** Logs in through the form (token in the `_csrf` field): the session cookie. */
async function login(user = 'alice', name = 'Alice'): Promise<string> {
  const { cookie, token } = await form();
  const res = await post('/login', cookie, formBody({ user, name, _csrf: token }));
  expect(res.status).toBe(303);
  expect(res.headers.get('location')).toBe('/me');
  expect(res.headers.get('cache-control')).toBe('no-store');
  return sessionCookieOf(res, NAME)!;
}

describe('Hono on @hono/node-server: session()', () => {
  it('login → 303 with the session cookie; typed read on the next request; the flash shows once', async () => {
    const cookie = await login('alice', 'Alice');
    expect(cookie).toMatch(/^sid=/);
    const me = await fetch(`${app.url}/me`, { headers: { cookie } });
    expect(me.status).toBe(200);
    expect(await me.json()).toEqual({ user: 'alice', profile: { name: 'Alice', plan: 'free' } });
    const first = await fetch(`${app.url}/flash`, { headers: { cookie } });
    expect(await first.json()).toEqual({ messages: ['welcome Alice'] });
    const second = await fetch(`${app.url}/flash`, { headers: { cookie } });
    expect(await second.json()).toEqual({ messages: [] });
  });

  it('a visitor who never touches the session gets no cookie', async () => {
    const res = await fetch(`${app.url}/me`);
    expect(res.status).toBe(401);
    expect(res.headers.getSetCookie()).toEqual([]);
  });

  it('a Fetch API redirect (immutable headers) still carries the committed session', async () => {
    const { cookie, token } = await form();
    const res = await post('/login-raw', cookie, { headers: { 'x-csrf-token': token } });
    expect(res.status).toBe(303);
    const sid = sessionCookieOf(res, NAME)!;
    expect(sid).toBeDefined();
    const me = await fetch(`${app.url}/me`, { headers: { cookie: sid } });
    expect(((await me.json()) as { user: string }).user).toBe('raw');
  });

  it('logout clears the cookie, sends Clear-Site-Data, and the old cookie is dead', async () => {
    const cookie = await login('bob', 'Bob');
    const me = await fetch(`${app.url}/form`, { headers: { cookie } });
    const { token } = (await me.json()) as { token: string };
    const out = await post('/logout', cookie, { headers: { 'x-csrf-token': token } });
    expect(out.status).toBe(200);
    const cleared = out.headers.getSetCookie().map(cookiePair);
    expect(cleared.find((c) => c.name === NAME)?.cleared).toBe(true);
    expect(out.headers.get('clear-site-data')).toBeTruthy();
    const replay = await fetch(`${app.url}/me`, { headers: { cookie } });
    expect(replay.status).toBe(401);
    expect(await replay.json()).toEqual({ user: null, profile: null });
  });

  it('10 concurrent writes of different keys all survive', async () => {
    const cookie = await login('carol', 'Carol');
    const { token } = (await (await fetch(`${app.url}/form`, { headers: { cookie } })).json()) as {
      token: string;
    };
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, n) =>
        post(`/write/${n}`, cookie, { headers: { 'x-csrf-token': token } }),
      ),
    );
    expect(results.map((r) => r.status)).toEqual(Array(10).fill(200));
    const keys = await fetch(`${app.url}/keys`, { headers: { cookie } });
    expect(await keys.json()).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('SM-56: a store outage at load answers 503, never an empty session, and sets no cookie', async () => {
    const cookie = await login('dave', 'Dave');
    app.kit.store.failing.add('load');
    const res = await fetch(`${app.url}/me`, { headers: { cookie } });
    expect(res.status).toBe(503);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(await res.text()).toMatch(/^Service Unavailable: /);
    expect(res.headers.getSetCookie()).toEqual([]);
  });

  it('SM-56: a store outage at commit replaces the response with a 503 without any cookie', async () => {
    const { cookie, token } = await form();
    app.kit.store.failing.add('create');
    const res = await post('/login', cookie, formBody({ user: 'erin', name: 'Erin', _csrf: token }));
    expect(res.status).toBe(503);
    expect(res.headers.get('location')).toBeNull();
    expect(res.headers.getSetCookie()).toEqual([]);
  });
});

describe('SM-14: Hono on @hono/node-server, one keep-alive connection', () => {
  it('a forged cookie between two valid ones on one socket: 401 for it, the user again after', async () => {
    const cookie = await login('erin', 'Erin');
    const value = cookie.slice(NAME.length + 1);
    const forged = `${NAME}=${flipAt(value, value.length - 1)}`;
    const client = oneSocketClient(app.url);
    try {
      for (let round = 0; round < 2; round++) {
        const me = await client.get('/me', cookie);
        expect(me.status).toBe(200);
        expect(JSON.parse(me.body).user).toBe('erin');
        const refused = await client.get('/me', forged);
        expect(refused.status).toBe(401);
        expect(JSON.parse(refused.body).user).toBeNull();
        expect(refused.setCookies).toEqual([]);
      }
    } finally {
      client.close();
    }
  });
});

describe('Hono: csrfProtection()', () => {
  it('accepts the token from the header or the form field, with the app Origin', async () => {
    const cookie = await login('frank', 'Frank');
    const { token } = (await (await fetch(`${app.url}/form`, { headers: { cookie } })).json()) as {
      token: string;
    };
    expect((await post('/write/1', cookie, { headers: { 'x-csrf-token': token } })).status).toBe(200);
    expect((await post('/write/2', cookie, formBody({ _csrf: token }))).status).toBe(200);
    const json = await post('/write/3', cookie, {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ _csrf: token }),
    });
    expect(json.status).toBe(200);
    expect(json.headers.get('vary')).toMatch(/Origin/);
  });

  it('refuses with a reason: token missing, token mismatch, foreign Origin, cross-site', async () => {
    const mine = await form();
    const theirs = await form();
    const cases: [Record<string, string>, string][] = [
      [{}, 'token-missing'],
      [{ 'x-csrf-token': theirs.token }, 'token-mismatch'],
      [{ 'x-csrf-token': mine.token, origin: 'https://attacker.example' }, 'origin-mismatch'],
      [{ 'x-csrf-token': mine.token, 'sec-fetch-site': 'cross-site' }, 'cross-site'],
    ];
    for (const [headers, reason] of cases) {
      const res = await post('/write/4', mine.cookie, { headers });
      expect(res.status, reason).toBe(403);
      expect(await res.json()).toEqual({ code: 'CSRF_INVALID', reason });
      expect(app.kit.events.at(-1)).toMatchObject({ type: 'malicious_csrf', reason });
    }
    expect(app.refusals.map((r) => r.reason)).toEqual(cases.map(([, r]) => r));
    // Nothing was written by the refused requests.
    expect(app.kit.events.some((e) => e.reason === mine.token)).toBe(false);
  });

  it("without the app's onError, Hono's default handler sends the 403 itself", async () => {
    const bare = new Hono();
    bare.use(session(app.kit.manager));
    bare.use(csrfProtection(app.kit.manager));
    bare.post('/x', (c) => c.text('ok'));
    const res = await bare.request('http://127.0.0.1/x', {
      method: 'POST',
      headers: { origin: 'http://127.0.0.1' },
    });
    expect(res.status).toBe(403);
    expect(res.headers.get('vary')).toBe('Sec-Fetch-Site, Origin, Referer');
    expect(await res.text()).toMatch(/^Forbidden: The form has expired/);
  });
});

describe('Hono: the client address the manager sees', () => {
  const ipOfRefusal = async (started: Started, headers: Record<string, string> = {}) => {
    const res = await fetch(`${started.url}/write/1`, {
      method: 'POST',
      headers: { origin: started.url, ...headers },
    });
    expect(res.status).toBe(403);
    return started.kit.events.at(-1)?.ip;
  };

  it('is the socket address, X-Forwarded-For ignored without trustProxy', async () => {
    expect(await ipOfRefusal(app)).toBe('127.0.0.1');
    expect(await ipOfRefusal(app, { 'x-forwarded-for': '203.0.113.9' })).toBe('127.0.0.1');
  });

  it('is the forwarded client under trustProxy (the peer is a trusted proxy)', async () => {
    const proxied = await start({ trustProxy: 'loopback' });
    try {
      expect(await ipOfRefusal(proxied, { 'x-forwarded-for': '203.0.113.9' })).toBe('203.0.113.9');
      expect(await ipOfRefusal(proxied)).toBe('127.0.0.1');
    } finally {
      await proxied.close();
    }
  });
});
