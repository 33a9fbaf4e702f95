import { AsyncLocalStorage } from 'node:async_hooks';
import { createServer } from 'node:http';
import express, { type NextFunction, type Request, type Response } from 'express';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { SessionError } from '../../src/index.js';
import { csrfProtection, session } from '../../src/integrations/express.js';
import { CSRF_CONTENT_TYPES, contentTypeHeader } from '../helpers/csrf-matrix.js';
import { cookiesOf, listen, sessionCookieOf, setup } from '../helpers/session-kit.js';

const NAME = 'sid';
let kit: ReturnType<typeof setup>;
let url: string;
let origin: string;
let close: () => Promise<void>;
const errors: SessionError[] = [];
/** A request-scoped context as loggers and tracers keep one, set before session() runs. */
const context = new AsyncLocalStorage<{ requestId: string }>();

beforeAll(async () => {
  kit = setup({ cookie: { name: NAME, secure: false } });
  const app = express();
  app.use(express.urlencoded({ extended: false }));
  app.use(express.json());
  app.use(express.text({ type: ['text/*', 'multipart/*'] }));
  app.use((req, _res, next) => context.run({ requestId: String(req.headers['x-request-id']) }, next));
  app.use(session(kit.manager));
  app.use(csrfProtection(kit.manager));
  app.get('/context', (_req, res) => {
    res.json({ requestId: context.getStore()?.requestId ?? null });
  });
  app.get('/visit', (req, res) => {
    const visits = ((req.session.get('visits') as number | undefined) ?? 0) + 1;
    req.session.set('visits', visits);
    res.json({ visits });
  });
  app.get('/form', (req, res) => {
    res.json({ token: req.session.csrf.token(), field: req.session.csrf.tokenKey() });
  });
  app.post('/login', async (req, res) => {
    await req.session.login(String(req.body.user ?? 'alice'));
    res.redirect(303, '/me');
  });
  app.get('/me', (req, res) => {
    res.status(req.session.userId ? 200 : 401).json({ user: req.session.userId ?? null });
  });
  app.post('/transfer', (req, res) => {
    req.session.set('transferred', true);
    res.json({ ok: true });
  });
  app.get('/app-cookie', (req, res) => {
    req.session.set('n', 1);
    res.cookie('theme', 'dark').send('ok');
  });
  app.get('/throw', (req) => {
    req.session.set('n', 1);
    throw new Error('handler bug');
  });
  app.use((err: SessionError, _req: Request, res: Response, _next: NextFunction) => {
    errors.push(err);
    res.status(err.status ?? 500).json({ code: err.code ?? null });
  });
  const started = await listen(createServer(app));
  url = started.url;
  origin = started.url;
  close = started.close;
});

afterAll(async () => {
  await close();
});

afterEach(() => {
  kit.store.failing.clear();
  kit.store.latencyMs = 0;
  errors.length = 0;
});

/** A fresh browser session holding a CSRF token: its cookie and token. */
async function withToken(): Promise<{ cookie: string; token: string }> {
  const res = await fetch(`${url}/form`);
  const { token } = (await res.json()) as { token: string };
  // A visitor shown a form holds no stored session yet: the token is bound to its pre-session cookie.
  return { cookie: cookiesOf(res)!, token };
}

/** A POST as a browser on the app's own page sends it: with the app's Origin, unless overridden. */
function post(path: string, init: { cookie?: string; headers?: Record<string, string>; body?: string }) {
  return fetch(`${url}${path}`, {
    method: 'POST',
    redirect: 'manual',
    headers: {
      origin: new URL(url).origin,
      ...(init.cookie ? { cookie: init.cookie } : {}),
      ...init.headers,
    },
    ...(init.body === undefined ? {} : { body: init.body }),
  });
}

