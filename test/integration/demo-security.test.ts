/**
 * Checklist items (docs/security-checklist.md) tested over HTTP against the demo.
 * Each test is named by its SM-xx ID.
 */
import { randomBytes } from 'node:crypto';
import { readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { KeyRing } from '../../src/crypto/keyring.js';
import { FileStore, MemoryStore } from '../../src/index.js';
import { type Client, CookieJar, parseSetCookie } from '../helpers/cookie-jar.js';
import { CSRF_CONTENT_TYPES, contentTypeHeader } from '../helpers/csrf-matrix.js';
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
  sidOf,
  startDemo,
  TEST_SECRET,
  tempDir,
  tokenOf,
} from '../helpers/demo.js';
import { quickRequest, rawRequest, rawSetCookies } from '../helpers/raw-http.js';
import { InstrumentedStore } from '../helpers/stores.js';

const keys = new KeyRing([TEST_SECRET]);
const OTHER_SECRET = 'a8Qm3ZrT7wXc1VbN5kLp9HsD2fGj6YtR4uEi0oWq8AzS';

let demo: DemoServer;
let store: InstrumentedStore;
let files: string;

beforeAll(async () => {
  files = join(await tempDir(), 'sessions');
  store = new InstrumentedStore(new FileStore({ dir: files, fsync: false }));
  demo = await startDemo({ store });
});
afterAll(async () => {
  await demo?.close();
  await removeTempDirs();
});

const fileOf = (cookieValue: string) => join(files, `${sidOf(cookieValue)}.json`);
const exists = (path: string) =>
  stat(path).then(
    () => true,
    () => false,
  );

/** A signed-in client, its cookie value and a CSRF token from its dashboard. */
async function signedIn(
  app: DemoServer = demo,
  user: { username: string; password: string } = ALICE,
): Promise<{ c: Client; cookie: string; token: string }> {
  const c = app.client();
  const res = await login(c, user);
  if (res.status !== 303 || res.location !== '/dashboard') throw new Error(`login failed: ${res.status}`);
  const token = await dashboardToken(c);
  return { c, cookie: c.jar.get('id')!, token };
}

/** A client that sends exactly this Cookie header. */
function withCookie(cookie: string): Client {
  const jar = new CookieJar();
  const c = demo.client(jar);
  const request = c.request.bind(c);
  c.request = (path, options = {}) => request(path, { ...options, headers: { cookie, ...options.headers } });
  return c;
}

