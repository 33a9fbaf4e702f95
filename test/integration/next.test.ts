// sessionflow/next against a real Next.js server (test/fixtures/next-app, built with
// `next build` and served by `next start` on 127.0.0.1), then against Next's documented request
// objects (a `Request`, and `cookies()`/`headers()`-like stores) for what a server cannot show.
import { type ChildProcess, spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileStore, MemoryStore, SessionManager } from '../../src/index.js';
import {
  commitSession,
  getSession,
  type NextCookieOptions,
  type NextRequestStores,
  withActionSession,
  withSession,
} from '../../src/integrations/next.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const nextBin = join(root, 'node_modules', 'next', 'dist', 'bin', 'next');

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

function run(args: string[], cwd: string, log: string[]): ChildProcess {
  const child = spawn(process.execPath, [nextBin, ...args], {
    cwd,
    env: { ...process.env, NEXT_TELEMETRY_DISABLED: '1', NODE_ENV: 'production' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (d) => log.push(String(d)));
  child.stderr?.on('data', (d) => log.push(String(d)));
  return child;
}

/** A cookie jar of one browser: the `name=value` of each cookie, dropped when cleared. */
class Jar {
  readonly cookies = new Map<string, string>();
  take(response: Response): void {
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split('; ');
      const eq = pair!.indexOf('=');
      const name = pair!.slice(0, eq);
      const value = pair!.slice(eq + 1);
      const expired = attrs.some((a) => /^max-age=0$/i.test(a) || /^expires=Thu, 01 Jan 1970/i.test(a));
      if (expired || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }
  header(): string {
    return [...this.cookies].map(([n, v]) => `${n}=${v}`).join('; ');
  }
}

describe('Next.js App Router (a real `next start`)', () => {
  let dir = '';
  let server: ChildProcess | undefined;
  let base = '';
  const log: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sessionflow-next-'));
    const app = join(dir, 'app');
    cpSync(join(root, 'test', 'fixtures', 'next-app'), app, { recursive: true });
    // No package install: the app's node_modules links to the repository's.
    mkdirSync(join(app, 'node_modules'));
    for (const pkg of ['next', 'react', 'react-dom'])
      symlinkSync(join(root, 'node_modules', pkg), join(app, 'node_modules', pkg), 'dir');
    const src = (file: string) => relative(join(app, 'lib'), join(root, 'src', file));
    writeFileSync(join(app, 'lib', 'sessionflow.js'), `export * from '${src('index.ts')}';\n`);
    writeFileSync(
      join(app, 'lib', 'sessionflow-next.js'),
      `export * from '${src('integrations/next.ts')}';\n`,
    );
    writeFileSync(join(app, 'package.json'), '{ "private": true }\n');

    const build = run(['build'], app, log);
    const code = await new Promise<number | null>((resolve) => build.on('exit', resolve));
    if (code !== 0) throw new Error(`next build failed:\n${log.join('')}`);
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    server = run(['start', '-H', '127.0.0.1', '-p', String(port)], app, log);
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        if ((await fetch(`${base}/`)).ok) break;
      } catch {}
      if (Date.now() > deadline) throw new Error(`next start did not answer:\n${log.join('')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }, 90_000);

  afterAll(async () => {
    if (server && server.exitCode === null) {
      const exited = new Promise((r) => server!.on('exit', r));
      server.kill('SIGTERM');
      await exited;
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // Requests come as through a TLS proxy (the app trusts it: trustProxy: true).
  const origin = () => base.replace('http:', 'https:');
  const proxy = { 'x-forwarded-proto': 'https' };
  const post = (jar: Jar, path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${base}${path}`, {
      method: 'POST',
      headers: {
        ...proxy,
        'content-type': 'application/json',
        origin: origin(),
        cookie: jar.header(),
        ...headers,
      },
      body: JSON.stringify(body),
    });
  const get = (jar: Jar, path: string) =>
    fetch(`${base}${path}`, { headers: { ...proxy, cookie: jar.header() } });

  async function loggedIn(user: string): Promise<{ jar: Jar; csrf: string }> {
    const jar = new Jar();
    const form = await get(jar, '/api/login');
    jar.take(form);
    const { csrf } = (await form.json()) as { csrf: string };
    const login = await post(jar, '/api/login', { user }, { 'x-csrf-token': csrf });
    expect(login.status).toBe(200);
    jar.take(login);
    // Logging in renews the CSRF token with the session ID: the app hands the new one out.
    const me = (await (await get(jar, '/api/me')).json()) as { csrf: string };
    return { jar, csrf: me.csrf };
  }

  it('login sets a Secure session cookie, the session reads back, the flash shows once', async () => {
    const jar = new Jar();
    const form = await get(jar, '/api/login');
    const [setCookie] = form.headers.getSetCookie();
    expect(setCookie).toMatch(/^__Host-id(-pre)?=[^;]+; .*HttpOnly; Secure/);
    expect(form.headers.get('cache-control')).toBe('no-store');
    jar.take(form);
    const { csrf } = (await form.json()) as { csrf: string };
    const login = await post(jar, '/api/login', { user: 'ada' }, { 'x-csrf-token': csrf });
    expect(login.status).toBe(200);
    const before = jar.header();
    jar.take(login);
    expect(jar.header()).not.toBe(before); // the ID changed at login
    const me = (await (await get(jar, '/api/me')).json()) as { user: string; flash: string[] };
    expect(me.user).toBe('ada');
    expect(me.flash).toEqual(['Welcome, ada']);
    const again = (await (await get(jar, '/api/me')).json()) as { flash: string[] };
    expect(again.flash).toEqual([]);
  });

  it('CSRF: a route handler refuses an unsafe request without the token or from another origin, and accepts it with both', async () => {
    const { jar, csrf } = await loggedIn('bob');
    const noToken = await post(jar, '/api/cart', { key: 'a', value: 1 });
    expect(noToken.status).toBe(403);
    expect(await noToken.text()).toMatch(/The form has expired/);
    const crossSite = await post(
      jar,
      '/api/cart',
      { key: 'a', value: 1 },
      { 'x-csrf-token': csrf, origin: 'https://evil.example' },
    );
    expect(crossSite.status).toBe(403);
    const ok = await post(jar, '/api/cart', { key: 'a', value: 1 }, { 'x-csrf-token': csrf });
    expect(ok.status).toBe(200);
    const me = (await (await get(jar, '/api/me')).json()) as { a: number };
    expect(me.a).toBe(1);
  });

  it('logout: the old cookie is dead', async () => {
    const { jar, csrf } = await loggedIn('carol');
    const old = jar.header();
    const out = await post(jar, '/api/logout', {}, { 'x-csrf-token': csrf });
    expect(out.status).toBe(200);
    expect(out.headers.get('clear-site-data')).toBeTruthy();
    const replay = (await (await fetch(`${base}/api/me`, { headers: { ...proxy, cookie: old } })).json()) as {
      user: string | null;
    };
    expect(replay.user).toBeNull();
  });

  it('a store outage answers 503', async () => {
    const { jar } = await loggedIn('dave');
    const response = await get(jar, '/api/outage');
    expect(response.status).toBe(503);
    expect(response.headers.getSetCookie()).toEqual([]);
  });

  it('concurrent writes to different keys both survive', async () => {
    const { jar, csrf } = await loggedIn('erin');
    const [a, b] = await Promise.all([
      post(jar, '/api/cart', { key: 'a', value: 'A', delay: 150 }, { 'x-csrf-token': csrf }),
      post(jar, '/api/cart', { key: 'b', value: 'B' }, { 'x-csrf-token': csrf }),
    ]);
    expect([a.status, b.status]).toEqual([200, 200]);
    const me = (await (await get(jar, '/api/me')).json()) as { a: string; b: string };
    expect(me).toMatchObject({ a: 'A', b: 'B' });
  });

  it('a Server Action reads and writes the session through cookies()/headers(); Next refuses a cross-origin one', async () => {
    const manifest = JSON.parse(
      readFileSync(join(dir, 'app', '.next', 'server', 'server-reference-manifest.json'), 'utf8'),
    ) as { node: Record<string, unknown> };
    const ids = Object.keys(manifest.node);
    expect(ids.length).toBeGreaterThan(0);
    const { jar } = await loggedIn('frank');
    const call = (item: string, from = origin()) =>
      fetch(`${base}/cart`, {
        method: 'POST',
        headers: {
          ...proxy,
          'next-action': ids[0]!,
          'content-type': 'text/plain;charset=UTF-8',
          accept: 'text/x-component',
          origin: from,
          cookie: jar.header(),
        },
        body: JSON.stringify([item]),
      });
    const response = await call('apple');
    expect(response.status).toBe(200);
    expect(await response.text()).toContain('apple');
    jar.take(response);
    const refused = await call('pear', 'https://evil.example');
    expect(refused.status).toBeGreaterThanOrEqual(400);
    const me = (await (await get(jar, '/api/me')).json()) as { cart: string[]; user: string };
    expect(me).toMatchObject({ user: 'frank', cart: ['apple'] });
  });

  it('a Server Component reads the session; committing a new session there fails with the clear error', async () => {
    const { jar } = await loggedIn('gina');
    const page = await (await get(jar, '/cart')).text();
    expect(page).toContain('<p id="cart">[]</p>');
    // A new visitor's session needs its cookie set, which Next forbids while rendering.
    const fresh = await (await get(new Jar(), '/cart?write=1')).text();
    expect(fresh).toContain('not Server Components');
  });
});

// ---- the documented objects: a Request, and stores shaped like cookies()/headers() ------------

const secret = 'next-objects-test-secret-0123456789abcdef0123';

/** A request's `cookies()` (Next's RequestCookies + ResponseCookies) and `headers()`, by hand. */
function nextStores(headers: Record<string, string>, opts: { readonly?: boolean } = {}) {
  const jar = new Map<string, string>();
  for (const part of (headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) jar.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  const set: { name: string; value: string; options: NextCookieOptions | undefined }[] = [];
  const cookies = {
    getAll: () => [...jar].map(([name, value]) => ({ name, value })),
    set(name: string, value: string, options?: NextCookieOptions) {
      if (opts.readonly) throw new Error('Cookies can only be modified in a Server Action or Route Handler.');
      set.push({ name, value, options });
      jar.set(name, value);
    },
  };
  const h = new Headers(headers);
  const stores: NextRequestStores = { cookies: async () => cookies, headers: async () => h };
  return { stores, set, cookieHeader: () => [...jar].map(([n, v]) => `${n}=${v}`).join('; ') };
}

describe('Next.js helpers against the documented objects', () => {
  it('a Server Action commit sets the cookie through cookies().set with its attributes', async () => {
    const req = nextStores({ host: 'app.example', 'x-forwarded-proto': 'https' });
    const trusting = new SessionManager<{ cart: string[] }>({
      secret,
      store: new MemoryStore(),
      trustProxy: true,
    });
    const addTrusted = withActionSession(
      trusting,
      (session, item: string) => {
        session.set('cart', [...session.get('cart', []), item]);
        return session.get('cart', []);
      },
      req.stores,
    );
    expect(await addTrusted('a')).toEqual(['a']);
    expect(req.set).toHaveLength(1);
    expect(req.set[0]).toMatchObject({
      name: '__Host-id',
      options: { httpOnly: true, secure: true, path: '/', sameSite: 'lax' },
    });
    // The next request of the same browser (the action's re-render sees the cookie at once).
    expect(await addTrusted('b')).toEqual(['a', 'b']);
    const next = nextStores({
      host: 'app.example',
      'x-forwarded-proto': 'https',
      cookie: req.cookieHeader(),
    });
    expect((await getSession(trusting, next.stores)).get('cart', [])).toEqual(['a', 'b']);
  });

  it('a Server Component may read, but committing a write throws a clear error', async () => {
    const manager = new SessionManager({ secret, store: new MemoryStore(), cookie: { secure: 'auto' } });
    const ro = nextStores({ host: 'localhost:3000' }, { readonly: true });
    const session = await getSession(manager, ro.stores);
    session.set('k', 1);
    await expect(commitSession(manager, session, ro.stores)).rejects.toThrow(/Server Components/);
  });

  it("next dev on http://localhost under secure: 'auto': Next's own X-Forwarded-* do not disqualify it", async () => {
    const manager = new SessionManager({ secret, store: new MemoryStore(), cookie: { secure: 'auto' } });
    const handler = withSession(manager, (_req, session) => {
      session.set('k', 1);
      return new Response('ok');
    });
    const nextHeaders = {
      host: 'localhost:3000',
      'x-forwarded-for': '::1',
      'x-forwarded-host': 'localhost:3000',
      'x-forwarded-port': '3000',
      'x-forwarded-proto': 'http',
    };
    const response = await handler(new Request('http://localhost:3000/api', { headers: nextHeaders }), {});
    expect(response.headers.getSetCookie()[0]).toMatch(/^id=.*HttpOnly; SameSite=Lax$/);
    // A proxy that forwards a real client is not "this machine": no plain cookie (and, as the
    // request is not known to be HTTPS without trustProxy, no Secure one either).
    const proxied = await handler(
      new Request('http://localhost:3000/api', {
        headers: { ...nextHeaders, 'x-forwarded-for': '203.0.113.9' },
      }),
      {},
    );
    expect(proxied.headers.getSetCookie().filter((c) => c.startsWith('id='))).toEqual([]);
  });

  it('route handler: CSRF refusal is a 403 with the generic message; the form field counts too; outage → 503', async () => {
    const manager = new SessionManager({ secret, store: new MemoryStore(), trustProxy: true });
    let token = '';
    const handler = withSession(manager, (_req, session) => {
      token = session.csrf.token();
      return new Response('ok');
    });
    const first = await handler(
      new Request('https://app.example/form', { headers: { 'x-forwarded-proto': 'https' } }),
      {},
    );
    const cookie = first.headers.getSetCookie()[0]!.split(';')[0]!;
    const headers = {
      host: 'app.example',
      cookie,
      origin: 'https://app.example',
      'x-forwarded-proto': 'https',
    };
    const refused = await handler(new Request('https://app.example/form', { method: 'POST', headers }), {});
    expect(refused.status).toBe(403);
    const form = await handler(
      new Request('https://app.example/form', {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ _csrf: token }),
      }),
      {},
    );
    expect(form.status).toBe(200);
    const broken = new SessionManager({
      secret,
      store: new FileStore({ dir: '/dev/null/sessions' }),
      trustProxy: true,
    });
    const writer = withSession(manager, (_req, session) => {
      session.set('k', 1);
      return new Response('ok');
    });
    const written = await writer(new Request('https://app.example/form', { headers }), {});
    const stored = written.headers.getSetCookie()[0]!.split(';')[0]!;
    const down = await withSession(broken, () => new Response('ok'))(
      new Request('https://app.example/form', { headers: { ...headers, cookie: stored } }),
      {},
    );
    expect(down.status).toBe(503);
  });
});
