/**
 * The demo's active-sessions page (`/sessions`, issue 8 item 7): one row per live session of the
 * signed-in user with device, address and last seen, this session marked, a revoke button on
 * each other one, and "sign out other devices"; on a store that cannot list sessions it says so
 * and still signs the others out. Black-box over HTTP, like demo.test.ts.
 */
import { randomBytes } from 'node:crypto';
import Memcached from 'memcached';
import { afterAll, describe, expect, it } from 'vitest';
import {
  type CommitGuard,
  type CommitResult,
  MemoryStore,
  type SessionDelta,
  type SessionMeta,
  type SessionStore,
  type StoredSession,
} from '../../src/index.js';
import { MemcachedStore, recommendedMemcachedOptions } from '../../src/stores/memcached.js';
import type { Client } from '../helpers/cookie-jar.js';
import {
  ALICE,
  BOB,
  csrfFrom,
  type DemoServer,
  login,
  removeTempDirs,
  sidOf,
  startDemo,
} from '../helpers/demo.js';
import { serverAvailable } from '../helpers/servers.js';

const CHROME_LINUX =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36';
const SAFARI_IPHONE =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1';
const FIREFOX_WINDOWS = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0';
const XSS_UA = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&';

const demos: DemoServer[] = [];
afterAll(async () => {
  await Promise.all(demos.splice(0).map((d) => d.close()));
  await removeTempDirs();
});

async function demoOn(store?: SessionStore): Promise<DemoServer> {
  const demo = await startDemo(store ? { store } : {});
  demos.push(demo);
  return demo;
}

/** A client signed in as `user` with the given user agent. */
async function signedIn(demo: DemoServer, userAgent: string, user: typeof ALICE | typeof BOB = ALICE) {
  const client = demo.client(undefined, userAgent);
  const res = await login(client, user);
  expect(res).toEqual({ status: 303, location: '/dashboard' });
  return client;
}

/** The session id (`session.id`) of a signed-in client: the record id in its cookie. */
function idOf(client: Client): string {
  const cookie = client.jar.get('id');
  if (!cookie) throw new Error('client has no session cookie');
  return sidOf(cookie);
}

/** The `<li class="session ...">` rows of a sessions page. */
function rowsOf(html: string): string[] {
  return [...html.matchAll(/<li class="session[^"]*"[\s\S]*?<\/li>/g)].map((m) => m[0]);
}

const isCurrent = (row: string) => row.startsWith('<li class="session current"');
const revokeIdOf = (row: string) => /<input type="hidden" name="id" value="([^"]+)">/.exec(row)?.[1];

async function sessionsPage(client: Client) {
  const res = await client.get('/sessions');
  expect(res.status).toBe(200);
  return { html: res.body, rows: rowsOf(res.body), token: csrfFrom(res.body) };
}

/** The signed-in check every test ends with: 200 on the dashboard, or a redirect to /login. */
async function dashboardStatus(client: Client): Promise<string> {
  const res = await client.get('/dashboard');
  return res.status === 200 ? 'signed in' : `${res.status} ${res.location}`;
}

