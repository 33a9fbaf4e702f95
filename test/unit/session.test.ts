import { describe, expect, it } from 'vitest';
import { FileStore, MemoryStore, type SessionStore } from '../../src/index.js';
import { Browser, MINUTE, setup, tempDir } from '../helpers/session-kit.js';

describe('values (seed §4-6)', () => {
  it('set, get with and without a fallback, has, remove, keys; values persist across requests', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => {
      expect(s.get('user_id')).toBeUndefined();
      expect(s.get('theme', 'light')).toBe('light');
      s.set('user_id', 42).set('cart', ['item1', 'item2']).set('nothing', null);
      expect(s.has('user_id')).toBe(true);
    });
    await browser.request((s) => {
      expect(s.get('user_id')).toBe(42);
      expect(s.get('nothing', 'fallback')).toBeNull(); // null is a value, not an absence
      const cart = s.get('cart') as string[];
      cart.push('item3');
      s.set('cart', cart);
      s.remove('user_id');
      expect(s.has('user_id')).toBe(false);
      expect(s.keys().sort()).toEqual(['cart', 'nothing']);
    });
    await browser.request((s) => {
      expect(s.get('cart')).toEqual(['item1', 'item2', 'item3']);
      expect(s.has('user_id')).toBe(false);
      expect(s.get('user_id', 0)).toBe(0);
    });
  });

  it('a value read from the session is a copy: mutating it without set() changes nothing', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('cart', ['a']));
    store.reset();
    await browser.request((s) => {
      (s.get('cart') as string[]).push('b');
    });
    expect(store.count('commit')).toBe(0);
    await browser.request((s) => expect(s.get('cart')).toEqual(['a']));
  });

  it('typed sessions: get and set are checked against the declared shape', async () => {
    const { manager } = setup<{ user_id: number; cart: string[] }>();
    const browser = new Browser(manager);
    await browser.request((s) => {
      s.set('user_id', 42);
      const id: number = s.get('user_id', 0);
      const cart: string[] | undefined = s.get('cart');
      expect([id, cart]).toEqual([42, undefined]);
      // @ts-expect-error user_id is a number
      s.set('user_id', 'forty-two');
      // @ts-expect-error 'nope' is not a declared key
      s.get('nope');
    });
  });

  const unserialisable: [string, unknown, RegExp][] = [
    ['a function', () => 1, /a function/],
    ['a BigInt', 10n, /BigInt \(store it as a string\)/],
    ['a Date', new Date(0), /date\.getTime\(\)/],
    ['a Map', new Map([['a', 1]]), /Map or Set \(store an array or a plain object\)/],
    ['a class instance', new (class User {})(), /instance of User/],
    ['NaN', Number.NaN, /NaN/],
    ['Infinity', Number.POSITIVE_INFINITY, /Infinity/],
    ['undefined', undefined, /use remove\(\)/],
    ['a symbol', Symbol('s'), /a symbol/],
    ['a nested function', { profile: { save: () => 1 } }, /at profile\.profile\.save is a function/],
    ['undefined inside an array', [1, undefined], /at profile\[1\]/],
  ];

  it.each(unserialisable)(
    'set() refuses %s with NOT_SERIALIZABLE, naming the path and the fix',
    async (_l, value, msg) => {
      const { manager } = setup();
      const browser = new Browser(manager);
      await browser.request((s) => {
        s.set('profile', 'before');
        let error: unknown;
        try {
          s.set('profile', value);
        } catch (err) {
          error = err;
        }
        expect(error).toMatchObject({ name: 'SessionError', code: 'NOT_SERIALIZABLE' });
        expect((error as Error).message).toMatch(msg);
        expect(s.get('profile')).toBe('before');
      });
    },
  );

  it('set() refuses a cycle', async () => {
    const { manager } = setup();
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = cyclic;
    await new Browser(manager).request((s) => {
      expect(() => s.set('c', cyclic)).toThrow(/contains a cycle/);
    });
  });

  it('a shared (non-cyclic) reference is fine', async () => {
    const { manager } = setup();
    const shared = { n: 1 };
    await new Browser(manager).request((s) => {
      s.set('pair', [shared, shared]);
      expect(s.get('pair')).toEqual([{ n: 1 }, { n: 1 }]);
    });
  });

  it('the session size is bounded: a value over maxSize is refused at set()', async () => {
    const { manager } = setup({ maxSize: 1000 });
    await new Browser(manager).request((s) => {
      s.set('small', 'x');
      expect(() => s.set('big', 'x'.repeat(2000))).toThrow(
        expect.objectContaining({ code: 'VALUE_TOO_LARGE', message: expect.stringMatching(/maxSize/) }),
      );
      expect(s.has('big')).toBe(false);
    });
  });
});