describe('B. IDs: strictness, input handling, signing', () => {
  it('SM-08: the session ID is accepted only from the cookie and never appears in a body or Location', async () => {
    const { c, cookie, token } = await signedIn();
    const raw = tokenOf(cookie);
    const anon = demo.client();
    const enc = encodeURIComponent;
    for (const path of [
      `/dashboard?id=${enc(cookie)}`,
      `/dashboard?PHPSESSID=${enc(cookie)}`,
      `/dashboard?session=${raw}`,
      `/dashboard?sid=${raw}`,
    ]) {
      const res = await anon.get(path);
      expect(res.status, path).toBe(303);
      expect(res.location).toBe('/login');
    }
    const headerSets: Record<string, string>[] = [
      { 'x-session-id': cookie },
      { authorization: `Bearer ${cookie}` },
      { 'x-csrf-token': token, 'x-session-id': raw },
    ];
    for (const headers of headerSets) {
      expect((await anon.get('/dashboard', headers)).status).toBe(303);
    }
    const body = await anon.post('/transfer', {
      id: cookie,
      sid: raw,
      _csrf: token,
      to: 'mallory',
      amount: '1',
    });
    expect(body.status).toBe(403);

    // Everything alice's browser and the anonymous client received: no token, no MAC, no cookie.
    await c.get('/');
    await c.get('/flash-read');
    const mac = cookie.slice(cookie.lastIndexOf('.') + 1);
    for (const res of [...c.history, ...anon.history]) {
      for (const secret of [cookie, raw, mac, storageKey(raw)]) {
        expect(res.body).not.toContain(secret);
        expect(res.location ?? '').not.toContain(secret);
      }
    }
  });

  it('SM-11: a well-formed but unknown ID is never adopted: a fresh ID, no record under it, an event', async () => {
    for (const [label, planted, event] of [
      ['signed, unknown', keys.sign('id', `${newToken()}.${newToken()}`), 'session_unknown_id'],
      ['unsigned', newToken(), 'session_invalid_cookie'],
    ] as const) {
      const c = demo.client();
      c.jar.set('id', planted);
      const before = demo.events.length;
      // Lock files come and go with other sessions' writes (kept a moment after each): not records.
      const records = async () => (await readdir(files)).filter((name) => !name.endsWith('.lock'));
      const filesBefore = await records();
      const res = await c.get('/login');
      expect(res.status, label).toBe(200);
      // The login page stores nothing: only the pre-session cookie its CSRF token is bound to.
      expect(
        res.setCookies.map((h) => parseSetCookie(h).name),
        label,
      ).toEqual(['id-pre']);
      expect(await exists(fileOf(planted))).toBe(false);
      expect(await exists(join(files, `${storageKey(planted)}.json`))).toBe(false);
      expect(await records()).toEqual(filesBefore);
      // A write then gets a fresh record, never the planted ID.
      await c.post('/login', { _csrf: csrfFrom(res.body), username: 'nobody', password: 'wrong-password' });
      const issued = c.jar.get('id')!;
      expect(sidOf(issued)).not.toBe(sidOf(planted));
      expect(await exists(fileOf(issued))).toBe(true);
      expect(demo.events.slice(before).map((e) => e.type)).toContain(event);
    }
  });

  it('SM-12: 1,000 random cookies and 1,000 logouts without a session create no store record', async () => {
    const dir = join(await tempDir(), 's');
    const app = await startDemo({ store: new FileStore({ dir, fsync: false }) });
    try {
      const cookies = Array.from({ length: 1000 }, (_, i) =>
        i % 3 === 0
          ? keys.sign('id', newToken())
          : i % 3 === 1
            ? newToken()
            : `${randomBytes(32).toString('base64url')}.${randomBytes(32).toString('base64url')}`,
      );
      const run = async (n: number, one: (i: number) => Promise<number>) => {
        const statuses = new Set<number>();
        for (let i = 0; i < n; i += 50) {
          const batch = await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, j) => one(i + j)));
          for (const s of batch) statuses.add(s);
        }
        return statuses;
      };
      const dashboards = await run(1000, async (i) => {
        const res = await quickRequest(`${app.url}/dashboard`, { headers: { cookie: `id=${cookies[i]}` } });
        expect(res.setCookies).toEqual([]);
        return res.status;
      });
      expect([...dashboards]).toEqual([303]);
      const logouts = await run(1000, async (i) => {
        const res = await quickRequest(`${app.url}/logout`, {
          method: 'POST',
          headers: {
            'content-type': 'application/x-www-form-urlencoded',
            ...(i % 2 ? { cookie: `id=${cookies[i]}` } : {}),
          },
          body: `_csrf=${newToken()}`,
        });
        expect(res.setCookies).toEqual([]);
        return res.status;
      });
      expect([...logouts]).toEqual([403]);
      expect(await sessionFiles(dir)).toEqual([]);
    } finally {
      await app.close();
    }
  }, 60_000);

  it('SM-13: hostile cookie values → 200/303 with a fresh session, never 5xx, never a store lookup', async () => {
    const hostile = [
      'id=../../etc/passwd',
      'id=%2e%2e%2f%2e%2e%2fetc%2fpasswd',
      `id=${'A'.repeat(300)}`,
      "id=' OR '1'='1",
      'id=',
      'id',
      'id=..%2F; id=%00; id=x',
      'id=%E0%A4%A',
      `id=${keys.sign('id', '../../etc/passwd')}`,
      `id=${keys.sign('id', "' OR '1'='1")}`,
      `id=${keys.sign('id', 'x'.repeat(200))}`,
      `id=${keys.sign('id', '')}`,
    ];
    store.resetCounts();
    for (const cookie of hostile) {
      const c = withCookie(cookie);
      const page = await c.get('/login');
      expect(page.status, cookie).toBe(200);
      expect(page.setCookies, cookie).toHaveLength(1);
      const pre = parseSetCookie(page.setCookies[0]!);
      expect(pre.name).toBe('id-pre');
      expect(pre.value).toMatch(/^[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}$/);
      const dash = await c.get('/dashboard');
      expect(dash.status, cookie).toBe(303);
    }
    // Bytes fetch refuses to send: CR/LF inside the header, and raw UTF-8.
    const crlf = await rawRequest(demo.port, 'GET /login HTTP/1.1', ['Cookie: id=a b\r\nset x 0 0 1']);
    expect(crlf.status).toBeGreaterThanOrEqual(200);
    expect(crlf.status).toBeLessThan(500);
    const unicode = await rawRequest(demo.port, 'GET /login HTTP/1.1', ['Cookie: id=☃ünïcødé日本; other=ß']);
    expect(unicode.status).toBe(200);
    expect(rawSetCookies(unicode.head)).toHaveLength(1);
    const unicodeDash = await rawRequest(demo.port, 'GET /dashboard HTTP/1.1', ['Cookie: id=☃ünïcødé日本']);
    expect(unicodeDash.status).toBe(303);

    expect(store.calls.load).toBe(0);
    // Nothing but hashed-key session files (and their locks, kept a moment after a write) and the
    // store's own bookkeeping (marker, user index, expiry index, lock owners) ever appears in the
    // directory.
    for (const name of await readdir(files)) {
      expect(name).toMatch(/^(\.sessionflow-store|users|expiry|owners|[A-Za-z0-9_-]{43}\.json(\.lock)?)$/);
    }
  });

  it('SM-14: a tampered or foreign signature is no session, and costs no store lookup', async () => {
    const { cookie } = await signedIn();
    const token = tokenOf(cookie);
    const mac = cookie.slice(token.length + 1);
    const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'A' ? 'B' : 'A') + s.slice(i + 1);
    const variants = {
      'one MAC character flipped': `${token}.${flip(mac, 20)}`,
      'last MAC character flipped': `${token}.${flip(mac, mac.length - 1)}`,
      'byte appended': `${cookie}x`,
      'MAC truncated': cookie.slice(0, -1),
      'MAC stripped': token,
      'MAC stripped, dot kept': `${token}.`,
      'token altered': `${flip(token, 5)}.${mac}`,
      'MAC of another secret': new KeyRing([OTHER_SECRET]).sign('id', token),
      'MAC for another cookie name': keys.sign('csrf', token),
    };
    store.resetCounts();
    for (const [label, value] of Object.entries(variants)) {
      const c = withCookie(`id=${value}`);
      const dash = await c.get('/dashboard');
      expect(dash.status, label).toBe(303);
      const page = await c.get('/login');
      expect(page.status, label).toBe(200);
      expect(tokenOf(parseSetCookie(page.setCookies[0]!).value), label).not.toBe(token);
    }
    expect(store.calls.load).toBe(0);
    // The genuine cookie still works: tampering with a copy does not end the real session.
    expect((await withCookie(`id=${cookie}`).get('/dashboard')).status).toBe(200);
  });

  it('SM-51: duplicate cookie names resolve to the first; special names and bad encoding are harmless', async () => {
    const { cookie } = await signedIn();
    expect((await withCookie(`id=${cookie}; id=garbage`).get('/dashboard')).status).toBe(200);
    expect((await withCookie(`id=garbage; id=${cookie}`).get('/dashboard')).status).toBe(303);
    const hostile = `__proto__=x; constructor=y; hasOwnProperty=z; toString=1; id=%E0%A4%A`;
    for (const path of ['/', '/login', '/dashboard']) {
      const res = await withCookie(hostile).get(path);
      expect(res.status).toBeLessThan(500);
    }
    expect(({} as Record<string, unknown>).x).toBeUndefined();
    expect(Object.keys(Object.prototype)).toEqual([]);
    expect(({} as { hasOwnProperty: unknown }).hasOwnProperty).toBe(Object.prototype.hasOwnProperty);
  });
});

