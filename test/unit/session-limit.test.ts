import { describe, expect, it } from 'vitest';
import {
  MemoryStore,
  type RequestInfo,
  SessionError,
  type SessionManagerOptions,
  type SessionStore,
} from '../../src/index.js';
import { byAge } from '../../src/policy/session-limit.js';
import {
  Browser,
  cookiePair,
  MINUTE,
  realStores,
  type StoreFactory,
  setup,
  setupOver,
} from '../helpers/session-kit.js';

const stores = realStores();

async function limited(factory: StoreFactory, options: Partial<SessionManagerOptions> = {}) {
  return setupOver(factory, { maxSessionsPerUser: { limit: 2 }, ...options });
}

/** `count` browsers, each logged in as `userId`, one minute apart. */
async function logins(kit: Awaited<ReturnType<typeof limited>>, count: number, userId = 'alice') {
  const browsers: Browser[] = [];
  for (let i = 0; i < count; i++) {
    if (i > 0) kit.clock.advance(MINUTE);
    const browser = new Browser(kit.manager);
    await browser.request((s) => s.login(userId));
    browsers.push(browser);
  }
  return browsers;
}

function construct(options: Partial<SessionManagerOptions>): unknown {
  try {
    setup(options);
  } catch (err) {
    return err;
  }
  return undefined;
}

describe('SM-38: options', () => {
  it('is off by default', () => {
    expect(setup().manager.options.maxSessionsPerUser).toBe(false);
  });

  it("defaults onExceed to 'evict-oldest'", () => {
    expect(setup({ maxSessionsPerUser: { limit: 3 } }).manager.options.maxSessionsPerUser).toEqual({
      limit: 3,
      onExceed: 'evict-oldest',
    });
  });

  it.each([
    [{ limit: 0 }, /limit must be a positive integer \(got 0\)/],
    [{ limit: 1.5 }, /limit must be a positive integer \(got 1\.5\)/],
    [{ limit: '2' }, /limit must be a positive integer/],
    [{ limit: 2, onExceed: 'block' }, /onExceed must be 'evict-oldest' or 'refuse' \(got "block"\)/],
    [3, /maxSessionsPerUser must be \{ limit, onExceed\? \}/],
  ])('refuses %j with an actionable message', (maxSessionsPerUser, message) => {
    const error = construct({
      maxSessionsPerUser: maxSessionsPerUser as SessionManagerOptions['maxSessionsPerUser'],
    });
    expect(error).toBeInstanceOf(SessionError);
    expect(error).toMatchObject({ code: 'INVALID_OPTION', message: expect.stringMatching(message) });
  });

  it('a store that cannot list sessions by user is refused at construction', () => {
    const inner = new MemoryStore();
    const memcachedLike: SessionStore = {
      capabilities: { listByUser: false, gc: false, nativeTtl: true },
      load: (k) => inner.load(k),
      create: (k, r, t) => inner.create(k, r, t),
      commit: (k, d, t, g) => inner.commit(k, d, t, g),
      touch: (k, m, t) => inner.touch(k, m, t),
      destroy: (k) => inner.destroy(k),
      revokeUser: async () => {}, // revoking without listing is not enough to count sessions
    };
    const error = construct({ maxSessionsPerUser: { limit: 2 }, store: memcachedLike });
    expect(error).toMatchObject({
      code: 'INVALID_OPTION',
      message: expect.stringMatching(
        /needs a store that lists sessions by user .* or remove maxSessionsPerUser/,
      ),
    });
  });
});