describe('Express: req.session', () => {
  it('persists values between requests', async () => {
    const first = await fetch(`${url}/visit`);
    const cookie = sessionCookieOf(first, NAME)!;
    expect(await first.json()).toEqual({ visits: 1 });
    const second = await fetch(`${url}/visit`, { headers: { cookie } });
    expect(await second.json()).toEqual({ visits: 2 });
    expect(second.headers.getSetCookie()).toEqual([]);
  });

  it('res.cookie() from the app and the session cookie are both sent', async () => {
    const res = await fetch(`${url}/app-cookie`);
    const cookies = res.headers.getSetCookie();
    expect(cookies[0]).toBe('theme=dark; Path=/');
    expect(sessionCookieOf(res, NAME)).toBeDefined();
  });

  it('SM-57: login → 303 → /me works at once, even with a slow store', async () => {
    const { cookie, token } = await withToken();
    kit.store.latencyMs = 150;
    const login = await post('/login', {
      cookie,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `user=bob&_csrf=${token}`,
    });
    expect(login.status).toBe(303);
    const newCookie = sessionCookieOf(login, NAME)!;
    expect(newCookie).not.toBe(cookie);
    const me = await fetch(`${url}/me`, { headers: { cookie: newCookie } });
    expect(await me.json()).toEqual({ user: 'bob' });
    expect((await fetch(`${url}/me`, { headers: { cookie } })).status).toBe(401);
  });

  it("SM-56: a store failure at load reaches Express's error handler as 503 STORE_UNAVAILABLE", async () => {
    const cookie = sessionCookieOf(await fetch(`${url}/visit`), NAME)!;
    kit.store.failing.add('load');
    const res = await fetch(`${url}/visit`, { headers: { cookie } });
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ code: 'STORE_UNAVAILABLE' });
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ name: 'SessionError', status: 503, code: 'STORE_UNAVAILABLE' });
    expect(res.headers.getSetCookie()).toEqual([]);
  });

  it("a handler that throws after the session loaded reaches Express's error handler; the server stays up", async () => {
    const res = await fetch(`${url}/throw`);
    expect(res.status).toBe(500);
    expect(errors.map((e) => e.message)).toEqual(['handler bug']);
    expect((await fetch(`${url}/visit`)).status).toBe(200);
  });

  it("requests still complete while a test has replaced the timers with fake ones (the app's next turn is not a faked setImmediate)", async () => {
    vi.useFakeTimers({ toFake: ['setImmediate', 'clearImmediate', 'setTimeout', 'clearTimeout'] });
    try {
      const first = await fetch(`${url}/visit`);
      expect(await first.json()).toEqual({ visits: 1 });
      const cookie = sessionCookieOf(first, NAME)!;
      const second = await fetch(`${url}/visit`, { headers: { cookie } });
      expect(await second.json()).toEqual({ visits: 2 });
    } finally {
      vi.useRealTimers();
    }
  }, 5000);

  it("the app's handlers still see the request's AsyncLocalStorage context, with a fast or a slow store", async () => {
    const ids = Array.from({ length: 20 }, (_, i) => `req-${i}`);
    const seen = async () =>
      Promise.all(
        ids.map(async (id) => {
          const res = await fetch(`${url}/context`, { headers: { 'x-request-id': id } });
          return ((await res.json()) as { requestId: string | null }).requestId;
        }),
      );
    expect(await seen()).toEqual(ids);
    kit.store.latencyMs = 5;
    expect(await seen()).toEqual(ids);
  });

  it('SM-56: a store failure at commit answers 503 without a session cookie', async () => {
    kit.store.failing.add('create');
    const res = await fetch(`${url}/app-cookie`);
    expect(res.status).toBe(503);
    expect(res.headers.getSetCookie()).toEqual([]);
  });
});