describe('C. Fixation and renewal', () => {
  it('SM-19: login issues a new ID and terminates the old one', async () => {
    const c = demo.client();
    // A failed attempt stores an anonymous session (its flash message): the pre-login ID.
    const first = await c.get('/login');
    await c.post('/login', {
      _csrf: csrfFrom(first.body),
      username: ALICE.username,
      password: 'wrong-password',
    });
    const page = await c.get('/login');
    const a = c.jar.get('id')!;
    expect(await exists(fileOf(a))).toBe(true);
    const res = await c.post('/login', { _csrf: csrfFrom(page.body), ...credentials(ALICE) });
    expect(res.status).toBe(303);
    const b = c.jar.get('id')!;
    expect(tokenOf(b)).not.toBe(tokenOf(a));
    expect((await withCookie(`id=${a}`).get('/dashboard')).status).toBe(303);
    expect((await withCookie(`id=${b}`).get('/dashboard')).status).toBe(200);
    // One record through the login: its secret changed, so the old cookie opens nothing.
    expect(sidOf(b)).toBe(sidOf(a));
    expect((await withCookie(`id=${a}`).get('/dashboard')).status).toBe(303);
  });

  it('SM-20: an attacker-planted pre-login ID never becomes authenticated (two jars)', async () => {
    const attacker = demo.client();
    // A failed attempt gives the attacker a stored anonymous session to plant.
    const form = await attacker.get('/login');
    await attacker.post('/login', {
      _csrf: csrfFrom(form.body),
      username: 'mallory',
      password: 'wrong-password',
    });
    const attackerPage = await attacker.get('/login');
    const planted = attacker.jar.get('id')!;

    const victim = demo.client(new CookieJar());
    victim.jar.set('id', planted);
    const page = await victim.get('/login');
    expect(page.setCookies).toEqual([]); // the victim is really on the planted session
    const res = await victim.post('/login', { _csrf: csrfFrom(page.body), ...credentials(ALICE) });
    expect(res.status).toBe(303);
    expect(victim.jar.get('id')).not.toBe(planted);
    expect((await victim.get('/dashboard')).status).toBe(200);

    const replay = await attacker.get('/dashboard');
    expect(replay.status).toBe(303);
    expect(replay.location).toBe('/login');
    const forged = await attacker.post('/transfer', {
      _csrf: csrfFrom(attackerPage.body),
      to: 'mallory',
      amount: '999',
    });
    expect(forged.status).toBe(403);
  });

  it('SM-21: /elevate and /reauth each issue a new ID and kill the previous one', async () => {
    const { c, token } = await signedIn();
    let tokenNow = token;
    for (const [path, form] of [
      ['/elevate', {}],
      ['/reauth', { password: ALICE.password }],
    ] as const) {
      const before = c.jar.get('id')!;
      const res = await c.post(path, { _csrf: tokenNow, ...form });
      expect(res.status, path).toBe(200);
      expect(res.setCookies, path).toHaveLength(1);
      const after = c.jar.get('id')!;
      expect(tokenOf(after)).not.toBe(tokenOf(before));
      expect((await withCookie(`id=${before}`).get('/dashboard')).status, path).toBe(303);
      expect(sidOf(after)).toBe(sidOf(before));
      tokenNow = await dashboardToken(c);
      // The CSRF token rotates with the ID.
      expect(tokenNow).not.toBe(token);
    }
    // A wrong password re-authenticates nothing and keeps the ID.
    const current = c.jar.get('id');
    const wrong = await c.post('/reauth', { _csrf: tokenNow, password: 'nope-nope' });
    expect(wrong.status).toBe(401);
    expect(wrong.setCookies).toEqual([]);
    expect(c.jar.get('id')).toBe(current);
  });

  it('SM-22: the pre-login CSRF token is rejected after login, and pre-login data is dropped', async () => {
    const c = demo.client();
    const preToken = csrfFrom((await c.get('/login')).body);
    expect(JSON.parse((await c.get('/slow')).body)).toMatchObject({ slowRequests: 1 });
    expect(JSON.parse((await c.get('/slow')).body)).toMatchObject({ slowRequests: 2 });
    const res = await c.post('/login', { _csrf: preToken, ...credentials(ALICE) });
    expect(res.status).toBe(303);
    const forged = await c.post('/transfer', { _csrf: preToken, to: 'bob', amount: '1' });
    expect(forged.status).toBe(403);
    const fresh = await dashboardToken(c);
    expect(fresh).not.toBe(preToken);
    expect((await c.post('/transfer', { _csrf: fresh, to: 'bob', amount: '1' })).status).toBe(200);
    // `slowRequests` was set before login and is not whitelisted: it starts again from 1.
    expect(JSON.parse((await c.get('/slow')).body)).toMatchObject({ slowRequests: 1 });
  });
});

