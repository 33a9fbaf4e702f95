/**
 * Forgiving where it is safe, loud where it is not: `cookie.secure: 'auto'` for http://localhost,
 * CSRF refusals that say which check failed, and warnings (once, through the manager's `warn`)
 * for writes after the response started, timeouts that look like seconds, unknown options, the
 * default store in production and an un-awaited login().
 */
import { createServer, type IncomingHttpHeaders, request, type Server } from 'node:http';
import express, { type NextFunction, type Request, type Response } from 'express';
import Fastify from 'fastify';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  MemoryStore,
  type SessionError,
  SessionManager,
  type SessionManagerOptions,
} from '../../src/index.js';
import { CsrfError, csrfProtection, session } from '../../src/integrations/express.js';
import { sessionPlugin } from '../../src/integrations/fastify.js';
import { withFetchSession } from '../../src/integrations/fetch.js';
import { withSession } from '../../src/integrations/node.js';
import { cookiePair, listen, SECRET, setup, tempDir } from '../helpers/session-kit.js';

interface Reply {
  status: number;
  setCookies: string[];
  body: string;
}

/** A request to 127.0.0.1:`port` with any Host header (fetch cannot set one). */
function send(
  port: number,
  path: string,
  init: { method?: string; host?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path,
        method: init.method ?? 'GET',
        headers: { host: init.host ?? `localhost:${port}`, ...init.headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            setCookies: setCookiesOf(res.headers),
            body: Buffer.concat(chunks).toString('utf8'),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end(init.body);
  });
}

function setCookiesOf(headers: IncomingHttpHeaders): string[] {
  return headers['set-cookie'] ?? [];
}

/** The Cookie header a browser would send back after these Set-Cookie headers. */
function jar(setCookies: string[]): string {
  return setCookies
    .map(cookiePair)
    .filter((p) => !p.cleared)
    .map((p) => `${p.name}=${p.value}`)
    .join('; ');
}

let servers: Server[] = [];
afterEach(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  servers = [];
  vi.unstubAllEnvs();
});

async function serve(server: Server): Promise<number> {
  servers.push(server);
  const { url } = await listen(server);
  return Number(new URL(url).port);
}

/** The README's Express app: session, a form with a CSRF token, a POST behind csrfProtection. */
async function readmeApp(options: Partial<SessionManagerOptions>) {
  const kit = setup(options);
  const errors: SessionError[] = [];
  const app = express();
  app.use(express.urlencoded({ extended: false }));
  app.use(session(kit.manager));
  app.use(csrfProtection(kit.manager));
  app.get('/form', (req, res) => {
    res.json({ token: req.session.csrf.token(), client: req.session.client.ip });
  });
  app.post('/cart', (req, res) => {
    req.session.set('cart', ['apple']);
    res.json({ cart: req.session.get('cart') });
  });
  app.get('/cart', (req, res) => {
    res.json({ cart: req.session.get('cart') ?? null, isNew: req.session.isNew });
  });
  app.use((err: SessionError, _req: Request, res: Response, _next: NextFunction) => {
    errors.push(err);
    res.status(err.status ?? 500).send('refused');
  });
  const port = await serve(createServer(app));
  return { ...kit, port, errors };
}