describe('bags (seed §15)', () => {
  it('bag keys never collide with top-level keys, other bags, or internal flash/CSRF data', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    let token = '';
    await browser.request((s) => {
      s.set('id', 'top');
      s.set('flash', 'top-flash');
      s.set('csrf', 'top-csrf');
      s.bag('auth').set('id', 'auth');
      s.bag('cart').set('id', 'cart');
      s.bag('auth').set('flash', 'auth-flash');
      s.flash.success('hello');
      token = s.csrf.token();
    });
    await browser.request((s) => {
      expect(s.get('id')).toBe('top');
      expect(s.get('flash')).toBe('top-flash');
      expect(s.get('csrf')).toBe('top-csrf');
      expect(s.bag('auth').get('id')).toBe('auth');
      expect(s.bag('cart').get('id')).toBe('cart');
      expect(s.keys().sort()).toEqual(['csrf', 'flash', 'id']);
      expect(s.bag('auth').keys().sort()).toEqual(['flash', 'id']);
      expect(s.bag('auth').all()).toEqual(
        Object.assign(Object.create(null), { id: 'auth', flash: 'auth-flash' }),
      );
      expect(s.flash.messages('success')).toEqual(['hello']);
      expect(s.csrf.verify(token)).toBe(true);
      s.bag('auth').clear();
    });
    await browser.request((s) => {
      expect(s.bag('auth').keys()).toEqual([]);
      expect(s.bag('cart').get('id')).toBe('cart');
      expect(s.get('id')).toBe('top');
      expect(s.csrf.verify(token)).toBe(true);
    });
  });

  it('bag names that could overlap another namespace are refused', async () => {
    const { manager } = setup();
    await new Browser(manager).request((s) => {
      for (const name of ['a:b', '', 'x'.repeat(65), 'white space', 'b:auth']) {
        expect(() => s.bag(name), name).toThrow(TypeError);
      }
    });
  });
});

describe('SM-52: reserved and prototype keys are plain data', () => {
  const hostile = [
    '__proto__',
    'constructor',
    'prototype',
    'hasOwnProperty',
    'id',
    'cookie',
    'expires',
    '__ts',
  ];
  const stores: [string, () => Promise<{ store: SessionStore; cleanup?: () => Promise<void> }>][] = [
    ['MemoryStore', async () => ({ store: new MemoryStore() })],
    [
      'FileStore',
      async () => {
        const { dir, cleanup } = await tempDir();
        return { store: new FileStore({ dir, fsync: false }), cleanup };
      },
    ],
  ];

  it.each(stores)(
    'round-trip through a real %s leaves the id, expiry and Object.prototype alone',
    async (_n, make) => {
      const { store: real, cleanup } = await make();
      const { manager, clock } = setup({ store: real });
      const browser = new Browser(manager);
      const { session: first } = await browser.request((s) => {
        for (const k of hostile) {
          s.set(k, { polluted: k });
          s.bag(k === '__proto__' ? '__proto__' : 'auth').set(k, { polluted: `bag-${k}` });
        }
      });
      const id = first.id;
      const cookie = browser.cookie;
      const deadline = (await real.load(id))!.meta.deadline;
      clock.advance(MINUTE);
      const { session } = await browser.request((s) => {
        for (const k of hostile) {
          expect(s.get(k)).toEqual({ polluted: k });
          expect(s.bag(k === '__proto__' ? '__proto__' : 'auth').get(k)).toEqual({ polluted: `bag-${k}` });
        }
        expect(s.keys().sort()).toEqual([...hostile].sort());
      });
      expect(session.id).toBe(id);
      expect(browser.cookie).toBe(cookie);
      const stored = (await real.load(id))!;
      expect(stored.meta.deadline).toBe(deadline);
      expect(Object.keys(stored.meta).sort()).toEqual(['createdAt', 'deadline', 'h', 'idAt', 'lastSeenAt']);
      expect(({} as Record<string, unknown>).polluted).toBeUndefined();
      expect(Object.getPrototypeOf({})).toBe(Object.prototype);
      expect(typeof Object.prototype.hasOwnProperty).toBe('function');
      await cleanup?.();
    },
  );
});

