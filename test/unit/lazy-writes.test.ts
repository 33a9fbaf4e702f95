import { describe, expect, it } from 'vitest';
import { newToken } from '../../src/crypto/ids.js';
import { KeyRing } from '../../src/crypto/keyring.js';
import type { MemoryStore } from '../../src/index.js';
import { Browser, cookiePair, HOUR, MINUTE, SECRET, setup } from '../helpers/session-kit.js';

describe('SM-59: lazy writes', () => {
  it('a visitor who only reads gets no cookie and costs no store call at all', async () => {
    const { manager, store } = setup();
    const { out, session } = await new Browser(manager).request((s) => {
      s.get('cart');
      s.has('user');
      s.keys();
      s.bag('auth').get('id');
      s.flash.messages();
      s.flash.output();
      s.csrf.verify('guess');
      s.remove('never-set');
      void s.id;
    });
    expect(out.setCookie).toEqual([]);
    expect(store.calls).toEqual([]);
    expect(session.isNew).toBe(true);
  });

  it('a new visitor whose session is written costs exactly one store call: the create', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('cart', ['apple']));
    expect(store.ops()).toEqual(['create']);
    store.reset();
    // Signed in at once (a login form posted without a prior session): still one call.
    await new Browser(manager).request(async (s) => {
      await s.login('alice');
      s.set('cart', ['pear']);
    });
    expect(store.ops()).toEqual(['create']);
  });

  it('SM-12: 1,000 forged and 1,000 unknown-but-signed cookies create no record', async () => {
    const { manager, store } = setup();
    const ring = new KeyRing([SECRET]);
    for (let i = 0; i < 1000; i++) {
      for (const cookie of [newToken(), ring.sign('__Host-id', `${newToken()}.${newToken()}`)]) {
        const browser = new Browser(manager);
        browser.cookie = cookie;
        await browser.request((s) => s.logout());
      }
    }
    expect(store.count('load')).toBe(1000); // only the signed ones reach the store
    expect(store.ops().filter((op) => op !== 'load')).toEqual([]);
    expect((store.inner as MemoryStore).size).toBe(0);
  });

  it('read-only requests on a session write nothing until touchInterval passed, then exactly one touch', async () => {
    const { manager, store, clock } = setup({
      idleTimeout: 30 * MINUTE,
      anonymousIdleTimeout: 30 * MINUTE,
      touchInterval: 5 * MINUTE,
    });
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    store.reset();
    for (let i = 0; i < 10; i++) {
      clock.advance(20_000); // 10 × 20 s = 200 s < 5 min
      const { out } = await browser.request((s) => s.get('a'));
      expect(out.setCookie).toEqual([]);
    }
    expect(store.ops()).toEqual(Array(10).fill('load'));

    store.reset();
    clock.advance(100_000); // now 300 s since the write
    await browser.request((s) => s.get('a'));
    expect(store.ops()).toEqual(['load', 'touch']);
    expect(store.calls[1]!.ttl).toBe(30 * MINUTE + manager.options.expiredRetention);

    store.reset();
    clock.advance(MINUTE);
    await browser.request((s) => s.get('a'));
    expect(store.ops()).toEqual(['load']);
  });

  it('a touch extends the idle window: the session survives well past one idle timeout of reads', async () => {
    const { manager, clock } = setup({ idleTimeout: 30 * MINUTE });
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    for (let i = 0; i < 6; i++) {
      clock.advance(10 * MINUTE);
      const { session } = await browser.request((s) => s.get('a'));
      expect(session.isNew).toBe(false);
    }
  });

  it('a write sends exactly one commit holding only what changed, and no new cookie', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1).set('b', 2).set('c', 3));
    const cookie = browser.cookie;
    store.reset();
    const { out } = await browser.request((s) => {
      s.set('a', 1); // unchanged: not written
      s.set('b', 20);
      s.remove('c');
      s.remove('missing');
    });
    expect(store.ops()).toEqual(['load', 'commit']);
    const delta = store.calls[1]!.delta!;
    expect(Object.keys(delta.set)).toEqual(['v:b']);
    expect(delta.unset).toEqual(['v:c']);
    expect(out.setCookie).toEqual([]);
    expect(browser.cookie).toBe(cookie);
  });

  it('setting values equal to the stored ones, or asking for the existing CSRF token, writes nothing', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => {
      s.set('cart', ['a', 'b']);
      s.csrf.token();
    });
    store.reset();
    await browser.request((s) => {
      s.set('cart', ['a', 'b']);
      s.csrf.token();
    });
    expect(store.ops()).toEqual(['load']);
  });

  it('with a persistent cookie, a write re-sends it with the remaining lifetime (rolling)', async () => {
    const { manager, clock } = setup({ cookie: { maxAge: 2 * HOUR } });
    const browser = new Browser(manager);
    const first = await browser.request((s) => s.set('a', 1));
    expect(first.setCookie).toMatch(/Max-Age=7200/);
    clock.advance(MINUTE);
    expect((await browser.request((s) => s.get('a'))).setCookie).toBeUndefined();
    const written = await browser.request((s) => s.set('a', 2));
    expect(written.setCookie).toMatch(/Max-Age=7200/);
  });
});

