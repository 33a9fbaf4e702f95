import { describe, expect, it } from 'vitest';
import {
  MemoryStore,
  type RequestInfo,
  SessionError,
  type SessionManagerOptions,
  type SessionStore,
} from '../../src/index.js';
import { renewalClaimKey } from '../../src/policy/renewal.js';
import {
  Browser,
  Clock,
  MINUTE,
  realStores,
  type StoreFactory,
  setup,
  setupOver,
} from '../helpers/session-kit.js';

const INTERVAL = 2_000;
const GRACE = 1_000;
const RENEWAL = { interval: INTERVAL, grace: GRACE } as const;

const stores = realStores();

/** A manager with renewal on, over a real store sharing the test's fake clock. */
async function renewing(factory: StoreFactory, options: Partial<SessionManagerOptions> = {}) {
  const kit = await setupOver(factory, { idleTimeout: 30 * MINUTE, renewal: RENEWAL, ...options });
  return { ...kit, browser: new Browser(kit.manager) };
}

/**
 * Lets the renewal interval pass and renews `browser`'s ID with one request; returns a second
 * browser still holding the old cookie: a tab whose request left before the new cookie arrived,
 * or a copy in an attacker's hands.
 */
async function renewKeepingOldCookie(browser: Browser, clock: Clock): Promise<Browser> {
  clock.advance(INTERVAL);
  const old = new Browser(browser.manager);
  old.cookie = browser.cookie;
  await browser.request();
  return old;
}

/** The request a browser would send now, for loading a session by hand (a request in flight). */
function requestOf(browser: Browser): RequestInfo {
  return { ...browser.info, cookieHeader: browser.cookieHeader };
}