describe('/sessions on a store that lists sessions (file store)', () => {
  it('lists one row per live session: device, address, last seen, this session marked; not other users', async () => {
    const demo = await demoOn();
    const a = await signedIn(demo, CHROME_LINUX);
    const b = await signedIn(demo, SAFARI_IPHONE);
    const bob = await signedIn(demo, FIREFOX_WINDOWS, BOB);

    const { html, rows } = await sessionsPage(a);
    expect(rows).toHaveLength(2);
    // This session first, marked, and without a revoke button.
    expect(isCurrent(rows[0]!)).toBe(true);
    expect(rows[0]).toContain('Chrome 156 on Linux');
    expect(rows[0]).toContain('<span class="badge">This session</span>');
    expect(revokeIdOf(rows[0]!)).toBeUndefined();
    // The other one: its device, a revoke form carrying its id.
    expect(isCurrent(rows[1]!)).toBe(false);
    expect(rows[1]).toContain('Mobile Safari 17 on iOS 17.4 (Apple iPhone)');
    expect(rows[1]).not.toContain('This session');
    expect(revokeIdOf(rows[1]!)).toBe(idOf(b));
    for (const row of rows) {
      expect(row).toContain('127.0.0.1');
      expect(row).toMatch(/last seen <time datetime="\d{4}-\d\d-\d\dT[^"]+Z" title="[^"]+">just now<\/time>/);
    }
    expect(html.match(/This session/g)).toHaveLength(1);
    // Bob's session is not alice's business.
    expect(html).not.toContain('Firefox');
    expect(html).not.toContain(idOf(bob));
    expect(html).toContain('<form method="post" action="/sessions/revoke-others">');
  });

  it('revoke: ends the other session (its next request lands on /login), this one stays', async () => {
    const demo = await demoOn();
    const a = await signedIn(demo, CHROME_LINUX);
    const b = await signedIn(demo, SAFARI_IPHONE);
    const { token } = await sessionsPage(a);
    const bId = idOf(b);

    const res = await a.post('/sessions/revoke', { _csrf: token, id: bId });
    expect(res.status).toBe(303);
    expect(res.location).toBe('/sessions');
    expect(await dashboardStatus(b)).toBe('303 /login');

    const after = await sessionsPage(a);
    expect(after.html).toContain('Signed out: Mobile Safari 17 on iOS 17.4 (Apple iPhone).');
    expect(after.rows).toHaveLength(1);
    expect(isCurrent(after.rows[0]!)).toBe(true);
    expect(after.html).toContain('You are signed in on this device only.');
    expect(after.html).not.toContain('action="/sessions/revoke-others"');
    expect(await dashboardStatus(a)).toBe('signed in');
    expect(demo.events.filter((e) => e.type === 'session_revoked')).toHaveLength(1);
  });

  it("refuses another user's session id with 404, and bob stays signed in", async () => {
    const demo = await demoOn();
    const a = await signedIn(demo, CHROME_LINUX);
    const bob = await signedIn(demo, FIREFOX_WINDOWS, BOB);
    const { token } = await sessionsPage(a);

    const res = await a.post('/sessions/revoke', { _csrf: token, id: idOf(bob) });
    expect(res.status).toBe(404);
    expect(res.body).toContain('That session is not one of yours, or it has already ended.');
    expect(res.body).not.toContain(idOf(bob));
    expect(await dashboardStatus(bob)).toBe('signed in');
    expect(demo.events.some((e) => e.type === 'session_revoked')).toBe(false);

    // An unknown id, and an ended one, are "not found" the same way; no id at all is a bad request.
    expect((await a.post('/sessions/revoke', { _csrf: token, id: 'x'.repeat(43) })).status).toBe(404);
    expect((await a.post('/sessions/revoke', { _csrf: token })).status).toBe(400);
    expect(await dashboardStatus(a)).toBe('signed in');
  });

  it('the revoke and sign-out-others forms need the CSRF token and a signed-in user', async () => {
    const demo = await demoOn();
    const a = await signedIn(demo, CHROME_LINUX);
    const b = await signedIn(demo, SAFARI_IPHONE);
    expect((await a.post('/sessions/revoke', { id: idOf(b) })).status).toBe(403);
    expect((await a.post('/sessions/revoke-others', {})).status).toBe(403);
    expect(await dashboardStatus(b)).toBe('signed in');

    // A visitor who is not signed in is sent to the login page.
    const anonymous = demo.client();
    const page = await anonymous.get('/sessions');
    expect(page.status).toBe(303);
    expect(page.location).toBe('/login');
    const token = csrfFrom((await anonymous.get('/login')).body);
    const post = await anonymous.post('/sessions/revoke', { _csrf: token, id: idOf(b) });
    expect(post.status).toBe(303);
    expect(post.location).toBe('/login');
    expect(await dashboardStatus(b)).toBe('signed in');
  });

  it('revoking this session from the form is signing out', async () => {
    const demo = await demoOn();
    const a = await signedIn(demo, CHROME_LINUX);
    const { token } = await sessionsPage(a);
    const stolen = a.jar.clone();
    const res = await a.post('/sessions/revoke', { _csrf: token, id: idOf(a) });
    expect(res.status).toBe(303);
    expect(res.location).toBe('/login');
    expect(await dashboardStatus(demo.client(stolen))).toBe('303 /login');
  });

  it('a user agent with markup is shown escaped, in the row and its tooltip', async () => {
    const demo = await demoOn();
    const a = await signedIn(demo, CHROME_LINUX);
    await signedIn(demo, XSS_UA);
    const { html, rows } = await sessionsPage(a);
    expect(rows).toHaveLength(2);
    expect(html).not.toContain('<script>');
    expect(html).not.toContain('<img');
    expect(html).toContain(
      '&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;&quot;&#39;&amp;',
    );
    const other = rows.find((r) => !isCurrent(r))!;
    expect(other).toContain('Unknown device');
    expect(other).toContain(' title="&lt;script&gt;');
  });

  it('"Sign out other devices" ends every other session of the user, and only those', async () => {
    const demo = await demoOn();
    const a = await signedIn(demo, CHROME_LINUX);
    const others = [await signedIn(demo, SAFARI_IPHONE), await signedIn(demo, FIREFOX_WINDOWS)];
    const bob = await signedIn(demo, FIREFOX_WINDOWS, BOB);
    const { rows, token } = await sessionsPage(a);
    expect(rows).toHaveLength(3);
    expect(rows[0]).toContain('This session');

    const res = await a.post('/sessions/revoke-others', { _csrf: token });
    expect(res.status).toBe(303);
    expect(res.location).toBe('/sessions');
    for (const c of others) expect(await dashboardStatus(c)).toBe('303 /login');
    expect(await dashboardStatus(bob)).toBe('signed in');
    const after = await sessionsPage(a);
    expect(after.html).toContain('Signed out 2 other sessions.');
    expect(after.rows).toHaveLength(1);
    expect(await dashboardStatus(a)).toBe('signed in');
  });

  it('the dashboard links to /sessions', async () => {
    const demo = await demoOn();
    const a = await signedIn(demo, CHROME_LINUX);
    const res = await a.get('/dashboard');
    expect(res.body).toMatch(/<a href="\/sessions"[^>]*>Your active sessions<\/a>/);
  });
});

