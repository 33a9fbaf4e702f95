import { describe, expect, it } from 'vitest';
import { normaliseAccount } from '../../src/features/login-throttle.js';
import { MemoryStore } from '../../src/index.js';
import { Clock, MINUTE, setup } from '../helpers/session-kit.js';

describe('login throttling (seed 25.2)', () => {
  it('after the account limit, the next attempts are refused with a Retry-After that doubles', async () => {
    const { manager, clock, events } = setup();
    const throttle = manager.loginThrottle({ accountLimit: 5, addressLimit: 1000, baseDelayMs: 1000 });
    for (let i = 0; i < 4; i++) {
      expect(await throttle.check('alice', '203.0.113.1')).toEqual({ allowed: true });
      await throttle.failed('alice', '203.0.113.1');
    }
    expect((await throttle.check('alice', '203.0.113.1')).allowed).toBe(true);
    await throttle.failed('alice', '203.0.113.1'); // the 5th: locked for 1 s
    expect(await throttle.check('alice', '203.0.113.1')).toEqual({
      allowed: false,
      retryAfterMs: 1000,
      reason: 'account',
    });
    clock.advance(1000);
    expect((await throttle.check('alice', '203.0.113.1')).allowed).toBe(true);
    await throttle.failed('alice', '203.0.113.1'); // the 6th: 2 s
    expect(await throttle.check('alice')).toMatchObject({ allowed: false, retryAfterMs: 2000 });
    clock.advance(2000);
    await throttle.failed('alice'); // the 7th: 4 s
    expect(await throttle.check('alice')).toMatchObject({ allowed: false, retryAfterMs: 4000 });
    expect(events.map((e) => e.type)).toContain('authn_login_fail_max');
    expect(events.filter((e) => e.type === 'authn_login_lock').length).toBeGreaterThanOrEqual(3);
    expect(events.find((e) => e.type === 'authn_login_fail_max')).toMatchObject({
      userId: 'alice',
      ip: '203.0.113.1',
    });
  });

  it('the lock never exceeds maxDelayMs, and the window slides', async () => {
    const { manager, clock } = setup();
    const throttle = manager.loginThrottle({ accountLimit: 3, windowMs: 10 * MINUTE, maxDelayMs: 5000 });
    for (let i = 0; i < 20; i++) await throttle.failed('bob');
    expect(await throttle.check('bob')).toMatchObject({ allowed: false, retryAfterMs: 5000 });
    clock.advance(10 * MINUTE + 1);
    // Every failure is now outside the window: one more is the first again, no lock.
    await throttle.failed('bob');
    expect(await throttle.check('bob')).toEqual({ allowed: true });
  });

  it('an unknown account is throttled exactly like a known one (no enumeration)', async () => {
    const { manager } = setup();
    const throttle = manager.loginThrottle({ accountLimit: 2 });
    for (const name of ['alice', 'no-such-user']) {
      await throttle.failed(name);
      await throttle.failed(name);
    }
    expect(await throttle.check('alice')).toEqual(await throttle.check('no-such-user'));
  });

  it('user names are counted case- and space-insensitively', async () => {
    expect(normaliseAccount('  Alice ')).toBe('alice');
    const { manager } = setup();
    const throttle = manager.loginThrottle({ accountLimit: 2 });
    await throttle.failed('Alice');
    await throttle.failed(' alice ');
    expect((await throttle.check('ALICE')).allowed).toBe(false);
  });

  it('one address guessing many accounts is throttled by the address limit', async () => {
    const { manager } = setup();
    const throttle = manager.loginThrottle({ accountLimit: 100, addressLimit: 10 });
    for (let i = 0; i < 10; i++) await throttle.failed(`user-${i}`, '198.51.100.7');
    expect(await throttle.check('someone-else', '198.51.100.7')).toMatchObject({
      allowed: false,
      reason: 'address',
    });
    expect((await throttle.check('someone-else', '198.51.100.8')).allowed).toBe(true);
  });

  it('a successful login forgets the account failures, not the address failures', async () => {
    const { manager } = setup();
    const throttle = manager.loginThrottle({ accountLimit: 3, addressLimit: 3 });
    await throttle.failed('carol', '192.0.2.1');
    await throttle.failed('carol', '192.0.2.1');
    await throttle.succeeded('carol');
    await throttle.failed('carol', '192.0.2.2');
    await throttle.failed('carol', '192.0.2.2');
    expect((await throttle.check('carol')).allowed).toBe(true);
    await throttle.failed('dave', '192.0.2.1'); // the address's third failure
    expect(await throttle.check('erin', '192.0.2.1')).toMatchObject({ allowed: false, reason: 'address' });
  });

  it('50 concurrent failures are all counted (guarded read-modify-write)', async () => {
    const clock = new Clock();
    const store = new MemoryStore({ now: clock.now });
    const a = setup({ store }, clock).manager.loginThrottle({ accountLimit: 50 });
    const b = setup({ store }, clock).manager.loginThrottle({ accountLimit: 50 });
    await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2 ? a : b).failed('frank')));
    // Two managers (two processes sharing the store) see one count: the 50th failure locked it.
    expect(await a.check('frank')).toMatchObject({ allowed: false, retryAfterMs: 1000 });
    expect((await b.check('frank')).allowed).toBe(false);
  });

  it('a store outage is a 503, never a silent pass', async () => {
    const { manager, store } = setup();
    const throttle = manager.loginThrottle();
    store.failing.add('load');
    await expect(throttle.check('alice')).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE', status: 503 });
    await expect(throttle.failed('alice')).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });
  });

  it('refuses nonsense options', () => {
    const { manager } = setup();
    expect(() => manager.loginThrottle({ accountLimit: 0 })).toThrow(
      /accountLimit must be a positive number/,
    );
    expect(() => manager.loginThrottle({ windowMs: Number.NaN })).toThrow(/windowMs/);
  });
});
