import { describe, expect, it } from 'vitest';
import { MemoryStore, type SessionError } from '../../src/index.js';
import { Browser, cookiePair, MINUTE, setup } from '../helpers/session-kit.js';

/** Issue 8.1: a visitor who is only shown a form costs nothing in the store. */
describe('anonymous visitors cost nothing in the store', () => {
  it('1,000 visitors shown a CSRF-protected form create no record, each gets a pre-session cookie', async () => {
    const { manager, store } = setup();
    const tokens = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const browser = new Browser(manager);
      const { out } = await browser.request((s) => tokens.add(s.csrf.token()));
      expect(out.setCookie.map((c) => cookiePair(c).name)).toEqual(['__Host-id-pre']);
      expect(out.setCookie[0]).toMatch(/; HttpOnly; Secure; SameSite=Lax$/);
      expect(browser.cookie).toBeUndefined();
    }
    expect(tokens.size).toBe(1000);
    expect(store.ops()).toEqual([]);
    expect((store.inner as MemoryStore).size).toBe(0);
  });

  it('the form token verifies on the next request, for that visitor only, and the token is stable', async () => {
    const { manager, store } = setup();
    const visitor = new Browser(manager);
    let token = '';
    await visitor.request((s) => {
      token = s.csrf.token();
    });
    await visitor.request((s) => {
      expect(s.csrf.token()).toBe(token); // same pre-session cookie, same token
      expect(s.csrf.verify(token)).toBe(true);
      expect(s.csrf.verify(`${token}x`)).toBe(false);
      expect(s.csrf.verify(token.slice(0, -1))).toBe(false);
    });
    const other = new Browser(manager);
    await other.request((s) => s.csrf.token());
    await other.request((s) => expect(s.csrf.verify(token)).toBe(false));
    const cookieless = new Browser(manager);
    await cookieless.request((s) => expect(s.csrf.verify(token)).toBe(false));
    expect(store.ops()).toEqual([]);
  });

  it('a forged pre-session cookie is ignored (new nonce, no store access)', async () => {
    const { manager, store } = setup();
    const visitor = new Browser(manager);
    visitor.pre = 'A'.repeat(43); // unsigned
    let token = '';
    const { out } = await visitor.request((s) => {
      token = s.csrf.token();
    });
    expect(out.setCookie.map((c) => cookiePair(c).name)).toEqual(['__Host-id-pre']);
    expect(visitor.pre).not.toBe('A'.repeat(43));
    await visitor.request((s) => expect(s.csrf.verify(token)).toBe(true));
    expect(store.ops()).toEqual([]);
  });

  it('login stores the session and rotates the CSRF token: the pre-session cookie is expired', async () => {
    const { manager, store } = setup();
    const visitor = new Browser(manager);
    let formToken = '';
    await visitor.request((s) => {
      formToken = s.csrf.token();
    });
    const { out } = await visitor.request(async (s) => {
      expect(s.csrf.verify(formToken)).toBe(true);
      await s.login('alice');
    });
    expect(store.ops()).toEqual(['create']);
    const cookies = out.setCookie.map(cookiePair);
    expect(cookies.find((c) => c.name === '__Host-id-pre')?.cleared).toBe(true);
    expect(visitor.pre).toBeUndefined();
    await visitor.request((s) => {
      expect(s.userId).toBe('alice');
      expect(s.csrf.verify(formToken)).toBe(false);
      expect(s.csrf.token()).not.toBe(formToken);
    });
  });

  it('a form shown before the session was stored still verifies after an anonymous write (a failed login)', async () => {
    const { manager } = setup();
    const visitor = new Browser(manager);
    let formToken = '';
    await visitor.request((s) => {
      formToken = s.csrf.token();
    });
    await visitor.request((s) => s.flash.error('Wrong password')); // stores the session
    expect(visitor.cookie).toBeDefined();
    await visitor.request((s) => expect(s.csrf.verify(formToken)).toBe(true));
  });

  it('over plain HTTP with a Secure cookie, no pre-session cookie is sent (and a warning says why)', async () => {
    const { manager, warnings } = setup();
    const visitor = new Browser(manager);
    visitor.info = { ...visitor.info, secure: false };
    const { out } = await visitor.request((s) => s.csrf.token());
    expect(out.setCookie).toEqual([]);
    expect(warnings.join('\n')).toMatch(/plain-HTTP/);
  });
});

