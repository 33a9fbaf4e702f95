/**
 * The demo application's HTTP contract, tested from outside: a real server on 127.0.0.1, fetch
 * with a cookie jar, redirects not followed. Security-specific cases live in
 * demo-security.test.ts, timeouts and audit in demo-timeouts-audit.test.ts.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileStore } from '../../src/index.js';
import { isClearing, parseSetCookie } from '../helpers/cookie-jar.js';
import {
  ALICE,
  BOB,
  credentials,
  csrfFrom,
  type DemoServer,
  dashboardToken,
  fakeClock,
  login,
  removeTempDirs,
  sessionFiles,
  startDemo,
  tempDir,
} from '../helpers/demo.js';
import { InstrumentedStore } from '../helpers/stores.js';

const LOGOUT_FORM =
  /<form method="post" action="\/logout"[^>]*>\s*<input type="hidden" name="_csrf" value="([^"]+)">/;

let demo: DemoServer;
beforeAll(async () => {
  demo = await startDemo();
});
afterAll(async () => {
  await demo?.close();
  await removeTempDirs();
});

describe('GET / (landing page)', () => {
  it('SM-59/SM-66: answers 200 and creates no session: no Set-Cookie, no record', async () => {
    const c = demo.client();
    const before = await sessionFiles(demo.dir!);
    for (let i = 0; i < 3; i++) {
      const res = await c.get('/');
      expect(res.status).toBe(200);
      expect(res.body).toContain('sessionflow demo');
      expect(res.setCookies).toEqual([]);
    }
    expect(await sessionFiles(demo.dir!)).toEqual(before);
  });
});

describe('GET /login', () => {
  it('shows a POST /login form with username, password and the hidden _csrf field inside it', async () => {
    const res = await demo.client().get('/login');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    const form = /<form method="post" action="\/login"[^>]*>([\s\S]*?)<\/form>/.exec(res.body);
    expect(form).not.toBeNull();
    const inner = form![1]!;
    expect(inner).toMatch(/<input type="hidden" name="_csrf" value="[A-Za-z0-9_-]{43}">/);
    expect(inner).toMatch(/<input type="text"[^>]*name="username"/);
    expect(inner).toMatch(/<input type="password"[^>]*name="password"/);
    expect(inner).toMatch(/<button type="submit">/);
  });

  it('redirects a signed-in user to the dashboard', async () => {
    const c = demo.client();
    await login(c);
    const res = await c.get('/login');
    expect(res.status).toBe(303);
    expect(res.location).toBe('/dashboard');
  });
});

describe('POST /login', () => {
  it('SM-48: no token, a wrong token or another session’s token → 403 page, nobody signed in', async () => {
    const c = demo.client();
    const page = await c.get('/login');
    const other = demo.client();
    const otherToken = csrfFrom((await other.get('/login')).body);
    const attempts: Record<string, string>[] = [
      { username: ALICE.username, password: ALICE.password },
      { _csrf: 'x'.repeat(43), username: ALICE.username, password: ALICE.password },
      { _csrf: otherToken, username: ALICE.username, password: ALICE.password },
    ];
    const cookieBefore = c.jar.get('id');
    for (const form of attempts) {
      const res = await c.post('/login', form);
      expect(res.status).toBe(403);
      expect(res.body).toContain('Forbidden');
      expect(res.setCookies).toEqual([]);
    }
    expect(c.jar.get('id')).toBe(cookieBefore);
    expect((await c.get('/dashboard')).status).toBe(303);
    // The page's own token still works afterwards: the refusals changed nothing.
    const ok = await c.post('/login', {
      _csrf: csrfFrom(page.body),
      username: ALICE.username,
      password: ALICE.password,
    });
    expect(ok.status).toBe(303);
    expect(ok.location).toBe('/dashboard');
  });

  it('a request without any session cookie is refused with 403 and creates no record', async () => {
    const before = await sessionFiles(demo.dir!);
    const res = await demo.client().post('/login', { username: ALICE.username, password: ALICE.password });
    expect(res.status).toBe(403);
    expect(res.setCookies).toEqual([]);
    expect(await sessionFiles(demo.dir!)).toEqual(before);
  });

  it('wrong credentials → 303 to /login, the error is shown once, authn_login_fail is audited', async () => {
    const c = demo.client();
    const token = csrfFrom((await c.get('/login')).body);
    const eventsBefore = demo.events.length;
    const res = await c.post('/login', {
      _csrf: token,
      username: ALICE.username,
      password: 'not-her-password',
    });
    expect(res.status).toBe(303);
    expect(res.location).toBe('/login');
    const again = await c.get('/login');
    expect(again.body).toContain('Wrong username or password.');
    expect((await c.get('/login')).body).not.toContain('Wrong username or password.');
    expect((await c.get('/dashboard')).status).toBe(303);

    await c.post('/login', { _csrf: token, username: 'mallory', password: 'whatever-123' });
    const fails = demo.events.slice(eventsBefore).filter((e) => e.type === 'authn_login_fail');
    expect(fails).toHaveLength(2);
    expect(fails[0]).toMatchObject({ userId: ALICE.id, ip: '127.0.0.1', userAgent: c.userAgent });
    expect(fails[1]!.userId).toBeUndefined();
    expect(JSON.stringify(fails)).not.toContain('not-her-password');
    expect(JSON.stringify(fails)).not.toContain('whatever-123');
  });

  it('SM-19/SM-57: good credentials → new cookie, 303 to /dashboard, which shows “Welcome back!” once', async () => {
    const c = demo.client();
    const page = await c.get('/login');
    const before = c.jar.get('id')!;
    const res = await c.post('/login', {
      _csrf: csrfFrom(page.body),
      username: ALICE.username,
      password: ALICE.password,
    });
    expect(res.status).toBe(303);
    expect(res.location).toBe('/dashboard');
    // One session cookie, and the visitor's pre-session cookie expired (its CSRF token rotates).
    expect(res.setCookies.map((h) => parseSetCookie(h).name).sort()).toEqual(['id', 'id-pre']);
    expect(c.jar.get('id-pre')).toBeUndefined();
    const after = c.jar.get('id')!;
    expect(after).not.toBe(before);

    const dash = await c.get('/dashboard');
    expect(dash.status).toBe(200);
    expect(dash.body).toContain('<strong class="username">alice</strong>');
    expect(dash.body).toContain('Welcome back!');
    const reload = await c.get('/dashboard');
    expect(reload.status).toBe(200);
    expect(reload.body).not.toContain('Welcome back!');
  });

  it('bob signs in too, and sees his own name', async () => {
    const c = demo.client();
    expect((await login(c, BOB)).location).toBe('/dashboard');
    const dash = await c.get('/dashboard');
    expect(dash.body).toContain('<strong class="username">bob</strong>');
    expect(dash.body).not.toContain('>alice<');
  });
});

describe('GET /dashboard', () => {
  it('without a session, or with only a pre-login session, redirects 303 to /login', async () => {
    const c = demo.client();
    const anon = await c.get('/dashboard');
    expect(anon.status).toBe(303);
    expect(anon.location).toBe('/login');
    await c.get('/login');
    const pre = await c.get('/dashboard');
    expect(pre.status).toBe(303);
    expect(pre.location).toBe('/login');
  });
});

describe('POST /logout', () => {
  it('SM-32/SM-07: destroys the session, expires the cookie, sends Clear-Site-Data, 303 to /login', async () => {
    const c = demo.client();
    await login(c);
    const stolen = c.jar.clone();
    const token = await dashboardToken(c);
    const filesBefore = (await sessionFiles(demo.dir!)).length;
    const res = await c.post('/logout', { _csrf: token });
    expect(res.status).toBe(303);
    expect(res.location).toBe('/login');
    expect(res.headers.get('clear-site-data')).toContain('"cache"');
    expect(res.headers.get('cache-control')).toBe('no-store');
    const cleared = res.setCookies.map(parseSetCookie);
    expect(cleared.map((k) => k.name)).toEqual(['id']);
    expect(isClearing(cleared[0]!)).toBe(true);
    expect(cleared[0]!.value).toBe('');
    expect(cleared[0]!.attributes.get('path')).toBe('/');
    expect(c.jar.get('id')).toBeUndefined();
    expect((await sessionFiles(demo.dir!)).length).toBe(filesBefore - 1);

    // The old cookie is dead, for this browser and for anyone who copied it.
    expect((await c.get('/dashboard')).status).toBe(303);
    const replay = demo.client(stolen);
    const r = await replay.get('/dashboard');
    expect(r.status).toBe(303);
    expect(r.location).toBe('/login');
  });

  it('SM-34: without a valid token → 403 and the user stays signed in; GET /logout → 405', async () => {
    const c = demo.client();
    await login(c);
    await dashboardToken(c);
    expect((await c.post('/logout', {})).status).toBe(403);
    expect((await c.post('/logout', { _csrf: 'forged' })).status).toBe(403);
    const get = await c.get('/logout');
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('POST');
    expect((await c.get('/dashboard')).status).toBe(200);
  });
});

describe('POST /transfer', () => {
  it('changes state with a valid token (form field or header) and answers JSON', async () => {
    const c = demo.client();
    await login(c);
    const token = await dashboardToken(c);
    const res = await c.post('/transfer', { _csrf: token, to: 'bob', amount: '25', ref: 'rent' });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(JSON.parse(res.body)).toEqual({ ok: true, ref: 'rent', to: 'bob', amount: 25 });
    const json = await c.postJson(
      '/transfer',
      { to: 'carol', amount: 7, ref: 'gift' },
      { 'x-csrf-token': token },
    );
    expect(json.status).toBe(200);
    const dash = await c.get('/dashboard');
    expect(dash.body).toContain('<li data-ref="rent">25 to bob</li>');
    expect(dash.body).toContain('<li data-ref="gift">7 to carol</li>');
  });

  it('answers 401 to a pre-login session and 400 to a malformed transfer', async () => {
    const c = demo.client();
    const token = csrfFrom((await c.get('/login')).body);
    expect((await c.post('/transfer', { _csrf: token, to: 'bob', amount: '1' })).status).toBe(401);
    await login(c);
    const fresh = await dashboardToken(c);
    expect((await c.post('/transfer', { _csrf: fresh, to: 'bob', amount: '-5' })).status).toBe(400);
    expect((await c.post('/transfer', { _csrf: fresh, amount: '5' })).status).toBe(400);
  });
});

describe('flash messages', () => {
  it('SM-65: /flash-set → 303 → /flash-read shows the message once, HTML-escaped', async () => {
    const c = demo.client();
    const set = await c.get(`/flash-set?text=${encodeURIComponent('<script>alert(1)</script> & "hi"')}`);
    expect(set.status).toBe(303);
    expect(set.location).toBe('/flash-read');
    const read = await c.get('/flash-read');
    expect(read.status).toBe(200);
    expect(read.body).toContain('&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;hi&quot;');
    expect(read.body).not.toContain('<script>');
    const again = await c.get('/flash-read');
    expect(again.body).not.toContain('alert(1)');
    expect(again.body).toContain('No messages.');
  });

  it('SM-65: a message survives a page that does not show flashes, and is gone after it was shown', async () => {
    const c = demo.client();
    await c.get('/flash-set?text=kept-for-the-next-page');
    expect((await c.get('/')).body).not.toContain('kept-for-the-next-page');
    expect((await c.get('/flash-read')).body).toContain('kept-for-the-next-page');
    expect((await c.get('/flash-read')).body).not.toContain('kept-for-the-next-page');
  });

  it('SM-65/SM-22: flash messages (whitelisted) survive the login regeneration', async () => {
    const c = demo.client();
    const token = csrfFrom((await c.get('/login')).body);
    await c.get('/flash-set?text=set-before-login'); // not followed: the message is still unread
    const res = await c.post('/login', { _csrf: token, ...credentials(ALICE) });
    expect(res.status).toBe(303);
    const dash = await c.get('/dashboard');
    expect(dash.body).toContain('set-before-login');
    expect(dash.body).toContain('Welcome back!');
  });
});

describe('error pages', () => {
  it('unknown pages → 404 HTML; unsafe requests without a token → 403 HTML page', async () => {
    const c = demo.client();
    const missing = await c.get('/no-such-page');
    expect(missing.status).toBe(404);
    expect(missing.body).toContain('Not found');
    const forbidden = await c.post('/transfer', { to: 'x', amount: '1' });
    expect(forbidden.status).toBe(403);
    expect(forbidden.headers.get('content-type')).toMatch(/^text\/html/);
    expect(forbidden.body).toContain('did not come from this site');
  });
});

describe('cookie and cache headers', () => {
  it('SM-01: HttpOnly, explicit SameSite=Lax, Path=/, no Domain; no Expires/Max-Age (SM-04)', async () => {
    const c = demo.client();
    const res = await c.get('/login');
    expect(res.setCookies).toHaveLength(1);
    const k = parseSetCookie(res.setCookies[0]!);
    expect(k.attributes.has('httponly')).toBe(true);
    expect(k.attributes.get('samesite')).toBe('Lax');
    expect(k.attributes.get('path')).toBe('/');
    expect(k.attributes.has('domain')).toBe(false);
    expect(k.attributes.has('expires')).toBe(false);
    expect(k.attributes.has('max-age')).toBe(false);
    // The login response's new cookie carries the same attributes.
    const page = res.body;
    const loginRes = await c.post('/login', { _csrf: csrfFrom(page), ...credentials(ALICE) });
    const k2 = parseSetCookie(loginRes.setCookies[0]!);
    expect([...k2.attributes.keys()].sort()).toEqual(['httponly', 'path', 'samesite']);
  });

  it('SM-01/SM-05: with cookie.secure, the cookie is __Host-, Secure, and only sent over HTTPS', async () => {
    const secure = await startDemo({ secureCookie: true, trustProxy: true });
    try {
      const c = secure.client();
      const viaTls = await c.get('/login', { 'x-forwarded-proto': 'https' });
      // The login page stores nothing: its CSRF token is bound to a pre-session cookie.
      expect(viaTls.setCookies).toHaveLength(1);
      const k = parseSetCookie(viaTls.setCookies[0]!);
      expect(k.name).toBe('__Host-id-pre');
      expect(k.attributes.has('secure')).toBe(true);
      expect(k.attributes.has('httponly')).toBe(true);
      expect(k.attributes.get('samesite')).toBe('Lax');
      expect(k.attributes.get('path')).toBe('/');
      expect(k.attributes.has('domain')).toBe(false);

      // Plain HTTP: no session cookie is issued, and a Secure cookie sent back is not honoured.
      const plain = secure.client();
      expect((await plain.get('/login')).setCookies).toEqual([]);
      expect(secure.warnings.join('\n')).toMatch(/plain-HTTP/);
      await c.post(
        '/login',
        { _csrf: csrfFrom(viaTls.body), ...credentials(ALICE) },
        { 'x-forwarded-proto': 'https' },
      );
      expect((await c.get('/dashboard', { 'x-forwarded-proto': 'https' })).status).toBe(200);
      expect((await c.get('/dashboard')).status).toBe(303);
    } finally {
      await secure.close();
    }
  });

  it('SM-03: the cookie name is generic, not a framework fingerprint', async () => {
    const res = await demo.client().get('/login');
    const { name } = parseSetCookie(res.setCookies[0]!);
    expect([
      'PHPSESSID',
      'JSESSIONID',
      'connect.sid',
      'koa:sess',
      'session',
      'sessionid',
      'ASP.NET_SessionId',
    ]).not.toContain(name);
    expect(name.toLowerCase()).not.toMatch(/sessionflow|express|phalcon|connect/);
  });

  it('SM-07: Cache-Control: no-store on the login page, login, dashboard and logout', async () => {
    const c = demo.client();
    const first = await c.get('/login');
    expect(first.headers.get('cache-control')).toBe('no-store');
    const second = await c.get('/login');
    expect(second.setCookies).toEqual([]);
    expect(second.headers.get('cache-control')).toBe('no-store');
    const post = await c.post('/login', { _csrf: csrfFrom(second.body), ...credentials(ALICE) });
    expect(post.headers.get('cache-control')).toBe('no-store');
    const dash = await c.get('/dashboard');
    expect(dash.headers.get('cache-control')).toBe('no-store');
    const again = await c.get('/dashboard');
    expect(again.setCookies).toEqual([]);
    expect(again.headers.get('cache-control')).toBe('no-store');
    const out = await c.post('/logout', { _csrf: csrfFrom(dash.body) });
    expect(out.headers.get('cache-control')).toBe('no-store');
    expect(out.headers.get('clear-site-data')).toBeTruthy();
  });
});

describe('persistence and lazy writes', () => {
  it('SM-57: with 200 ms of store latency, login → 303 → an immediate dashboard request works', async () => {
    const dir = await tempDir();
    const store = new InstrumentedStore(new FileStore({ dir: join(dir, 's'), fsync: false }));
    const slow = await startDemo({ store });
    try {
      const c = slow.client();
      const page = await c.get('/login');
      store.latencyMs = 200;
      const res = await c.post('/login', { _csrf: csrfFrom(page.body), ...credentials(ALICE) });
      expect(res.status).toBe(303);
      const dash = await c.get(res.location!);
      expect(dash.status).toBe(200);
      expect(dash.body).toContain('Welcome back!');
    } finally {
      await slow.close();
    }
  });

  it('SM-59: read-only requests send no Set-Cookie and leave the session file untouched', async () => {
    const clock = fakeClock();
    const dir = await tempDir();
    const files = join(dir, 's');
    const store = new InstrumentedStore(new FileStore({ dir: files, fsync: false, now: clock.now }));
    const app = await startDemo({ store, now: clock.now });
    try {
      const c = app.client();
      await login(c);
      await c.get('/dashboard'); // consumes the welcome flash and creates the dashboard's CSRF token
      const [file] = await sessionFiles(files);
      const path = join(files, file!);
      const before = await stat(path);
      const content = await readFile(path, 'utf8');
      store.resetCounts();
      for (let i = 0; i < 10; i++) {
        clock.advance(100);
        const res = await c.get(i % 2 ? '/dashboard' : '/');
        expect(res.status).toBe(200);
        expect(res.setCookies).toEqual([]);
      }
      expect(store.calls).toMatchObject({ create: 0, commit: 0, touch: 0, destroy: 0 });
      const after = await stat(path);
      expect(after.ino).toBe(before.ino);
      expect(await readFile(path, 'utf8')).toBe(content);

      // Anonymous visitors of the landing page cost no record and get no cookie.
      for (let i = 0; i < 5; i++) expect((await app.client().get('/')).setCookies).toEqual([]);
      expect(await sessionFiles(files)).toEqual([file]);
    } finally {
      await app.close();
    }
  });
});

describe('SM-66: logout is on every authenticated page; sessions start only on user action', () => {
  it('every page a signed-in user sees carries a working logout form (POST + token)', async () => {
    const c = demo.client();
    await login(c);
    let token = '';
    for (const path of ['/dashboard', '/', '/flash-read', '/no-such-page', '/logout']) {
      const page = await c.get(path);
      const form = LOGOUT_FORM.exec(page.body);
      expect(form, `logout form on ${path}`).not.toBeNull();
      token = form![1]!;
    }
    const out = await c.post('/logout', { _csrf: token });
    expect(out.status).toBe(303);
    expect((await c.get('/dashboard')).status).toBe(303);
    expect(LOGOUT_FORM.test((await c.get('/')).body)).toBe(false);
  });

  it('GET /login stores no session: only a pre-session cookie for its CSRF token', async () => {
    const c = demo.client();
    await c.get('/login');
    expect(c.jar.get('id')).toBeUndefined();
    expect(c.jar.get('id-pre')).toBeDefined();
    expect((await c.get('/dashboard')).status).toBe(303);
    expect(LOGOUT_FORM.test((await c.get('/')).body)).toBe(false);
  });
});