/**
 * A memory store that cannot list sessions by user, as a store without a user index would be;
 * with `revokes`, it ends a user's sessions natively (as Memcached does with its generations).
 */
class NonListingStore implements SessionStore {
  readonly capabilities = { listByUser: false, gc: true, nativeTtl: false } as const;
  readonly inner = new MemoryStore();
  revokeUser?: (userId: string, except?: string) => Promise<void>;

  constructor(revokes: boolean) {
    if (revokes) {
      this.revokeUser = async (userId, except) => {
        for (const s of await this.inner.sessionsOf(userId)) {
          if (s.key !== except) await this.inner.destroy(s.key);
        }
      };
    }
  }
  load(key: string): Promise<StoredSession | null> {
    return this.inner.load(key);
  }
  create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    return this.inner.create(key, record, ttlMs);
  }
  commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    return this.inner.commit(key, delta, ttlMs, guard);
  }
  touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'> {
    return this.inner.touch(key, meta, ttlMs);
  }
  destroy(key: string): Promise<void> {
    return this.inner.destroy(key);
  }
  gc(now?: number): Promise<number> {
    return this.inner.gc(now);
  }
}

/** What every store that cannot list sessions but can revoke them must show. */
async function unlistedButRevocable(demo: DemoServer, storeName: string): Promise<void> {
  const a = await signedIn(demo, CHROME_LINUX);
  const b = await signedIn(demo, SAFARI_IPHONE);
  const bob = await signedIn(demo, FIREFOX_WINDOWS, BOB);

  const { html, rows, token } = await sessionsPage(a);
  expect(html).toContain(
    `store that cannot list them\n      (${storeName}), so your other devices cannot be shown here.`,
  );
  expect(html).toContain('Signing out all other devices still works.');
  // This session alone, marked; no per-session revoke buttons; the sign-out-others button.
  expect(rows).toHaveLength(1);
  expect(rows[0]).toContain('Chrome 156 on Linux');
  expect(rows[0]).toContain('This session');
  expect(html).not.toContain('action="/sessions/revoke"');
  expect(html).toContain('action="/sessions/revoke-others"');

  // One session by id cannot be checked for ownership without a list: refused, nothing ended.
  const one = await a.post('/sessions/revoke', { _csrf: token, id: idOf(b) });
  expect(one.status).toBe(404);
  expect(one.body).toContain('Use &quot;Sign out other devices&quot; instead.');
  expect(await dashboardStatus(b)).toBe('signed in');

  const res = await a.post('/sessions/revoke-others', { _csrf: token });
  expect(res.status).toBe(303);
  expect(res.location).toBe('/sessions');
  expect(await dashboardStatus(b)).toBe('303 /login');
  expect(await dashboardStatus(bob)).toBe('signed in');
  const after = await sessionsPage(a);
  expect(after.html).toContain('All other sessions were signed out.');
  expect(await dashboardStatus(a)).toBe('signed in');
}