describe.each(stores)('SM-38: evict-oldest (%s)', (_name, factory) => {
  it('a third login with a limit of 2 ends the first session, with an event', async () => {
    const kit = await limited(factory);
    const [first, second, third] = await logins(kit, 3);
    const firstKey = first!.key;

    expect((await first!.request()).session.userId).toBeUndefined();
    expect((await second!.request()).session.userId).toBe('alice');
    expect((await third!.request()).session.userId).toBe('alice');
    expect((await kit.manager.sessionsOf('alice')).map((s) => s.key).sort()).toEqual(
      [second!.key, third!.key].sort(),
    );
    const exceeded = kit.events.filter((e) => e.type === 'excess_sessions_exceeded');
    expect(exceeded).toEqual([
      expect.objectContaining({ userId: 'alice', reason: 'evict-oldest: 1 over the limit of 2' }),
    ]);
    expect(kit.events).toContainEqual(
      expect.objectContaining({ type: 'session_revoked', reason: 'session-limit', userId: 'alice' }),
    );
    expect(await kit.store.inner.load(firstKey)).toBeNull();
    expect(kit.events.filter((e) => e.type === 'session_revoked')).toHaveLength(1);
  });

  it('age is the time of authentication: a session that logged in again is not the oldest', async () => {
    const kit = await limited(factory);
    const [a, b] = await logins(kit, 2);
    const aKey = a!.key;
    kit.clock.advance(MINUTE);
    await a!.request((s) => s.login('alice')); // re-login changes a's token, not its record: no eviction
    expect(a!.key).toBe(aKey);
    expect(kit.events.some((e) => e.type === 'excess_sessions_exceeded')).toBe(false);
    expect(await kit.manager.sessionsOf('alice')).toHaveLength(2);
    kit.clock.advance(MINUTE);
    await logins(kit, 1);
    expect((await b!.request()).session.userId).toBeUndefined();
    expect((await a!.request()).session.userId).toBe('alice');
  });

  it('a login from a session that already has a record (anonymous cart) is counted the same way', async () => {
    const kit = await limited(factory, { maxSessionsPerUser: { limit: 1 } });
    const [phone] = await logins(kit, 1);
    const laptop = new Browser(kit.manager);
    await laptop.request((s) => s.set('cart', ['book']));
    const cartKey = laptop.key;
    await laptop.request((s) => s.login('alice'));
    expect(laptop.key).toBe(cartKey); // the anonymous record is the one that logged in
    expect((await phone!.request()).session.userId).toBeUndefined();
    expect((await kit.manager.sessionsOf('alice')).map((s) => s.key)).toEqual([cartKey]);
  });

  it("other users' sessions do not count", async () => {
    const kit = await limited(factory);
    await logins(kit, 2, 'alice');
    await logins(kit, 2, 'bob');
    expect(await kit.manager.sessionsOf('alice')).toHaveLength(2);
    expect(kit.events.some((e) => e.type === 'excess_sessions_exceeded')).toBe(false);
  });

  it('renewals (SM-24) keep one record per session: renewing never counts as another session', async () => {
    const kit = await limited(factory, { renewal: { interval: 2_000, grace: 1_000 } });
    const [a] = await logins(kit, 1);
    const cookies = [a!.cookie];
    for (let i = 0; i < 3; i++) {
      kit.clock.advance(2_000);
      await a!.request();
      cookies.push(a!.cookie);
    }
    expect(new Set(cookies).size).toBe(4);
    expect((await kit.manager.sessionsOf('alice')).map((s) => s.key)).toEqual([a!.key]);
    await logins(kit, 1);
    expect(kit.events.some((e) => e.type === 'excess_sessions_exceeded')).toBe(false);
    expect((await a!.request()).session.userId).toBe('alice');
  });

  it('an evicted session is gone for every cookie it had, and its in-flight renewal fails closed', async () => {
    const kit = await limited(factory, { renewal: { interval: 2 * MINUTE, grace: 1_000 } });
    const [oldest] = await logins(kit, 2);
    const key = oldest!.key;
    kit.clock.advance(2 * MINUTE);
    const req: RequestInfo = { ...oldest!.info, cookieHeader: oldest!.cookieHeader };
    const inFlight = await kit.manager.load(req); // due for renewal
    inFlight.set('late', true);
    await logins(kit, 1); // evicts it meanwhile
    const out = await kit.manager.commit(inFlight, req);
    expect(out.gone).toBe(true);
    expect(out.setCookie.map(cookiePair)).toEqual([expect.objectContaining({ cleared: true })]);
    expect(await kit.store.inner.load(key)).toBeNull();
    expect((await oldest!.request()).session.isNew).toBe(true);
    expect(await kit.manager.sessionsOf('alice')).toHaveLength(2);
  });
});