describe('regenerateId (seed §7, §11)', () => {
  it('SM-19/SM-23: new ID, data kept, the old ID is dead after the commit', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('cart', ['a']));
    const oldCookie = browser.cookie!;
    const oldKey = browser.key;
    const { session } = await browser.request(async (s) => {
      await s.regenerateId();
      s.set('more', 1);
    });
    expect(browser.cookie).not.toBe(oldCookie);
    // The record keeps its id; the secret that opens it changed.
    expect(session.id).toBe(oldKey);
    expect(session.id).toBe(browser.key);
    expect((await store.inner.load(oldKey))!.meta.ph).toBeDefined();
    await browser.request((s) => expect([s.get('cart'), s.get('more')]).toEqual([['a'], 1]));

    const replay = new Browser(manager);
    replay.cookie = oldCookie;
    const { session: replayed } = await replay.request();
    expect(replayed.isNew).toBe(true);
    expect(replayed.get('cart')).toBeUndefined();
  });

  it('SM-58: regenerate + save is one guarded commit of the record', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    store.reset();
    await browser.request(async (s) => {
      await s.regenerateId();
      s.set('b', 2);
      await s.regenerateId(); // twice in one request still writes once
      s.set('c', 3);
    });
    // One commit, guarded by the handle the request loaded: atomic with any logout (SM-35).
    expect(store.ops()).toEqual(['load', 'commit']);
    expect(store.calls[1]!.delta!.set).toHaveProperty(['v:c']);
    expect(store.calls[1]!.guard!.handle).toBeDefined();
  });

  it('SM-22: the CSRF token is rotated; the old one no longer verifies', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    let before = '';
    let after = '';
    await browser.request((s) => {
      before = s.csrf.token();
    });
    await browser.request(async (s) => {
      await s.regenerateId();
      after = s.csrf.token();
    });
    expect(after).not.toBe(before);
    await browser.request((s) => {
      expect(s.csrf.verify(before)).toBe(false);
      expect(s.csrf.verify(after)).toBe(true);
    });
  });

  it('on a brand-new session it only changes the token that will be issued', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request(async (s) => {
      await s.regenerateId();
      s.set('a', 1);
    });
    expect(store.ops()).toEqual(['create']);
  });
});

describe('destroy and logout (seed §6.2, §21)', () => {
  it('deletes the record at once, expires the cookie, and is reported', async () => {
    const { manager, store, events } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.login(7));
    const key = browser.key;
    const { out, session } = await browser.request(async (s) => {
      await s.logout();
      expect(await store.inner.load(key)).toBeNull(); // gone before the response is even sent
    });
    expect(session.status).toBe('destroyed');
    expect(out.setCookie).toHaveLength(1);
    expect(out.setCookie[0]).toMatch(
      /^__Host-id=; Max-Age=0; Path=\/; Expires=Thu, 01 Jan 1970 00:00:00 GMT;/,
    );
    expect(out.clearSiteData).toBe('"cache"');
    expect(browser.cookie).toBeUndefined();
    expect(events.map((e) => e.type)).toContain('session_logout');
  });

  it('writes after destroy create a new session with a new ID; the old one stays dead', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('secret', 'old'));
    const oldCookie = browser.cookie!;
    const oldKey = browser.key;
    const { out } = await browser.request(async (s) => {
      await s.destroy();
      expect(s.get('secret')).toBeUndefined();
      s.flash.notice('You have been logged out.');
    });
    expect(out.setCookie).toHaveLength(1);
    expect(browser.cookie).toBeDefined();
    expect(browser.cookie).not.toBe(oldCookie);
    expect(browser.key).not.toBe(oldKey);
    expect(await store.inner.load(oldKey)).toBeNull();
    await browser.request((s) => {
      expect(s.get('secret')).toBeUndefined();
      expect(s.flash.messages('notice')).toEqual(['You have been logged out.']);
    });
  });

  it('SM-34: logout without a session touches no store and sets no cookie', async () => {
    const { manager, store } = setup();
    const { out } = await new Browser(manager).request((s) => s.logout());
    expect(store.calls).toEqual([]);
    expect(out.setCookie).toEqual([]);
  });

  it('destroy after regenerateId in the same request removes both the old and nothing is created', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    const oldKey = browser.key;
    store.reset();
    await browser.request(async (s) => {
      await s.regenerateId();
      await s.destroy();
    });
    expect(store.ops()).toEqual(['load', 'destroy']);
    expect(await store.inner.load(oldKey)).toBeNull();
    expect(browser.cookie).toBeUndefined();
  });
});