describe('/sessions on a store that cannot list sessions', () => {
  it('says so plainly, and "sign out other devices" still works through revokeAll (count unknown)', async () => {
    const demo = await demoOn(new NonListingStore(true));
    await unlistedButRevocable(demo, 'NonListingStore');
  });

  it('a store that can neither list nor revoke: the page says so, offers no button, never fails', async () => {
    const demo = await demoOn(new NonListingStore(false));
    const a = await signedIn(demo, CHROME_LINUX);
    const b = await signedIn(demo, SAFARI_IPHONE);
    const { html, rows, token } = await sessionsPage(a);
    expect(html).toContain('cannot be shown here. It cannot sign them out either');
    expect(rows).toHaveLength(1);
    expect(html).not.toContain('action="/sessions/revoke-others"');
    const res = await a.post('/sessions/revoke-others', { _csrf: token });
    expect(res.status).toBe(303);
    const after = await sessionsPage(a);
    expect(after.html).toContain('cannot sign out other sessions.');
    expect(await dashboardStatus(a)).toBe('signed in');
    expect(await dashboardStatus(b)).toBe('signed in');
  });

  describe('on Memcached', async () => {
    const servers = (process.env.MEMCACHED_SERVERS ?? '127.0.0.1:11211,127.0.0.1:11212').split(',');
    let client: Memcached | undefined;
    const skip = await serverAvailable('Memcached', async () => {
      const probe = new Memcached(servers, { ...recommendedMemcachedOptions });
      try {
        await new Promise<void>((resolve, reject) =>
          probe.version((err) =>
            err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(),
          ),
        );
      } finally {
        probe.end();
      }
    });
    afterAll(() => client?.end());

    it.skipIf(skip)('the same: plain notice, and all other sessions signed out', async () => {
      client = new Memcached(servers, { ...recommendedMemcachedOptions });
      // A prefix of its own: revokeUser on 'u1' must not touch other suites' alice sessions.
      const store = new MemcachedStore(client, {
        prefix: `demo-sessions-${randomBytes(6).toString('hex')}:`,
      });
      const demo = await demoOn(store);
      await unlistedButRevocable(demo, 'MemcachedStore');
    });
  });
});
