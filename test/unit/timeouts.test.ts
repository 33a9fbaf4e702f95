import { describe, expect, it } from 'vitest';
import { DEFAULT_EXPIRED_RETENTION, type SessionManagerOptions } from '../../src/index.js';
import { Browser, HOUR, MINUTE, setup } from '../helpers/session-kit.js';

const IDLE = 30 * MINUTE;
const ABSOLUTE = 2 * HOUR;
const RETAIN = DEFAULT_EXPIRED_RETENTION;

/** Manager and MemoryStore share one fake clock, so the store's own expiry is exercised too. */
const timed = (options: Partial<SessionManagerOptions> = {}) =>
  setup({ idleTimeout: IDLE, anonymousIdleTimeout: IDLE, absoluteTimeout: ABSOLUTE, ...options });

describe('SM-25: idle timeout', () => {
  it('a session unused for the idle timeout is dead; the record is removed and the reason reported', async () => {
    const { manager, store, clock, events } = timed();
    const browser = new Browser(manager);
    await browser.request((s) => s.login(9));
    const key = browser.key;
    clock.advance(IDLE);
    const { session, out } = await browser.request((s) => s.get('x'));
    expect(session.isNew).toBe(true);
    expect(session.get('x')).toBeUndefined();
    expect(session.endedReason).toBe('idle');
    expect(out.setCookie).toEqual([]);
    expect(await store.inner.load(key)).toBeNull();
    expect(events.at(-1)).toMatchObject({ type: 'session_expired', reason: 'idle', userId: '9' });
  });

  it('activity resets the idle timer', async () => {
    const { manager, clock } = timed();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    for (let i = 0; i < 5; i++) {
      clock.advance(IDLE - MINUTE);
      const { session } = await browser.request((s) => s.set('n', i));
      expect(session.isNew).toBe(false);
    }
  });

  it('one millisecond before the idle timeout the session is alive', async () => {
    const { manager, clock } = timed();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    clock.advance(IDLE - 1);
    expect((await browser.request((s) => s.get('a'))).session.get('a')).toBe(1);
  });
});

describe('SM-26: absolute timeout', () => {
  it('the session dies at its deadline despite constant activity; reason absolute', async () => {
    const { manager, clock, events } = timed();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    const start = clock.now();
    while (clock.now() + 10 * MINUTE < start + ABSOLUTE) {
      clock.advance(10 * MINUTE);
      expect((await browser.request((s) => s.set('tick', clock.now()))).session.isNew).toBe(false);
    }
    clock.advance(10 * MINUTE);
    const { session } = await browser.request();
    expect(session.isNew).toBe(true);
    expect(session.endedReason).toBe('absolute');
    expect(events.at(-1)).toMatchObject({ type: 'session_expired', reason: 'absolute' });
  });
});

describe('SM-27/SM-28: the client cannot extend a session', () => {
  it('replaying a cookie captured earlier, after expiry, yields a fresh session and an expiry event', async () => {
    const { manager, clock, events } = timed();
    const victim = new Browser(manager);
    await victim.request((s) => s.login('u'));
    const captured = victim.cookie;
    clock.advance(IDLE + MINUTE);
    const attacker = new Browser(manager);
    attacker.cookie = captured;
    const { session, out } = await attacker.request((s) => s.get('x'));
    expect(session.isNew).toBe(true);
    expect(session.userId).toBeUndefined();
    expect(out.setCookie).toEqual([]);
    expect(events.at(-1)).toMatchObject({ type: 'session_expired', reason: 'idle', userId: 'u' });
    // The record was deleted on detection: a second replay finds nothing at all.
    expect((await attacker.request()).session.isNew).toBe(true);
    expect(events.at(-1)?.type).toBe('session_unknown_id');
  });

  it('after the retention margin the store has dropped the record by itself: still a fresh session', async () => {
    const { manager, store, clock, events } = timed();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    clock.advance(IDLE + RETAIN);
    store.reset();
    const { session, out } = await browser.request((s) => s.get('a'));
    expect(session.isNew).toBe(true);
    expect(session.get('a')).toBeUndefined();
    expect(session.endedReason).toBeUndefined();
    expect(out.setCookie).toEqual([]);
    expect(store.ops()).toEqual(['load']);
    expect(events.at(-1)?.type).toBe('session_unknown_id');
  });

  it('with expiredRetention 0 the record vanishes exactly at expiry', async () => {
    const { manager, store, clock } = timed({ expiredRetention: 0 });
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    expect(store.calls[0]!.ttl).toBe(IDLE);
    clock.advance(IDLE);
    expect(await store.inner.load(browser.key)).toBeNull();
  });
});