describe('SM-24: renewal options', () => {
  it('is off by default: an old ID is kept until login or regenerateId()', async () => {
    const { manager, clock } = setup();
    expect(manager.options.renewal).toBe(false);
    const browser = new Browser(manager);
    await browser.request((s) => s.login('alice'));
    const cookie = browser.cookie;
    clock.advance(20 * MINUTE);
    const { setCookie } = await browser.request((s) => s.set('n', 1));
    expect(setCookie).toBeUndefined();
    expect(browser.cookie).toBe(cookie);
  });

  it.each([
    [{ interval: 0, grace: 1 }, /renewal\.interval must be a positive, finite number of milliseconds/],
    [{ interval: 1000, grace: -5 }, /renewal\.grace must be a positive/],
    [{ interval: 1000 }, /renewal\.grace .*got undefined/],
    [{ interval: 1000, grace: 1000 }, /grace \(1000 ms\) must be shorter than renewal\.interval \(1000 ms\)/],
    [
      { interval: 2 * MINUTE, grace: MINUTE },
      /grace \(60000 ms\) must be shorter than idleTimeout \(60000 ms\)/,
    ],
    [{ interval: 1000, grace: 10, onReuse: 'kill' }, /onReuse must be 'log' or 'revoke-user' \(got "kill"\)/],
    ['15m', /renewal must be \{ interval, grace \}/],
  ])('refuses %j with an actionable message', (renewal, message) => {
    let error: unknown;
    try {
      setup({ idleTimeout: MINUTE, renewal: renewal as SessionManagerOptions['renewal'] });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(SessionError);
    expect(error).toMatchObject({ code: 'INVALID_OPTION', message: expect.stringMatching(message) });
  });

  it("defaults onReuse to 'log'", () => {
    expect(setup({ renewal: RENEWAL }).manager.options.renewal).toEqual({ ...RENEWAL, onReuse: 'log' });
  });

  it("warns at construction when 'revoke-user' cannot list the user's sessions", () => {
    const { warnings } = setup({
      renewal: { ...RENEWAL, onReuse: 'revoke-user' },
      store: unindexed(new Clock()),
    });
    expect(warnings).toEqual([
      expect.stringMatching(/onReuse 'revoke-user' needs a store .* will only be logged/),
    ]);
  });
});

describe.each(stores)('SM-24: renewal timeout with a grace window (%s)', (_name, factory) => {
  it('a read-only request before the interval writes nothing; the first one after it gets a new ID', async () => {
    const { browser, store, clock, events } = await renewing(factory);
    await browser.request(async (s) => {
      await s.login('alice');
      s.set('cart', ['book']);
    });
    const first = browser.cookie;
    const oldKey = browser.key;
    const csrf = (await browser.request((s) => s.csrf.token())).session.csrf.token();
    clock.advance(INTERVAL - 1);
    store.reset();
    expect((await browser.request((s) => s.get('cart'))).setCookie).toBeUndefined();
    expect(store.ops()).toEqual(['load']);

    clock.advance(1);
    store.reset();
    const { setCookie, session } = await browser.request((s) => s.get('cart'));
    expect(setCookie).toMatch(/HttpOnly/);
    expect(browser.cookie).not.toBe(first);
    // Check the old record, create the new one, claim the renewal, retire the old record.
    expect(store.ops()).toEqual(['load', 'load', 'create', 'create', 'commit']);
    expect(session.id).toBe(browser.key);
    expect(events.at(-1)).toMatchObject({ type: 'session_renewed', reason: 'interval', userId: 'alice' });

    const renewed = await store.inner.load(browser.key);
    expect(renewed?.meta).toMatchObject({ userId: 'alice', idAt: clock.now() });
    const retired = await store.inner.load(oldKey);
    expect(retired).toEqual({
      meta: expect.objectContaining({ renewedAt: clock.now(), successor: browser.key, userId: 'alice' }),
      values: {},
    });
    // Unlike login, a renewal keeps the CSRF token: forms open in other tabs still submit.
    await browser.request((s) => {
      expect(s.csrf.token()).toBe(csrf);
      expect(s.get('cart')).toEqual(['book']);
      expect(s.userId).toBe('alice');
    });
    expect(await browser.manager.sessionsOf('alice')).toHaveLength(1);
  });

  it('the renewal is due again one interval after the last one, not after creation', async () => {
    const { browser, clock } = await renewing(factory);
    await browser.request((s) => s.set('n', 0));
    const ids = [browser.key];
    for (let i = 1; i <= 3; i++) {
      clock.advance(INTERVAL / 2);
      expect((await browser.request((s) => s.set('n', i))).setCookie).toBeUndefined();
      clock.advance(INTERVAL / 2);
      expect((await browser.request()).setCookie).toBeDefined();
      ids.push(browser.key);
    }
    expect(new Set(ids).size).toBe(4);
    await browser.request((s) => expect(s.get('n')).toBe(3));
  });

  it('within the grace window the old ID is served from the new record: 200, no extra session, writes land', async () => {
    const { browser, manager, store, clock, events } = await renewing(factory);
    await browser.request((s) => s.login('alice'));
    const straggler = await renewKeepingOldCookie(browser, clock);
    const eventCount = events.length;

    clock.advance(GRACE - 1);
    store.reset();
    const { session, setCookie, out } = await straggler.request((s) => s.set('theme', 'dark'));
    expect(session.isNew).toBe(false);
    expect(session.userId).toBe('alice');
    expect(session.id).toBe(browser.key);
    expect(setCookie).toBeUndefined();
    expect(out.gone).toBe(false);
    expect(store.count('create')).toBe(0);
    expect(store.ops()).toEqual(['load', 'load', 'commit']);
    expect(events.slice(eventCount)).toEqual([]);
    expect(await manager.sessionsOf('alice')).toHaveLength(1);
    await browser.request((s) => expect(s.get('theme')).toBe('dark'));
  });

  it("after the grace window the old ID is dead: a fresh session, 'session_use_after_expire', nothing created", async () => {
    const { browser, store, clock, events } = await renewing(factory);
    await browser.request((s) => s.login('alice'));
    const stolen = await renewKeepingOldCookie(browser, clock);

    clock.advance(GRACE);
    store.reset();
    const { session, setCookie } = await stolen.request((s) => s.get('theme'));
    expect(session.isNew).toBe(true);
    expect(session.userId).toBeUndefined();
    expect(session.endedReason).toBe('renewed');
    expect(setCookie).toBeUndefined();
    expect(store.ops()).toEqual(['load']);
    expect(events.at(-1)).toMatchObject({
      type: 'session_use_after_expire',
      reason: 'renewed',
      userId: 'alice',
    });
    // With onReuse 'log' the holder of the new ID keeps its session.
    expect((await browser.request()).session.userId).toBe('alice');
  });

  it("onReuse 'revoke-user': a reused renewed-away ID revokes every session of its user", async () => {
    const { browser, manager, clock, events } = await renewing(factory, {
      renewal: { ...RENEWAL, onReuse: 'revoke-user' },
    });
    const laptop = new Browser(manager);
    await laptop.request((s) => s.login('alice'));
    await browser.request((s) => s.login('alice'));
    const captured = browser.cookie;
    clock.advance(INTERVAL);
    await browser.request();
    clock.advance(GRACE + 1);
    const attacker = new Browser(manager);
    attacker.cookie = captured;
    await attacker.request();

    expect(events.slice(-3).map((e) => [e.type, e.userId])).toEqual([
      ['session_use_after_expire', 'alice'],
      ['session_revoked', undefined],
      ['session_revoked', undefined],
    ]);
    expect(await manager.sessionsOf('alice')).toEqual([]);
    expect((await browser.request()).session.userId).toBeUndefined();
    expect((await laptop.request()).session.userId).toBeUndefined();
  });

  it('a request in flight across the renewal lands its writes on the new record', async () => {
    const { browser, manager, clock } = await renewing(factory);
    await browser.request((s) => s.set('a', 1));
    clock.advance(INTERVAL - 100);
    const req = requestOf(browser);
    const slow = await manager.load(req); // loaded before the ID was due
    clock.advance(100);
    await browser.request((s) => s.set('b', 2)); // renews
    clock.advance(GRACE / 2);
    slow.set('c', 3);
    const out = await manager.commit(slow, req);
    expect(out).toMatchObject({ gone: false, setCookie: [] });
    expect(slow.id).toBe(browser.key);
    await browser.request((s) => expect([s.get('a'), s.get('b'), s.get('c')]).toEqual([1, 2, 3]));
  });

  it('a request in flight past the grace window is dropped like one on a destroyed session', async () => {
    const { browser, manager, clock } = await renewing(factory);
    await browser.request((s) => s.set('a', 1));
    clock.advance(INTERVAL);
    const req = requestOf(browser);
    const slow = await manager.load(req);
    await browser.request();
    clock.advance(GRACE);
    slow.set('late', true);
    expect(await manager.commit(slow, req)).toMatchObject({ gone: true, setCookie: [] });
    await browser.request((s) => expect(s.has('late')).toBe(false));
  });

  it('parallel requests that all find the ID due elect one renewer: one new ID, every write kept', async () => {
    const { browser, manager, store, clock } = await renewing(factory);
    await browser.request((s) => s.login('alice'));
    clock.advance(INTERVAL);
    const req = requestOf(browser);
    const sessions = await Promise.all(Array.from({ length: 6 }, () => manager.load(req)));
    sessions.forEach((s, i) => {
      s.bag('tabs').set(`tab${i}`, i);
    });
    store.reset();
    const outs = await Promise.all(sessions.map((s) => manager.commit(s, req)));
    const cookies = outs.flatMap((o) => o.setCookie);
    expect(cookies).toHaveLength(1);
    expect(outs.every((o) => !o.gone)).toBe(true);
    // Every loser removed the record it had prepared: the user has one session, not six.
    const [winner, ...orphans] = await manager.sessionsOf('alice');
    expect(orphans).toEqual([]);
    expect(sessions.every((s) => s.id === winner!.key)).toBe(true);
    browser.cookie = cookies[0]!.split(';')[0]!.split('=')[1];
    await browser.request((s) => expect(s.bag('tabs').keys()).toHaveLength(6));
  });

  it('SM-35: a logout racing a renewal leaves no live session, whatever the interleaving', async () => {
    for (let ticks = 0; ticks < 40; ticks += 3) {
      const { browser, manager, clock } = await renewing(factory);
      await browser.request((s) => s.login('alice'));
      clock.advance(INTERVAL);
      const req = requestOf(browser);
      const [renewer, leaver] = [await manager.load(req), await manager.load(req)];
      const logout = (async () => {
        for (let i = 0; i < ticks; i++) await Promise.resolve();
        await leaver.logout();
        return manager.commit(leaver, req);
      })();
      const [renewed] = await Promise.all([manager.commit(renewer, req), logout]);
      expect(await manager.sessionsOf('alice'), `after ${ticks} ticks`).toEqual([]);
      for (const cookie of renewed.setCookie) {
        const replay = new Browser(manager);
        replay.cookie = cookie.split(';')[0]!.split('=')[1];
        expect((await replay.request()).session.isNew).toBe(true);
      }
    }
  });

  it('revoke() of an ID kept from before a renewal ends the session it was renewed into', async () => {
    const { browser, manager, clock } = await renewing(factory);
    await browser.request((s) => s.login('alice'));
    const oldKey = browser.key; // e.g. stored by the app at login for a later revoke()
    const straggler = await renewKeepingOldCookie(browser, clock);
    await manager.revoke(oldKey);
    expect(await manager.sessionsOf('alice')).toEqual([]);
    expect((await browser.request()).session.isNew).toBe(true);
    expect((await straggler.request()).session.isNew).toBe(true);
  });

  it('a request that regenerates itself (login) is not renewed on top', async () => {
    const { browser, store, clock } = await renewing(factory);
    await browser.request((s) => s.set('a', 1));
    clock.advance(INTERVAL);
    store.reset();
    await browser.request((s) => s.login('bob'));
    expect(store.count('create')).toBe(1);
  });

  it('a store failure while retiring the old ID: 503, nothing half-done, the old ID still works and renews later', async () => {
    const { browser, store, clock } = await renewing(factory);
    await browser.request((s) => s.set('a', 1));
    const oldKey = browser.key;
    clock.advance(INTERVAL);
    store.failing.add('commit');
    await expect(browser.request()).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE', status: 503 });
    store.failing.clear();
    expect(await store.inner.load(renewalClaimKey(oldKey))).toBeNull();
    expect(browser.key).toBe(oldKey);
    const { setCookie, session } = await browser.request((s) => s.get('a'));
    expect(setCookie).toBeDefined();
    expect(session.get('a')).toBe(1);
  });

  it('with encryption at rest, values are re-sealed for the new ID and forwarded writes are readable', async () => {
    const { browser, clock, events } = await renewing(factory, { encrypt: true });
    await browser.request((s) => s.set('secret', 'x'));
    const straggler = await renewKeepingOldCookie(browser, clock);
    await straggler.request((s) => s.set('more', 'y'));
    await browser.request((s) => expect([s.get('secret'), s.get('more')]).toEqual(['x', 'y']));
    expect(events.filter((e) => e.type === 'store_corrupt')).toEqual([]);
  });
});

describe('SM-24: limits of the tombstone', () => {
  it('with expiredRetention 0 the retired record vanishes with the grace window: a later use is an unknown ID', async () => {
    const { browser, clock, events } = await renewing(stores[0]![1], { expiredRetention: 0 });
    await browser.request((s) => s.login('alice'));
    const stale = await renewKeepingOldCookie(browser, clock);
    clock.advance(GRACE);
    expect((await stale.request()).session.isNew).toBe(true);
    expect(events.at(-1)?.type).toBe('session_unknown_id');
  });

  it("onReuse 'revoke-user' on a store that cannot list by user only logs", async () => {
    const { browser, clock, events } = await renewing(async (clock) => unindexed(clock), {
      renewal: { ...RENEWAL, onReuse: 'revoke-user' },
    });
    await browser.request((s) => s.login('alice'));
    const stale = await renewKeepingOldCookie(browser, clock);
    clock.advance(GRACE);
    await stale.request();
    expect(events.at(-1)).toMatchObject({ type: 'session_use_after_expire', userId: 'alice' });
    expect((await browser.request()).session.userId).toBe('alice');
  });
});

/** A real MemoryStore seen through a store that has no user index (like Memcached). */
function unindexed(clock: Clock): SessionStore {
  const inner = new MemoryStore({ now: clock.now });
  return {
    capabilities: { listByUser: false, gc: false, nativeTtl: false },
    load: (key) => inner.load(key),
    create: (key, record, ttl) => inner.create(key, record, ttl),
    commit: (key, delta, ttl) => inner.commit(key, delta, ttl),
    touch: (key, meta, ttl) => inner.touch(key, meta, ttl),
    destroy: (key) => inner.destroy(key),
  };
}