describe('SM-43: csrfProtection', () => {
  it('safe methods pass without a token', async () => {
    expect((await fetch(`${url}/visit`)).status).toBe(200);
  });

  it('a POST without a token is refused with a 403 SessionError and a malicious_csrf event', async () => {
    const { cookie } = await withToken();
    const res = await post('/transfer', { cookie });
    expect(res.status).toBe(403);
    expect(await res.json()).toEqual({ code: 'CSRF_INVALID' });
    expect(errors[0]).toMatchObject({ name: 'SessionError', status: 403, expose: true });
    expect(errors[0]!.message).toMatch(/Reload the page and try again/);
    expect(kit.events.at(-1)).toMatchObject({ type: 'malicious_csrf', reason: 'token-missing' });
  });

  it("another session's token is refused", async () => {
    const mine = await withToken();
    const theirs = await withToken();
    const res = await post('/transfer', { cookie: mine.cookie, headers: { 'x-csrf-token': theirs.token } });
    expect(res.status).toBe(403);
  });

  it('a token sent only as a cookie is refused', async () => {
    const { cookie, token } = await withToken();
    const res = await post('/transfer', { cookie: `${cookie}; _csrf=${token}; x-csrf-token=${token}` });
    expect(res.status).toBe(403);
  });

  it('the token is accepted from the form field _csrf, the x-csrf-token header, or a JSON body', async () => {
    const { cookie, token } = await withToken();
    const form = await post('/transfer', {
      cookie,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `_csrf=${encodeURIComponent(token)}`,
    });
    expect(form.status).toBe(200);
    expect((await post('/transfer', { cookie, headers: { 'x-csrf-token': token } })).status).toBe(200);
    const json = await post('/transfer', {
      cookie,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ _csrf: token }),
    });
    expect(json.status).toBe(200);
  });

  it('a visitor without a session cannot post (no token exists to match)', async () => {
    expect((await post('/transfer', { headers: { 'x-csrf-token': 'anything' } })).status).toBe(403);
  });

  it('SM-46: Fetch Metadata decides before the token; Vary names the headers the decision read', async () => {
    const { cookie, token } = await withToken();
    const send = (headers: Record<string, string>) =>
      post('/transfer', { cookie, headers: { 'x-csrf-token': token, ...headers } });
    expect((await send({ 'sec-fetch-site': 'cross-site' })).status).toBe(403);
    expect((await send({ 'sec-fetch-site': 'same-site' })).status).toBe(403);
    const ok = await send({ 'sec-fetch-site': 'same-origin' });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('vary')).toBe('Sec-Fetch-Site, Origin, Referer');
    expect((await send({ 'sec-fetch-site': 'none' })).status).toBe(200);
    expect(kit.events.filter((e) => e.type === 'malicious_csrf').at(-1)?.reason).toBe('cross-site');
  });

  it('SM-47: cross-origin POSTs are refused whatever the Content-Type; same origin with the token passes', async () => {
    const { cookie, token } = await withToken();
    for (const type of CSRF_CONTENT_TYPES) {
      const ct = contentTypeHeader(type);
      const json = type?.toLowerCase().includes('json');
      const body = json ? JSON.stringify({ _csrf: token }) : `_csrf=${token}`;
      for (const bad of ['https://evil.example', 'null', `${origin}.attacker.com`]) {
        const res = await post('/transfer', {
          cookie,
          headers: { ...ct, origin: bad, 'x-csrf-token': token },
          body,
        });
        expect(res.status, `${type} from ${bad}`).toBe(403);
      }
      const noToken = await post('/transfer', {
        cookie,
        headers: { ...ct, origin },
        body: json ? '{}' : 'x=1',
      });
      expect(noToken.status, `${type} without token`).toBe(403);
      const good = await post('/transfer', {
        cookie,
        headers: { ...ct, origin, 'x-csrf-token': token },
        body,
      });
      expect(good.status, `${type} same origin`).toBe(200);
    }
  });

  it('SM-47: without Origin, Referer or Sec-Fetch-Site a POST is refused even with the token; a same-origin Referer passes', async () => {
    const { cookie, token } = await withToken();
    const bare = await fetch(`${url}/transfer`, {
      method: 'POST',
      headers: { cookie, 'x-csrf-token': token },
    });
    expect(bare.status).toBe(403);
    expect(kit.events.filter((e) => e.type === 'malicious_csrf').at(-1)?.reason).toBe('origin-missing');
    const refererOnly = (referer: string) =>
      fetch(`${url}/transfer`, { method: 'POST', headers: { cookie, referer, 'x-csrf-token': token } });
    expect((await refererOnly('https://attacker.example/page')).status).toBe(403);
    expect((await refererOnly(`${url}/form`)).status).toBe(200);
  });

  it('mounted without session(), it fails loudly instead of letting requests through', async () => {
    const app = express();
    app.use(csrfProtection(kit.manager));
    app.post('/', (_req, res) => res.send('let through'));
    app.use((err: SessionError, _req: Request, res: Response, _next: NextFunction) => {
      res.status(err.status).send(err.message);
    });
    const server = await listen(createServer(app));
    try {
      const res = await fetch(server.url, { method: 'POST' });
      expect(res.status).toBe(500);
      expect(await res.text()).toMatch(/needs the session\(\) middleware mounted before it/);
    } finally {
      await server.close();
    }
  });
});