describe('E. Logout and termination', () => {
  it('SM-34: a cross-site POST /logout without a token is refused; GET/HEAD /logout change nothing', async () => {
    const { c } = await signedIn();
    const res = await c.post(
      '/logout',
      {},
      { origin: 'https://evil.example', 'sec-fetch-site': 'cross-site', referer: 'https://evil.example/' },
    );
    expect(res.status).toBe(403);
    expect((await c.get('/logout')).status).toBe(405);
    expect((await c.request('/logout', { method: 'HEAD' })).status).toBe(405);
    expect((await c.get('/dashboard')).status).toBe(200);
  });

  it('SM-35: a request in flight during logout (/slow) cannot bring the session back', async () => {
    const { c, cookie, token } = await signedIn();
    const path = fileOf(cookie);
    const slowClient = demo.client(c.jar.clone());
    const hold = store.holdNextLoad();
    const slow = slowClient.get('/slow');
    await hold.loaded; // /slow has read the session; it writes to it after its delay
    hold.release();
    const out = await c.post('/logout', { _csrf: token });
    expect(out.status).toBe(303);
    expect(await exists(path)).toBe(false);

    const late = await slow;
    expect(late.status).toBe(200);
    // It lost the race: its write is dropped and its response clears the cookie (fail closed).
    expect(late.setCookies.map((c) => parseSetCookie(c).value)).toEqual(['']);
    expect(await exists(path)).toBe(false);
    expect((await withCookie(`id=${cookie}`).get('/dashboard')).status).toBe(303);
  });

  for (const [path, form] of [
    ['/elevate', {}],
    ['/reauth', { password: ALICE.password }],
  ] as const) {
    it(`SM-35: a ${path} (ID regeneration) still in flight when the user logs out does not sign them in again`, async () => {
      const { c, cookie, token } = await signedIn();
      const inFlight = demo.client(c.jar.clone());
      const hold = store.holdNextLoad();
      const pending = inFlight.post(path, { _csrf: token, ...form });
      await hold.loaded; // the request has read the session...
      const out = await c.post('/logout', { _csrf: token }); // ...the user logs out meanwhile...
      expect(out.status).toBe(303);
      expect(await exists(fileOf(cookie))).toBe(false);
      hold.release(); // ...then the request regenerates the ID of the session it loaded.
      const late = await pending;

      // Whatever it answers, the browser must not end up signed in again.
      expect(late.status).toBeLessThan(500);
      const after = await inFlight.get('/dashboard');
      expect(after.status).toBe(303);
      expect(await exists(fileOf(inFlight.jar.get('id') ?? cookie))).toBe(false);
    });
  }

  it('SM-37: a password change signs out the user’s other sessions and keeps this one', async () => {
    const app = await startDemo({ store: new MemoryStore() });
    try {
      const a = await signedIn(app);
      const b = await signedIn(app);
      const bob = await signedIn(app, BOB);
      const res = await a.c.post('/password', {
        _csrf: a.token,
        currentPassword: ALICE.password,
        newPassword: 'through-the-looking-glass',
      });
      expect(res.status).toBe(200);
      expect(JSON.parse(res.body)).toEqual({ ok: true, signedOut: 1 });
      expect(res.setCookies).toHaveLength(1);
      expect(tokenOf(a.c.jar.get('id')!)).not.toBe(tokenOf(a.cookie));

      expect((await b.c.get('/dashboard')).status).toBe(303);
      expect((await a.c.get('/dashboard')).status).toBe(200);
      expect((await bob.c.get('/dashboard')).status).toBe(200); // another user is not affected
      const replayA = app.client();
      replayA.jar.set('id', a.cookie);
      expect((await replayA.get('/dashboard')).status).toBe(303);

      expect((await login(app.client(), ALICE)).location).toBe('/login');
      expect(
        (await login(app.client(), { username: 'alice', password: 'through-the-looking-glass' })).location,
      ).toBe('/dashboard');
    } finally {
      await app.close();
    }
  });

  it('SM-21/SM-37: /password with a wrong current password changes nothing', async () => {
    const app = await startDemo({ store: new MemoryStore() });
    try {
      const a = await signedIn(app);
      const b = await signedIn(app);
      const res = await a.c.post('/password', {
        _csrf: a.token,
        currentPassword: 'guess',
        newPassword: 'whatever-long',
      });
      expect(res.status).toBe(401);
      expect(res.setCookies).toEqual([]);
      expect((await b.c.get('/dashboard')).status).toBe(200);
      expect((await login(app.client(), ALICE)).location).toBe('/dashboard');
    } finally {
      await app.close();
    }
  });
});