describe('login and reauthentication (seed §27, SM-22, SM-30)', () => {
  it('drops pre-login data except flash and keepOnLogin keys, sets the user, new ID and deadline', async () => {
    const { manager, store, clock, events } = setup({
      keepOnLogin: ['cart'],
      anonymousIdleTimeout: 30 * MINUTE,
    });
    const browser = new Browser(manager);
    let preToken = '';
    await browser.request((s) => {
      s.set('cart', ['book']);
      s.set('intended', '/admin');
      s.bag('wizard').set('step', 2);
      s.flash.warning('Please log in');
      preToken = s.csrf.token();
    });
    const preKey = browser.key;
    const preCookie = browser.cookie;
    const created = clock.now();
    clock.advance(20 * MINUTE);
    const { session } = await browser.request((s) => s.login(42));
    expect(session.userId).toBe('42');
    expect(session.authenticatedAt).toBe(clock.now());
    expect(browser.key).toBe(preKey);
    const replay = new Browser(manager);
    replay.cookie = preCookie;
    expect((await replay.request()).session.isNew).toBe(true);
    const meta = (await store.inner.load(browser.key))!.meta;
    expect(meta.deadline).toBe(clock.now() + manager.options.absoluteTimeout);
    expect(meta.deadline).toBeGreaterThan(created + manager.options.absoluteTimeout);
    expect(meta.userId).toBe('42');
    expect(events.map((e) => e.type)).toContain('authn_login_success');
    await browser.request((s) => {
      expect(s.get('cart')).toEqual(['book']);
      expect(s.has('intended')).toBe(false);
      expect(s.bag('wizard').keys()).toEqual([]);
      expect(s.flash.messages('warning')).toEqual(['Please log in']);
      expect(s.csrf.verify(preToken)).toBe(false);
      expect(s.userId).toBe('42');
    });
  });

  it('login on a visitor without a session creates one authenticated record', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.login('u1'));
    expect(store.ops()).toEqual(['create']);
    expect(store.calls[0]!.record!.meta.userId).toBe('u1');
  });

  it('SM-20: an ID planted by an attacker never becomes authenticated', async () => {
    const { manager } = setup();
    const attacker = new Browser(manager);
    await attacker.request((s) => s.set('lure', 1)); // a real, stored anonymous session
    const victim = new Browser(manager);
    victim.cookie = attacker.cookie; // planted, e.g. through a sibling subdomain
    await victim.request((s) => s.login('victim'));
    expect(victim.cookie).not.toBe(attacker.cookie);
    const { session } = await attacker.request();
    expect(session.userId).toBeUndefined();
    expect(session.isNew).toBe(true);
  });

  it('SM-37: revokeAll ends every session of a user but the one excepted, and no one else’s', async () => {
    const { manager } = setup();
    const [a, b, c, other] = [1, 2, 3, 4].map(() => new Browser(manager)) as [
      Browser,
      Browser,
      Browser,
      Browser,
    ];
    for (const browser of [a, b, c]) await browser.request((s) => s.login('alice'));
    await other.request((s) => s.login('bob'));
    const { session: current } = await a.request();
    expect(await manager.revokeAll('alice', { except: current.id })).toBe(2);
    expect((await a.request()).session.userId).toBe('alice');
    expect((await b.request()).session.isNew).toBe(true);
    expect((await c.request()).session.isNew).toBe(true);
    expect((await other.request()).session.userId).toBe('bob');
    expect((await manager.sessionsOf('alice')).map((s) => s.key)).toEqual([current.id]);
  });

  it('SM-30: reauthenticate issues a new ID and restarts both timers', async () => {
    const { manager, store, clock } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.login(1));
    const firstCookie = browser.cookie;
    clock.advance(20 * MINUTE);
    await browser.request(() => {}); // activity inside the idle window
    clock.advance(20 * MINUTE);
    await browser.request((s) => s.reauthenticate());
    const now = clock.now();
    expect(browser.cookie).not.toBe(firstCookie);
    const replay = new Browser(manager);
    replay.cookie = firstCookie;
    expect((await replay.request()).session.isNew).toBe(true);
    const meta = (await store.inner.load(browser.key))!.meta;
    expect(meta).toMatchObject({
      authAt: now,
      lastSeenAt: now,
      deadline: now + manager.options.absoluteTimeout,
    });
    expect(meta.userId).toBe('1');
  });
});