describe('anonymousIdleTimeout', () => {
  it('a session without a user idles out after anonymousIdleTimeout, a signed-in one after idleTimeout', async () => {
    const { manager, clock } = setup({ idleTimeout: 30 * MINUTE, anonymousIdleTimeout: 10 * MINUTE });
    const visitor = new Browser(manager);
    const user = new Browser(manager);
    await visitor.request((s) => s.set('cart', ['book']));
    await user.request((s) => s.login('alice'));
    clock.advance(10 * MINUTE);
    const v = await visitor.request();
    expect(v.session.isNew).toBe(true);
    expect(v.session.endedReason).toBe('idle');
    expect((await user.request()).session.userId).toBe('alice');
  });

  it('defaults to the smaller of idleTimeout and 15 minutes; longer than idleTimeout is refused', () => {
    expect(setup().manager.options.anonymousIdleTimeout).toBe(15 * MINUTE);
    expect(setup({ idleTimeout: 5 * MINUTE }).manager.options.anonymousIdleTimeout).toBe(5 * MINUTE);
    expect(() => setup({ idleTimeout: 5 * MINUTE, anonymousIdleTimeout: 6 * MINUTE })).toThrow(
      /anonymousIdleTimeout cannot be longer than idleTimeout/,
    );
  });
});

describe('MemoryStore never evicts a signed-in session for a visitor', () => {
  it('10,050 writing visitors on a 100-entry store: the 10 signed-in users stay signed in', async () => {
    const { manager } = setup({ store: new MemoryStore({ maxEntries: 100 }) });
    const users = Array.from({ length: 10 }, () => new Browser(manager));
    for (const [i, u] of users.entries()) await u.request((s) => s.login(`user-${i}`));
    for (let i = 0; i < 10_050; i++) await new Browser(manager).request((s) => s.set('cart', [i]));
    for (const [i, u] of users.entries()) expect((await u.request()).session.userId).toBe(`user-${i}`);
  });

  it('when only signed-in sessions are left, a visitor is refused (503), never a user evicted', async () => {
    const store = new MemoryStore({ maxEntries: 3 });
    const { manager } = setup({ store });
    const users = Array.from({ length: 3 }, () => new Browser(manager));
    for (const [i, u] of users.entries()) await u.request((s) => s.login(`user-${i}`));
    const visitor = new Browser(manager);
    const refused = await visitor.request((s) => s.set('cart', [1])).catch((e: SessionError) => e);
    expect(refused).toMatchObject({ code: 'STORE_UNAVAILABLE', status: 503 });
    for (const [i, u] of users.entries()) expect((await u.request()).session.userId).toBe(`user-${i}`);
    // A fourth user does get in: signed-in sessions make room for each other (least recently used).
    await new Browser(manager).request((s) => s.login('user-3'));
    expect(store.size).toBe(3);
  });

  it('the default cap is 100,000 entries', () => {
    expect(new MemoryStore().maxEntries).toBe(100_000);
    expect(new MemoryStore({ maxEntries: 5 }).maxEntries).toBe(5);
  });
});

describe('sessionCreationLimit (optional per-client limit on stored sessions)', () => {
  it('beyond perClient new sessions per window from one address: 429 TOO_MANY_SESSIONS, reported once', async () => {
    const { manager, clock, events } = setup({ sessionCreationLimit: { perClient: 3, windowMs: MINUTE } });
    const from = (ip: string) => {
      const b = new Browser(manager);
      b.info = { ...b.info, ip };
      return b;
    };
    for (let i = 0; i < 3; i++) await from('192.0.2.9').request((s) => s.set('cart', [i]));
    for (let i = 0; i < 2; i++) {
      const refused = await from('192.0.2.9')
        .request((s) => s.set('cart', [i]))
        .catch((e: SessionError) => e);
      expect(refused).toMatchObject({ code: 'TOO_MANY_SESSIONS', status: 429 });
    }
    expect(
      events.filter((e) => e.type === 'suspicious' && e.reason === 'session-creation-rate'),
    ).toHaveLength(1);
    // Another address is not affected; the window passes.
    await from('192.0.2.10').request((s) => s.set('cart', [1]));
    clock.advance(MINUTE);
    await from('192.0.2.9').request((s) => s.set('cart', [1]));
    // Shown a form only: nothing stored, nothing counted.
    for (let i = 0; i < 10; i++) await from('192.0.2.11').request((s) => s.csrf.token());
    await from('192.0.2.11').request((s) => s.set('cart', [1]));
  });

  it('is off by default and refuses nonsense', () => {
    expect(setup().manager.options.sessionCreationLimit).toBe(false);
    expect(() => setup({ sessionCreationLimit: { perClient: 0 } })).toThrow(
      /perClient must be a positive integer/,
    );
  });
});