describe('E. Sensitive changes', () => {
  it('SM-39: changing the email needs a recent login; after 6 minutes it answers 401 until /reauth', async () => {
    const clock = fakeClock();
    const app = await startDemo({ store: new MemoryStore({ now: clock.now }), now: clock.now });
    try {
      const { c, token } = await signedIn(app);
      const change = (t: string) => c.post('/profile/email', { _csrf: t, email: 'alice@example.org' });
      expect((await change(token)).status).toBe(200);
      clock.advance(6 * 60_000);
      const stale = await change(token);
      expect(stale.status).toBe(401);
      expect(JSON.parse(stale.body)).toMatchObject({ error: 'reauthentication required' });
      expect((await c.post('/reauth', { _csrf: token, password: 'wrong' })).status).toBe(401);
      expect((await change(token)).status).toBe(401);
      expect((await c.post('/reauth', { _csrf: token, password: ALICE.password })).status).toBe(200);
      // Re-authentication rotated the ID and the CSRF token with it.
      expect((await change(await dashboardToken(c))).status).toBe(200);
    } finally {
      await app.close();
    }
  });
});

describe('G. CSRF', () => {
  it('SM-43: POST /transfer without the session’s token → 403 and malicious_csrf; valid → 200', async () => {
    const { c, cookie, token } = await signedIn();
    const bob = await signedIn(demo, BOB);
    const before = demo.events.length;
    const refused = [
      await c.post('/transfer', { to: 'mallory', amount: '5' }),
      await c.post('/transfer', { _csrf: bob.token, to: 'mallory', amount: '5' }),
      await withCookie(`id=${cookie}; _csrf=${token}`).post('/transfer', { to: 'mallory', amount: '5' }),
      await withCookie(`id=${cookie}; x-csrf-token=${token}`).post('/transfer', {
        to: 'mallory',
        amount: '5',
      }),
      await c.post(`/transfer?_csrf=${token}`, { to: 'mallory', amount: '5' }),
      await c.post('/transfer', { _csrf: `${token}x`, to: 'mallory', amount: '5' }),
      await c.post('/transfer', { _csrf: token.slice(0, -1), to: 'mallory', amount: '5' }),
    ];
    expect(refused.map((r) => r.status)).toEqual([403, 403, 403, 403, 403, 403, 403]);
    const events = demo.events.slice(before).filter((e) => e.type === 'malicious_csrf');
    expect(events).toHaveLength(refused.length);
    expect(events.every((e) => e.userId === ALICE.id)).toBe(true);
    // The reason says which check failed, never the token: none sent, or one that is not the session's.
    expect(events.map((e) => e.reason)).toEqual([
      'token-missing',
      'token-mismatch',
      'token-missing',
      'token-missing',
      'token-missing',
      'token-mismatch',
      'token-mismatch',
    ]);
    expect((await c.post('/transfer', { _csrf: token, to: 'bob', amount: '5' })).status).toBe(200);
    expect((await c.post('/transfer', { to: 'bob', amount: '5' }, { 'x-csrf-token': token })).status).toBe(
      200,
    );
    const dash = await c.get('/dashboard');
    expect(dash.body).not.toContain('mallory');
  });

  it('SM-46: Fetch Metadata: cross-site and same-site unsafe requests are refused even with the token', async () => {
    const { c, token } = await signedIn();
    const send = (headers: Record<string, string>) =>
      c.post('/transfer', { _csrf: token, to: 'bob', amount: '1' }, headers).then((r) => r.status);
    expect(await send({ 'sec-fetch-site': 'cross-site' })).toBe(403);
    expect(await send({ 'sec-fetch-site': 'same-site' })).toBe(403);
    expect(await send({ 'sec-fetch-site': 'same-origin' })).toBe(200);
    expect(await send({ 'sec-fetch-site': 'none' })).toBe(200);
    expect(await send({ origin: 'https://evil.example' })).toBe(403);
    expect(await send({ origin: demo.url })).toBe(200);
    expect(await send({ origin: demo.url, 'sec-fetch-site': 'same-origin' })).toBe(200);
    expect(await send({ origin: demo.url.replace('http:', 'https:').replace(/:\d+$/, ':1') })).toBe(403);
  });

  it('SM-46: unsafe responses carry Vary: Sec-Fetch-Site, Origin', async () => {
    const { c, token } = await signedIn();
    const ok = await c.post(
      '/transfer',
      { _csrf: token, to: 'bob', amount: '1' },
      { 'sec-fetch-site': 'same-origin' },
    );
    const refused = await c.post(
      '/transfer',
      { _csrf: token, to: 'bob', amount: '1' },
      { 'sec-fetch-site': 'cross-site' },
    );
    for (const res of [ok, refused]) {
      const vary = (res.headers.get('vary') ?? '').toLowerCase();
      expect(vary).toContain('sec-fetch-site');
      expect(vary).toContain('origin');
    }
  });

  it('SM-47: cross-origin POSTs are refused whatever the Content-Type', async () => {
    const { c, token } = await signedIn();
    const host = new URL(demo.url).host;
    const body = (type: string | undefined) =>
      type?.includes('json')
        ? JSON.stringify({ _csrf: token, to: 'mallory', amount: 1 })
        : `_csrf=${token}&to=mallory&amount=1`;
    const statuses: string[] = [];
    for (const origin of [`http://${host}.attacker.com`, 'null', 'https://attacker.example']) {
      for (const type of CSRF_CONTENT_TYPES) {
        const res = await c.request('/transfer', {
          method: 'POST',
          headers: { origin, 'x-csrf-token': token, ...contentTypeHeader(type) },
          body: body(type),
        });
        statuses.push(`${origin} ${type}: ${res.status}`);
        expect(res.status, `${origin} ${type}`).toBe(403);
      }
    }
    // Without Origin, Referer or Fetch Metadata (a non-browser client), the token alone decides.
    for (const type of CSRF_CONTENT_TYPES) {
      const res = await c.request('/transfer', {
        method: 'POST',
        headers: contentTypeHeader(type),
        body: type?.includes('json') ? JSON.stringify({ to: 'mallory', amount: 1 }) : 'to=mallory&amount=1',
      });
      expect(res.status, `no headers, no token, ${type}`).toBe(403);
    }
    expect((await c.get('/dashboard')).body).not.toContain('mallory');
  });

  it('SM-47: with neither Origin nor Referer a POST is refused even with a valid token; a same-origin Referer passes', async () => {
    const { c, token } = await signedIn();
    const form = { _csrf: token, to: 'bob', amount: '1' };
    const bare = await c.request('/transfer', {
      method: 'POST',
      noOrigin: true,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(form).toString(),
    });
    expect(bare.status).toBe(403);
    expect((await c.post('/transfer', form, { referer: 'https://attacker.example/page' })).status).toBe(403);
    expect((await c.post('/transfer', form, { referer: new URL('/dashboard', c.base).href })).status).toBe(
      200,
    );
  });

  it('SM-48: a cross-site POST /login is refused (no token, or token plus cross-site headers)', async () => {
    const c = demo.client();
    const token = csrfFrom((await c.get('/login')).body);
    const crossSite = { origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' };
    expect((await c.post('/login', credentials(ALICE), crossSite)).status).toBe(403);
    expect((await c.post('/login', { _csrf: token, ...credentials(ALICE) }, crossSite)).status).toBe(403);
    expect((await c.post('/login', { _csrf: token, ...credentials(ALICE) }, { origin: 'null' })).status).toBe(
      403,
    );
    expect((await c.get('/dashboard')).status).toBe(303);
  });

  it('SM-49: GET, HEAD and OPTIONS change nothing (/logout, /transfer)', async () => {
    const { c, cookie } = await signedIn();
    const path = fileOf(cookie);
    const before = await stat(path);
    for (const method of ['GET', 'HEAD', 'OPTIONS']) {
      expect((await c.request('/logout', { method })).status, `${method} /logout`).toBe(405);
      const t = await c.request('/transfer?to=mallory&amount=999&ref=sneaky', { method });
      expect(t.status, `${method} /transfer`).toBe(405);
    }
    const after = await stat(path);
    expect(after.ino).toBe(before.ino);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    const dash = await c.get('/dashboard');
    expect(dash.status).toBe(200);
    expect(dash.body).not.toContain('sneaky');
  });
});

describe('J. Store reliability', () => {
  it('SM-56: a store that fails every operation → 503, never a 200, never a cookie', async () => {
    // A session made while the store worked...
    const { c, cookie, token } = await signedIn();
    const preJar = demo.client();
    const preToken = csrfFrom((await preJar.get('/login')).body);
    // ...is presented to an app whose FileStore directory is a regular file (ENOTDIR everywhere).
    const blocker = join(await tempDir(), 'not-a-dir');
    await writeFile(blocker, 'x');
    const broken = await startDemo({ store: new FileStore({ dir: blocker, fsync: false }) });
    try {
      const dash = await broken.client(c.jar.clone()).get('/dashboard');
      expect(dash.status).toBe(503);
      expect(dash.body).toContain('Service unavailable');
      expect(dash.body).not.toContain('alice');
      expect(dash.setCookies).toEqual([]);
      const post = await broken
        .client(preJar.jar.clone())
        .post('/login', { _csrf: preToken, ...credentials(ALICE) });
      expect(post.status).toBe(503);
      expect(post.setCookies).toEqual([]);
      const logout = await broken.client(c.jar.clone()).post('/logout', { _csrf: token });
      expect(logout.status).toBe(503);
      // A visitor without a cookie costs no store access: the landing page still works.
      expect((await broken.client().get('/')).status).toBe(200);
    } finally {
      await broken.close();
    }
    expect((await withCookie(`id=${cookie}`).get('/dashboard')).status).toBe(200);
  });

  it('SM-56: a write error at login → 503 and no cookie; nobody is signed in', async () => {
    const inner = new MemoryStore();
    const flaky = new InstrumentedStore(inner);
    const app = await startDemo({ store: flaky });
    try {
      const c = app.client();
      const page = await c.get('/login');
      const pre = c.jar.get('id');
      flaky.failing.add('create');
      flaky.failing.add('commit');
      const res = await c.post('/login', { _csrf: csrfFrom(page.body), ...credentials(ALICE) });
      expect(res.status).toBe(503);
      expect(res.setCookies).toEqual([]);
      expect(res.body).toContain('Service unavailable');
      expect(c.jar.get('id')).toBe(pre);
      flaky.failing.clear();
      expect((await c.get('/dashboard')).status).toBe(303);
      expect((await login(c)).location).toBe('/dashboard');
    } finally {
      await app.close();
    }
  });

  it('SM-56: when the file store’s directory becomes usable again, sessions work without a restart', async () => {
    const blocker = join(await tempDir(), 'sessions');
    await writeFile(blocker, 'x');
    const app = await startDemo({ store: new FileStore({ dir: blocker, fsync: false }) });
    try {
      // The login page needs no store; a write (a failed login's flash message) does.
      const broken = app.client();
      const form = await broken.get('/login');
      expect(form.status).toBe(200);
      const wrong = { _csrf: csrfFrom(form.body), username: 'nobody', password: 'wrong-password' };
      expect((await broken.post('/login', wrong)).status).toBe(503);
      await rm(blocker); // the outage ends: the directory can be created now
      const c = app.client();
      const page = await c.get('/login');
      expect(page.status).toBe(200);
      expect((await c.post('/login', { ...wrong, _csrf: csrfFrom(page.body) })).status).toBe(303);
      expect(c.jar.get('id')).toBeDefined();
    } finally {
      await app.close();
    }
  });

  it('SM-58: 20 parallel requests each setting a distinct key all survive', async () => {
    const { c, token } = await signedIn();
    const refs = Array.from({ length: 20 }, (_, i) => `par${i}`);
    const results = await Promise.all(
      refs.map((ref, i) =>
        c.post('/transfer', { _csrf: token, to: `payee${i}`, amount: String(i + 1), ref }),
      ),
    );
    expect(results.map((r) => r.status)).toEqual(refs.map(() => 200));
    const dash = await c.get('/dashboard');
    for (const [i, ref] of refs.entries()) {
      expect(dash.body).toContain(`<li data-ref="${ref}">${i + 1} to payee${i}</li>`);
    }
  });
});
