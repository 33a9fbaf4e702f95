// "Remember me": session.rememberFor(ms) makes one session's cookie persistent (Max-Age), never
// past the absolute deadline, kept in the record's metadata so that every later cookie of the
// session (ID changes, scheduled renewals, key rotation) carries what is left of it.
import { describe, expect, it } from 'vitest';
import { SessionError, type SessionManagerOptions } from '../../src/index.js';
import {
  Browser,
  HOUR,
  MINUTE,
  realStores,
  SECRET,
  SECRET_2,
  type StoreFactory,
  setup,
  setupOver,
} from '../helpers/session-kit.js';

const DAY = 24 * HOUR;
const stores = realStores();

/** Max-Age of a Set-Cookie in seconds; undefined for a browser-session cookie. */
function maxAgeOf(setCookie: string | undefined): number | undefined {
  expect(setCookie, 'no session cookie was sent').toBeDefined();
  const m = /;\s*Max-Age=(-?\d+)/i.exec(setCookie!);
  return m ? Number(m[1]) : undefined;
}

async function kitOver(factory: StoreFactory, options: Partial<SessionManagerOptions> = {}) {
  const kit = await setupOver(factory, { absoluteTimeout: 12 * HOUR, idleTimeout: HOUR, ...options });
  return { ...kit, browser: new Browser(kit.manager) };
}

describe.each(stores)('remember me over %s', (_name, factory) => {
  it('login + rememberFor: a persistent cookie for that session only, the end kept in the metadata', async () => {
    const { manager, store, clock, browser } = await kitOver(factory);
    const { setCookie } = await browser.request(async (s) => {
      await s.login(7);
      s.rememberFor(2 * HOUR);
    });
    expect(maxAgeOf(setCookie)).toBe(2 * 3600);
    expect((await store.inner.load(browser.key))?.meta.persistUntil).toBe(clock.now() + 2 * HOUR);

    // Another user's session is untouched: a browser-session cookie.
    const other = new Browser(manager);
    const plain = await other.request((s) => s.login(8));
    expect(maxAgeOf(plain.setCookie)).toBeUndefined();
  });

  it('never past the absolute deadline, however long the lifetime asked for', async () => {
    const { clock, browser } = await kitOver(factory);
    const first = await browser.request(async (s) => {
      await s.login(7);
      s.rememberFor(30 * DAY);
    });
    expect(maxAgeOf(first.setCookie)).toBe(12 * 3600);
    // Six visits 50 minutes apart keep the idle timer (1 hour) alive for 5 hours.
    for (let i = 0; i < 6; i++) {
      clock.advance(50 * MINUTE);
      await browser.request();
    }
    const rotated = await browser.request((s) => s.regenerateId());
    expect(maxAgeOf(rotated.setCookie)).toBe(7 * 3600);
  });

  it('persists across requests: an ID change later re-issues the cookie with the remaining lifetime', async () => {
    const { clock, browser } = await kitOver(factory);
    await browser.request(async (s) => {
      await s.login(7);
      s.rememberFor(2 * HOUR);
    });
    clock.advance(20 * MINUTE);
    const plain = await browser.request((s) => s.set('theme', 'dark'));
    expect(plain.setCookie).toBeUndefined(); // a fixed end: nothing to re-send on a write
    clock.advance(10 * MINUTE);
    const rotated = await browser.request((s) => s.regenerateId());
    expect(maxAgeOf(rotated.setCookie)).toBe(2 * 3600 - 30 * 60);
    clock.advance(MINUTE);
    const reauth = await browser.request((s) => s.reauthenticate());
    expect(maxAgeOf(reauth.setCookie)).toBe(2 * 3600 - 31 * 60);
  });

  it('scheduled renewal re-issues it with the remaining lifetime', async () => {
    const { clock, browser } = await kitOver(factory, { renewal: { interval: 15 * MINUTE, grace: 10_000 } });
    await browser.request(async (s) => {
      await s.login(7);
      s.rememberFor(3 * HOUR);
    });
    clock.advance(16 * MINUTE);
    const renewed = await browser.request();
    expect(maxAgeOf(renewed.setCookie)).toBe(3 * 3600 - 16 * 60);
  });

  it('once the lifetime has passed, a live session gets a browser-session cookie, not Max-Age=0', async () => {
    const { clock, browser } = await kitOver(factory);
    await browser.request(async (s) => {
      await s.login(7);
      s.rememberFor(30 * MINUTE);
    });
    clock.advance(40 * MINUTE);
    const rotated = await browser.request((s) => s.regenerateId());
    expect(maxAgeOf(rotated.setCookie)).toBeUndefined();
    expect(browser.cookie).toBeDefined();
    const next = await browser.request((s) => s.userId);
    expect(next.session.userId).toBe('7');
  });

  it('on a stored session outside login it changes the ID (guarded), and the old cookie stops working', async () => {
    const { manager, browser } = await kitOver(factory);
    await browser.request((s) => s.login(7));
    const old = new Browser(manager);
    old.cookie = browser.cookie;
    const { setCookie } = await browser.request((s) => s.rememberFor(HOUR));
    expect(maxAgeOf(setCookie)).toBe(3600);
    expect((await old.request()).session.userId).toBeUndefined();
    expect((await browser.request()).session.userId).toBe('7');
  });

  it('rememberFor(false) makes it a browser-session cookie again, and the metadata forgets it', async () => {
    const { store, browser } = await kitOver(factory);
    await browser.request(async (s) => {
      await s.login(7);
      s.rememberFor(HOUR);
    });
    const { setCookie } = await browser.request((s) => s.rememberFor(false));
    expect(maxAgeOf(setCookie)).toBeUndefined();
    expect((await store.inner.load(browser.key))?.meta.persistUntil).toBeUndefined();
    // Nothing to change, nothing written.
    store.reset();
    await browser.request((s) => s.rememberFor(false));
    expect(store.count('commit')).toBe(0);
  });

  it('logout forgets it with the session', async () => {
    const { browser } = await kitOver(factory);
    await browser.request(async (s) => {
      await s.login(7);
      s.rememberFor(HOUR);
    });
    await browser.request((s) => s.logout());
    expect(browser.cookie).toBeUndefined();
    const again = await browser.request((s) => s.login(7));
    expect(maxAgeOf(again.setCookie)).toBeUndefined();
  });
});