describe.each(stores)('SM-38: refuse (%s)', (_name, factory) => {
  const refuse = { maxSessionsPerUser: { limit: 2, onExceed: 'refuse' } } as const;

  it('a third login is refused by login() itself with a 409 SESSION_LIMIT, creating nothing', async () => {
    const kit = await limited(factory, refuse);
    const [first, second] = await logins(kit, 2);
    const third = new Browser(kit.manager);
    await third.request((s) => s.set('cart', ['book']));
    const preLogin = third.cookie;
    kit.store.reset();

    let error: unknown;
    const { setCookie } = await third.request(async (s) => {
      error = await s.login('alice').catch((e: unknown) => e);
      // The session is left as it was: still anonymous, its data intact.
      expect([s.userId, s.get('cart')]).toEqual([undefined, ['book']]);
    });
    expect(error).toBeInstanceOf(SessionError);
    expect(error).toMatchObject({ code: 'SESSION_LIMIT', status: 409, statusCode: 409, expose: true });
    expect((error as Error).message).toMatch(/already signed in on 2 devices.*Sign out on one of them/);
    expect(setCookie).toBeUndefined();
    expect(third.cookie).toBe(preLogin);
    expect(kit.store.ops()).toEqual(['load']); // nothing created, nothing committed
    expect(kit.events.at(-1)).toMatchObject({
      type: 'excess_sessions_exceeded',
      userId: 'alice',
      reason: 'refused: limit of 2',
    });
    expect((await first!.request()).session.userId).toBe('alice');
    expect((await second!.request()).session.userId).toBe('alice');
    expect(await kit.manager.sessionsOf('alice')).toHaveLength(2);
  });

  it('after one session ends, the next login is admitted', async () => {
    const kit = await limited(factory, refuse);
    const [first] = await logins(kit, 2);
    await first!.request((s) => s.logout());
    const [third] = await logins(kit, 1);
    expect((await third!.request()).session.userId).toBe('alice');
  });

  it('logging in again on a session of the same user is not refused', async () => {
    const kit = await limited(factory, refuse);
    const [first, second] = await logins(kit, 2);
    const before = first!.cookie;
    const { setCookie } = await first!.request((s) => s.login('alice'));
    expect(setCookie).toBeDefined();
    expect(first!.cookie).not.toBe(before);
    expect((await first!.request()).session.userId).toBe('alice');
    expect((await second!.request()).session.userId).toBe('alice');
    expect(kit.events.some((e) => e.type === 'excess_sessions_exceeded')).toBe(false);
  });

  it('two logins racing for the last place never both get in; a refused commit sends no cookie', async () => {
    const kit = await limited(factory, refuse);
    await logins(kit, 1);
    const req: RequestInfo = { secure: true };
    const racers = [await kit.manager.load(req), await kit.manager.load(req)];
    for (const s of racers) await s.login('alice'); // both pass the early check
    const results = await Promise.allSettled(racers.map((s) => kit.manager.commit(s, req)));
    const admitted = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected');
    expect(admitted.length).toBeLessThanOrEqual(1);
    for (const r of refused) expect(r.reason).toMatchObject({ code: 'SESSION_LIMIT', status: 409 });
    expect(await kit.manager.sessionsOf('alice')).toHaveLength(1 + admitted.length);
  });

  it('two logins on existing records racing for the last place never both get in', async () => {
    const kit = await limited(factory, refuse);
    await logins(kit, 1);
    const carts = [new Browser(kit.manager), new Browser(kit.manager)];
    for (const b of carts) await b.request((s) => s.set('cart', ['book']));
    const reqs = carts.map((b): RequestInfo => ({ ...b.info, cookieHeader: b.cookieHeader }));
    const racers = [await kit.manager.load(reqs[0]!), await kit.manager.load(reqs[1]!)];
    for (const s of racers) await s.login('alice'); // both pass the early check
    const results = await Promise.allSettled(racers.map((s, i) => kit.manager.commit(s, reqs[i]!)));
    const admitted = results.filter((r) => r.status === 'fulfilled');
    expect(admitted.length).toBeLessThanOrEqual(1);
    for (const r of results)
      if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'SESSION_LIMIT', status: 409 });
    expect(await kit.manager.sessionsOf('alice')).toHaveLength(1 + admitted.length);
  });

  it('at commit, a login pushed over the limit meanwhile ends its session: SESSION_LIMIT, no cookie, the pre-login data gone with it', async () => {
    const kit = await limited(factory, refuse);
    const browser = new Browser(kit.manager);
    await browser.request((s) => s.set('cart', ['book']));
    const key = browser.key;
    const req: RequestInfo = { ...browser.info, cookieHeader: browser.cookieHeader };
    const slow = await kit.manager.load(req);
    await slow.login('alice'); // admitted now...
    const others = await logins(kit, 2); // ...but two other logins finish first
    await expect(kit.manager.commit(slow, req)).rejects.toMatchObject({ code: 'SESSION_LIMIT', status: 409 });
    expect(kit.events.at(-1)).toMatchObject({
      type: 'excess_sessions_exceeded',
      userId: 'alice',
      reason: 'refused: limit of 2',
    });
    // The login and the anonymous session were one record: it is deleted, not left half logged in.
    expect(await kit.store.inner.load(key)).toBeNull();
    expect((await kit.manager.sessionsOf('alice')).map((s) => s.key).sort()).toEqual(
      others.map((b) => b.key).sort(),
    );
    const { session } = await browser.request();
    expect([session.isNew, session.userId, session.get('cart')]).toEqual([true, undefined, undefined]);
    for (const b of others) expect((await b.request()).session.userId).toBe('alice');
  });
});

describe('SM-38: order of eviction', () => {
  it('oldest authentication first, then creation, then key, so every observer agrees', () => {
    const at = (key: string, createdAt: number, authAt?: number) => ({
      key,
      meta: {
        createdAt,
        lastSeenAt: createdAt,
        deadline: createdAt + 1,
        ...(authAt === undefined ? {} : { authAt }),
      },
    });
    const list = [at('d', 5, 9), at('c', 1, 7), at('b', 3), at('a', 3)];
    expect(list.sort(byAge).map((s) => s.key)).toEqual(['a', 'b', 'c', 'd']);
  });
});