describe('SM-29: store TTL', () => {
  it('is the idle window while the deadline is far, then the time left to the deadline (plus retention)', async () => {
    const { manager, store, clock } = timed();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 0));
    const deadline = clock.now() + ABSOLUTE;
    expect(store.calls[0]).toMatchObject({ op: 'create', ttl: IDLE + RETAIN });
    let nearDeadline = 0;
    for (let i = 1; clock.now() + 7 * MINUTE < deadline; i++) {
      clock.advance(7 * MINUTE);
      store.reset();
      await browser.request((s) => s.set('a', i));
      const { ttl } = store.calls.find((c) => c.op === 'commit')!;
      expect(ttl! - RETAIN).toBe(Math.min(IDLE, deadline - clock.now()));
      expect(clock.now() + ttl! - RETAIN).toBeLessThanOrEqual(deadline);
      if (deadline - clock.now() < IDLE) nearDeadline++;
    }
    expect(nearDeadline).toBeGreaterThan(0);
  });

  it('a touch near the deadline gets only the time left', async () => {
    const { manager, store, clock } = timed({ expiredRetention: 0 });
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 0));
    const deadline = clock.now() + ABSOLUTE;
    while (clock.now() + 20 * MINUTE < deadline) {
      clock.advance(20 * MINUTE);
      await browser.request();
    }
    clock.advance(deadline - clock.now() - 1000);
    store.reset();
    await browser.request();
    expect(store.calls.map((c) => [c.op, c.ttl])).toEqual([
      ['load', undefined],
      ['touch', 1000],
    ]);
  });

  it('a request that outlives the deadline deletes the session instead of writing it', async () => {
    const { manager, store, clock } = timed();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 0));
    const key = browser.key;
    const deadline = clock.now() + ABSOLUTE;
    while (clock.now() + 20 * MINUTE < deadline) {
      clock.advance(20 * MINUTE);
      await browser.request();
    }
    clock.advance(deadline - clock.now() - 1);
    store.reset();
    const { out } = await browser.request((s) => {
      clock.advance(5); // a slow handler crosses the deadline
      s.set('late', true);
    });
    expect(store.ops()).toEqual(['load', 'destroy']);
    expect(out.gone).toBe(true);
    expect(out.setCookie).toEqual([expect.stringMatching(/Max-Age=0/)]);
    expect(await store.inner.load(key)).toBeNull();
  });

  it('login restarts the absolute deadline from the moment of authentication', async () => {
    const { manager, store, clock } = timed();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 0));
    clock.advance(20 * MINUTE);
    store.reset();
    await browser.request((s) => s.login(1));
    const login = store.calls.find((c) => c.op === 'commit')!;
    expect(login.delta!.meta!.deadline).toBe(clock.now() + ABSOLUTE);
    expect(login.ttl).toBe(IDLE + RETAIN);
  });

  it('expiredRetention is validated: 0 is allowed, negative or infinite is not', () => {
    expect(() => timed({ expiredRetention: -1 })).toThrow(/expiredRetention must be a finite number/);
    expect(() => timed({ expiredRetention: Number.POSITIVE_INFINITY })).toThrow(/expiredRetention/);
    expect(timed({ expiredRetention: 0 }).manager.options.expiredRetention).toBe(0);
    expect(timed().manager.options.expiredRetention).toBe(5 * MINUTE);
  });
});