describe('remember me: the rest of the rules', () => {
  it('overrides cookie.maxAge for that session only', async () => {
    const { manager } = setup({ cookie: { maxAge: 10 * MINUTE }, absoluteTimeout: 12 * HOUR });
    const remembered = new Browser(manager);
    const a = await remembered.request(async (s) => {
      await s.login(1);
      s.rememberFor(6 * HOUR);
    });
    expect(maxAgeOf(a.setCookie)).toBe(6 * 3600);
    const other = new Browser(manager);
    const b = await other.request((s) => s.login(2));
    expect(maxAgeOf(b.setCookie)).toBe(600);
  });

  it('key rotation re-issues the cookie with the remaining lifetime', async () => {
    const first = setup({ absoluteTimeout: 12 * HOUR });
    const browser = new Browser(first.manager);
    await browser.request(async (s) => {
      await s.login(7);
      s.rememberFor(2 * HOUR);
    });
    first.clock.advance(15 * MINUTE);
    const rotated = setup(
      { secret: undefined, secrets: [SECRET_2, SECRET], store: first.store.inner },
      first.clock,
    );
    browser.manager = rotated.manager;
    const { setCookie } = await browser.request();
    expect(maxAgeOf(setCookie)).toBe(2 * 3600 - 15 * 60);
  });

  it('with encryption on, the metadata still verifies', async () => {
    const { manager, clock } = setup({ encrypt: true });
    const browser = new Browser(manager);
    await browser.request(async (s) => {
      await s.login(7);
      s.rememberFor(HOUR);
    });
    clock.advance(MINUTE);
    const again = await browser.request((s) => s.regenerateId());
    expect(maxAgeOf(again.setCookie)).toBe(3600 - 60);
    expect((await browser.request()).session.userId).toBe('7');
  });

  it('a visitor can be remembered too: the session is stored with its lifetime', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    const { setCookie } = await browser.request((s) => s.rememberFor(HOUR));
    expect(maxAgeOf(setCookie)).toBe(3600);
  });

  it.each([0, -1, Number.NaN, Number.POSITIVE_INFINITY, '1000' as unknown as number])(
    'refuses %s: only a positive, finite number of milliseconds or false',
    async (ms) => {
      const { manager } = setup();
      const browser = new Browser(manager);
      await browser.request((s) => {
        expect(() => s.rememberFor(ms)).toThrow(SessionError);
        expect(() => s.rememberFor(ms)).toThrow(/positive, finite number of milliseconds or false/);
      });
    },
  );
});