describe('SM-58: concurrent requests on one session', () => {
  it('20 requests loaded together, each setting its own key, all survive', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('base', 0));
    const req = { secure: true, cookieHeader: browser.cookieHeader };
    const sessions = await Promise.all(Array.from({ length: 20 }, () => manager.load(req)));
    sessions.forEach((s, i) => {
      s.bag('cart').set(`item${i}`, i);
    });
    await Promise.all(sessions.map((s) => manager.commit(s, req)));
    await browser.request((s) => {
      expect(s.bag('cart').keys()).toHaveLength(20);
      expect(s.get('base')).toBe(0);
    });
  });

  it('SM-35: a request that loaded before logout cannot write the session back', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.login(1));
    const req = { secure: true, cookieHeader: browser.cookieHeader };
    const slow = await manager.load(req);
    await browser.request((s) => s.logout());
    slow.set('late', 'write');
    const out = await manager.commit(slow, req);
    expect(out.gone).toBe(true);
    expect(out.setCookie.map((c) => cookiePair(c).cleared)).toEqual([true]);
    const replay = await manager.load(req);
    expect(replay.isNew).toBe(true);
    expect(store.ops().filter((o) => o === 'create')).toHaveLength(1);
  });

  it('SM-35: a request that regenerates a session logged out meanwhile does not bring it back under a new ID', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.login('alice'));
    const req = { secure: true, cookieHeader: browser.cookieHeader };
    const slow = await manager.load(req); // e.g. POST /elevate, still running
    await browser.request((s) => s.logout());
    await slow.regenerateId();
    slow.set('elevated', true);
    const out = await manager.commit(slow, req);
    expect(out.gone).toBe(true);
    expect(out.setCookie.map((c) => cookiePair(c).cleared)).toEqual([true]);
    expect(await manager.sessionsOf('alice')).toEqual([]);
    expect(store.count('create')).toBe(1); // only the login's
  });

  it('SM-35: a reauthentication in flight when the user logs out does not sign them in again', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.login('alice'));
    const req = { secure: true, cookieHeader: browser.cookieHeader };
    const slow = await manager.load(req); // POST /reauth, password being checked
    await browser.request((s) => s.logout());
    await slow.reauthenticate();
    const out = await manager.commit(slow, req);
    expect(out.gone).toBe(true);
    expect(out.setCookie.map((c) => cookiePair(c).cleared)).toEqual([true]);
    expect(await manager.sessionsOf('alice')).toEqual([]);
  });

  it('a double-submitted login form: one login wins, the other fails closed, one live record', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.flash.notice('Please log in'));
    const req = { secure: true, cookieHeader: browser.cookieHeader };
    const [first, second] = [await manager.load(req), await manager.load(req)];
    await first.login('alice');
    const won = await manager.commit(first, req);
    await second.login('alice');
    const lost = await manager.commit(second, req);
    expect(won.gone).toBe(false);
    expect(won.setCookie.map((c) => cookiePair(c).cleared)).toEqual([false]);
    expect(lost.gone).toBe(true);
    expect(lost.setCookie.map((c) => cookiePair(c).cleared)).toEqual([true]);
    expect((await manager.sessionsOf('alice')).map((s) => s.key)).toEqual([first.id]);
  });
});