/** GET /form then POST /cart with its token, as a browser on the page would. */
async function postWithToken(port: number, host?: string) {
  const form = await send(port, '/form', host === undefined ? {} : { host });
  const { token } = JSON.parse(form.body) as { token: string };
  const cookie = jar(form.setCookies);
  const origin = `http://${host ?? `localhost:${port}`}`;
  const post = await send(port, '/cart', {
    method: 'POST',
    ...(host === undefined ? {} : { host }),
    headers: {
      cookie,
      origin,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: `_csrf=${encodeURIComponent(token)}`,
  });
  return { form, post, cookie: jar([...form.setCookies, ...post.setCookies]) };
}

describe("SM-05: cookie.secure: 'auto'", () => {
  it("makes the README's Express example work on http://localhost: plain cookies, the POST passes", async () => {
    const { port, warnings } = await readmeApp({ cookie: { secure: 'auto' } });
    const { form, post, cookie } = await postWithToken(port);
    expect(form.setCookies).toHaveLength(1);
    expect(form.setCookies[0]).toMatch(/^id-pre=/);
    expect(post.status).toBe(200);
    expect(post.setCookies.map((c) => cookiePair(c).name)).toContain('id');
    for (const c of [...form.setCookies, ...post.setCookies]) {
      expect(c).not.toMatch(/;\s*Secure/i);
      expect(c).not.toMatch(/__Host-/);
      expect(c).toMatch(/HttpOnly/);
    }
    const again = await send(port, '/cart', { headers: { cookie } });
    expect(JSON.parse(again.body)).toEqual({ cart: ['apple'], isNew: false });
    expect(warnings).toEqual([]);
  });

  it('works for 127.0.0.1 and [::1] hosts too', async () => {
    const { port } = await readmeApp({ cookie: { secure: 'auto' } });
    expect((await postWithToken(port, `127.0.0.1:${port}`)).post.status).toBe(200);
    expect((await postWithToken(port, `[::1]:${port}`)).post.status).toBe(200);
    expect((await postWithToken(port, `app.localhost:${port}`)).post.status).toBe(200);
  });

  it('stays Secure with the __Host- name on HTTPS (here: a Fetch request to an https:// URL)', async () => {
    const manager = new SessionManager({
      secret: SECRET,
      store: new MemoryStore(),
      cookie: { secure: 'auto' },
      warn: () => {},
    });
    const handler = withFetchSession(manager, (_req, s) => {
      s.set('n', 1);
      return new Response('ok');
    });
    const https = await handler(new Request('https://app.example/'));
    expect(https.headers.getSetCookie()[0]).toMatch(/^__Host-id=.*; Secure/);
    const local = await handler(new Request('http://localhost:3000/'));
    expect(local.headers.getSetCookie()[0]).toMatch(/^id=/);
    expect(local.headers.getSetCookie()[0]).not.toMatch(/Secure/);
    // A plain cookie from a localhost run is not a session cookie on HTTPS.
    const plain = local.headers.getSetCookie()[0]!.split(';')[0]!;
    const replay = withFetchSession(manager, (_req, s) => new Response(String(s.isNew)));
    expect(
      await (await replay(new Request('https://app.example/', { headers: { cookie: plain } }))).text(),
    ).toBe('true');
    expect(
      await (await replay(new Request('http://localhost:3000/', { headers: { cookie: plain } }))).text(),
    ).toBe('false');
  });

  it('is Secure-only for any other host on plain HTTP: no cookie, and the 403 says why', async () => {
    const { port, warnings, errors, events } = await readmeApp({ cookie: { secure: 'auto' } });
    const { form, post } = await postWithToken(port, `app.example:${port}`);
    expect(form.setCookies).toEqual([]);
    expect(post.status).toBe(403);
    expect(post.body).toBe('refused');
    expect(errors.at(-1)).toMatchObject({ code: 'CSRF_INVALID', reason: 'token-mismatch' });
    expect(events.at(-1)).toMatchObject({ type: 'malicious_csrf', reason: 'token-mismatch' });
    expect(warnings.join('\n')).toMatch(/refused by the CSRF check \(token-mismatch\).*secure: 'auto'/);
  });

  it('a proxy on the same machine does not make production traffic "local": any forwarding header disables it', async () => {
    const { port } = await readmeApp({ cookie: { secure: 'auto' } });
    for (const header of ['x-forwarded-for', 'x-forwarded-proto', 'forwarded', 'x-real-ip']) {
      const form = await send(port, '/form', { headers: { [header]: 'for=198.51.100.7' } });
      expect(form.setCookies, header).toEqual([]);
    }
  });

  it('does nothing under NODE_ENV=production: the cookie is Secure-only there', async () => {
    vi.stubEnv('NODE_ENV', 'production');
    const { port } = await readmeApp({ cookie: { secure: 'auto' } });
    const { form, post } = await postWithToken(port);
    expect(form.setCookies).toEqual([]);
    expect(post.status).toBe(403);
  });

  it('applies in the Fastify and node:http integrations too', async () => {
    const kit = setup({ cookie: { secure: 'auto' } });
    const app = Fastify();
    await app.register(sessionPlugin(kit.manager));
    app.get('/write', async (req) => {
      req.session.set('n', ((req.session.get('n') as number | undefined) ?? 0) + 1);
      return { n: req.session.get('n') };
    });
    const local = await app.inject({
      url: '/write',
      remoteAddress: '127.0.0.1',
      headers: { host: 'localhost:3000' },
    });
    const set = local.headers['set-cookie'] as string;
    expect(set).toMatch(/^id=/);
    expect(set).not.toMatch(/Secure/);
    const again = await app.inject({
      url: '/write',
      remoteAddress: '127.0.0.1',
      headers: { host: 'localhost:3000', cookie: set.split(';')[0]! },
    });
    expect(again.json()).toEqual({ n: 2 });
    const remote = await app.inject({
      url: '/write',
      remoteAddress: '203.0.113.5',
      headers: { host: 'localhost' },
    });
    expect(remote.headers['set-cookie']).toBeUndefined();
    await app.close();

    const node = setup({ cookie: { secure: 'auto' } });
    const port = await serve(
      createServer(
        withSession(node.manager, (_req, res, s) => {
          s.set('n', 1);
          res.end('ok');
        }),
      ),
    );
    expect((await send(port, '/')).setCookies[0]).toMatch(/^id=[^;]+; Path=\/; HttpOnly; SameSite=Lax$/);
  });

  it("is validated: only true, false or 'auto'", () => {
    expect(
      () =>
        new SessionManager({
          secret: SECRET,
          store: new MemoryStore(),
          cookie: { secure: 'yes' as unknown as boolean },
        }),
    ).toThrow(/cookie.secure must be true, false or 'auto'/);
  });
});

describe('secure: true (the default) on http://localhost stays Secure, but loudly', () => {
  it('the POST is refused with reason token-mismatch and one warning naming the fix', async () => {
    const { port, warnings, errors } = await readmeApp({});
    for (let i = 0; i < 2; i++) {
      const { post } = await postWithToken(port);
      expect(post.status).toBe(403);
    }
    expect(errors.map((e) => (e as CsrfError).reason)).toEqual(['token-mismatch', 'token-mismatch']);
    const csrfWarnings = warnings.filter((w) => w.includes('CSRF'));
    expect(csrfWarnings).toHaveLength(1);
    expect(csrfWarnings[0]).toMatch(/cookie.secure is on: no session cookie can be set over HTTP/);
    expect(csrfWarnings[0]).toMatch(/cookie: \{ secure: 'auto' \}/);
  });
});

describe('SM-43/SM-44/SM-47: CSRF refusals say which check failed, never the token', () => {
  it('each check has its reason in the error and the malicious_csrf event; the body stays generic', async () => {
    const { port, errors, events } = await readmeApp({ cookie: { secure: 'auto' } });
    const form = await send(port, '/form');
    const { token } = JSON.parse(form.body) as { token: string };
    const cookie = jar(form.setCookies);
    const origin = `http://localhost:${port}`;
    const post = (headers: Record<string, string>, body = '') =>
      send(port, '/cart', {
        method: 'POST',
        headers: { cookie, 'content-type': 'application/x-www-form-urlencoded', ...headers },
        body,
      });
    const cases: [Record<string, string>, string, string][] = [
      [{ origin }, '', 'token-missing'],
      [{ origin }, '_csrf=not-the-token', 'token-mismatch'],
      [{ origin: 'https://evil.example' }, `_csrf=${token}`, 'origin-mismatch'],
      [{}, `_csrf=${token}`, 'origin-missing'],
      [{ origin, 'sec-fetch-site': 'cross-site' }, `_csrf=${token}`, 'cross-site'],
    ];
    for (const [headers, body, reason] of cases) {
      const res = await post(headers, body);
      expect(res.status, reason).toBe(403);
      expect(res.body).toBe('refused');
      const error = errors.at(-1)!;
      expect(error).toBeInstanceOf(CsrfError);
      expect(error).toMatchObject({ code: 'CSRF_INVALID', status: 403, reason });
      expect(error.message).toBe(
        'The form has expired or did not come from this site. Reload the page and try again.',
      );
      expect(events.at(-1)).toMatchObject({ type: 'malicious_csrf', reason });
    }
    expect(JSON.stringify(events)).not.toContain(token);
    expect(JSON.stringify(errors.map((e) => ({ ...e, message: e.message })))).not.toContain(token);
    expect((await post({ origin }, `_csrf=${encodeURIComponent(token)}`)).status).toBe(200);
  });
});

describe('a write after the response started is dropped, and said so (once)', () => {
  it('Express: a set() after res.json() is not stored', async () => {
    const kit = setup({ cookie: { secure: 'auto' } });
    const app = express();
    app.use(session(kit.manager));
    app.get('/late', (req, res) => {
      req.session.set('early', 1);
      res.json({ ok: true });
      req.session.set('late', 2);
    });
    app.get('/read', (req, res) => {
      res.json({ early: req.session.get('early') ?? null, late: req.session.get('late') ?? null });
    });
    const port = await serve(createServer(app));
    const first = await send(port, '/late');
    const cookie = jar(first.setCookies);
    await send(port, '/late', { headers: { cookie } });
    const read = await send(port, '/read', { headers: { cookie } });
    expect(JSON.parse(read.body)).toEqual({ early: 1, late: null });
    const late = kit.warnings.filter((w) => w.includes('after its response had started'));
    expect(late).toHaveLength(1);
    expect(late[0]).toMatch(/the change was dropped/);
  });

  it('node:http: the first write of a new session after res.end() is reported', async () => {
    const kit = setup({ cookie: { secure: 'auto' } });
    const port = await serve(
      createServer(
        withSession(kit.manager, (_req, res, s) => {
          res.end('done');
          s.set('late', 1);
        }),
      ),
    );
    const res = await send(port, '/');
    expect(res.setCookies).toEqual([]);
    expect(kit.store.count('create')).toBe(0);
    expect(kit.warnings).toEqual([expect.stringMatching(/changed after its response had started/)]);
  });

  it('Fastify: a write after the reply was sent is reported', async () => {
    const kit = setup({ cookie: { secure: 'auto' } });
    const app = Fastify();
    await app.register(sessionPlugin(kit.manager));
    let later: Promise<void> | undefined;
    app.get('/late', async (req, reply) => {
      req.session.set('early', 1);
      await reply.send({ ok: true });
      later = new Promise<void>((r) => setTimeout(r, 5)).then(() => {
        req.session.set('late', 2);
      });
      return reply;
    });
    const res = await app.inject({
      url: '/late',
      remoteAddress: '127.0.0.1',
      headers: { host: 'localhost' },
    });
    expect(res.statusCode).toBe(200);
    await later;
    await app.close();
    expect(kit.warnings).toEqual([expect.stringMatching(/changed after its response had started/)]);
  });

  it('Fetch: a write from a task the handler left running is reported', async () => {
    const kit = setup();
    let later: Promise<void> | undefined;
    const handler = withFetchSession(kit.manager, (_req, s) => {
      later = new Promise<void>((r) => setTimeout(r, 5)).then(() => {
        s.set('late', 1);
      });
      return new Response('ok');
    });
    await handler(new Request('https://app.example/'));
    await later;
    expect(kit.warnings).toEqual([expect.stringMatching(/changed after its response had started/)]);
  });
});

describe('an un-awaited login() through Express is reported', () => {
  async function loginApp() {
    const kit = setup({ cookie: { secure: 'auto' } });
    const app = express();
    app.use(session(kit.manager));
    app.get('/visit', (req, res) => {
      req.session.set('cart', ['apple']);
      res.json({ ok: true });
    });
    app.post('/login', (req, res) => {
      void req.session.login('alice'); // the bug: no await
      res.redirect(303, '/me');
    });
    app.get('/me', (req, res) => {
      res.json({ user: req.session.userId ?? null });
    });
    const port = await serve(createServer(app));
    return { ...kit, port };
  }

  it('with a stored session and nothing else to save: when login() changes it after the response started', async () => {
    const { port, warnings, store } = await loginApp();
    const visit = await send(port, '/visit');
    const cookie = jar(visit.setCookies);
    const commits = store.count('commit');
    const login = await send(port, '/login', { method: 'POST', headers: { cookie } });
    expect(login.status).toBe(303);
    expect(login.setCookies).toEqual([]);
    expect(store.count('commit')).toBe(commits);
    const me = await send(port, '/me', {
      headers: { cookie: jar([...visit.setCookies, ...login.setCookies]) },
    });
    expect(JSON.parse(me.body)).toEqual({ user: null });
    expect(warnings).toEqual([expect.stringMatching(/was not awaited: .*a login did not happen/)]);
  });

  it('for a visitor without a stored session (no commit at all): when login() changes it too late', async () => {
    const { port, warnings, store } = await loginApp();
    const login = await send(port, '/login', { method: 'POST' });
    expect(login.status).toBe(303);
    expect(login.setCookies).toEqual([]);
    expect(store.count('create')).toBe(0);
    expect(warnings).toEqual([expect.stringMatching(/was not awaited: .*a login did not happen/)]);
  });
});

describe('options that are valid but probably not meant are warned about, once each', () => {
  function warningsOf(options: Record<string, unknown>): string[] {
    const warnings: string[] = [];
    new SessionManager({
      secret: SECRET,
      store: new MemoryStore(),
      warn: (w) => warnings.push(w),
      ...options,
    } as SessionManagerOptions);
    return warnings;
  }

  it("express-session's options are named, with what sessionflow does instead", () => {
    const warnings = warningsOf({ resave: false, saveUninitialized: false, rolling: true, name: 'sid' });
    expect(warnings).toHaveLength(4);
    expect(warnings[0]).toMatch(
      /unknown option resave is ignored; the nearest known option is touchInterval/,
    );
    expect(warnings[1]).toMatch(
      /unknown option saveUninitialized is ignored.*stored only once something is written/,
    );
    expect(warnings[2]).toMatch(/unknown option rolling is ignored; the nearest known option is idleTimeout/);
    expect(warnings[3]).toMatch(/unknown option name is ignored; the nearest known option is cookie.name/);
  });

  it('a typo names the nearest known option; unknown cookie attributes too', () => {
    expect(warningsOf({ idleTimout: 600_000 })).toEqual([
      'unknown option idleTimout is ignored; the nearest known option is idleTimeout.',
    ]);
    expect(warningsOf({ cookie: { httpOnly: true, sameSite: 'lax', samesite: 'strict' } })).toEqual([
      'unknown option cookie.httpOnly is ignored; the nearest known option is cookie.secure: the session cookie is always HttpOnly; remove it.',
      'unknown option cookie.samesite is ignored; the nearest known option is cookie.sameSite.',
    ]);
  });

  it('timeouts under a minute probably meant seconds', () => {
    const warnings = warningsOf({ idleTimeout: 1800, absoluteTimeout: 43_200, cookie: { maxAge: 3600 } });
    expect(warnings).toEqual([
      expect.stringMatching(/^idleTimeout is 1800 ms \(1.8 s\).*write 1800000\.$/),
      expect.stringMatching(/^absoluteTimeout is 43200 ms .*write 43200000\.$/),
      expect.stringMatching(/^cookie.maxAge is 3600 ms /),
    ]);
    expect(warningsOf({ idleTimeout: 60_000, absoluteTimeout: 3_600_000 })).toEqual([]);
  });

  it('the default file store under NODE_ENV=production', async () => {
    const { dir, cleanup } = await tempDir();
    vi.stubEnv('XDG_STATE_HOME', dir);
    vi.stubEnv('NODE_ENV', 'production');
    const warnings: string[] = [];
    const manager = new SessionManager({ secret: SECRET, warn: (w) => warnings.push(w) });
    await manager.close();
    await cleanup();
    expect(warnings).toEqual([expect.stringMatching(/no store was given.*Pass a store explicitly/)]);
    expect(warningsOf({})).toEqual([]); // an explicit store: nothing to say
  });

  it('no warning outside production, nor for a correct configuration', async () => {
    const { dir, cleanup } = await tempDir();
    vi.stubEnv('XDG_STATE_HOME', dir);
    const manager = new SessionManager({ secret: SECRET, warn: () => expect.unreachable() });
    await manager.close();
    await cleanup();
    expect(
      warningsOf({
        idleTimeout: 900_000,
        cookie: { secure: 'auto', sameSite: 'strict' },
        trustProxy: 'loopback',
      }),
    ).toEqual([]);
  });
});
