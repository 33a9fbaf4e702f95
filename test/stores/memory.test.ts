import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';

describeStoreConformance('MemoryStore', async () => ({ store: new MemoryStore() }), {
  runner: { describe, it, beforeAll, afterAll },
});

it('MemoryStore stays bounded: beyond maxEntries the least recently used session is evicted', async () => {
  const store = new MemoryStore({ maxEntries: 3 });
  const keys = Array.from({ length: 4 }, () => storageKey(newToken()));
  const meta = { createdAt: 1, lastSeenAt: 1, deadline: Date.now() + 60_000 };
  for (const k of keys.slice(0, 3)) await store.create(k, { meta, values: {} }, 60_000);
  await store.load(keys[0]!); // keys[0] becomes most recently used
  await store.create(keys[3]!, { meta, values: {} }, 60_000);
  expect(store.size).toBe(3);
  expect(await store.load(keys[1]!)).toBeNull();
  expect(await store.load(keys[0]!)).not.toBeNull();
});

it('MemoryStore hands out frozen records and never changes one in place', async () => {
  const store = new MemoryStore();
  const key = storageKey(newToken());
  const meta = { createdAt: 1, lastSeenAt: 1, deadline: Date.now() + 60_000, h: 'h0' };
  await store.create(key, { meta, values: { 'v:a': '1' } }, 60_000);
  const before = (await store.load(key))!;
  expect(Object.isFrozen(before) && Object.isFrozen(before.meta) && Object.isFrozen(before.values)).toBe(
    true,
  );
  expect(() => {
    (before.values as Record<string, string>)['v:a'] = '2';
  }).toThrow(TypeError);
  expect(await store.touch(key, { lastSeenAt: 5 }, 60_000)).toBe('ok');
  expect(
    await store.commit(key, { set: { 'v:b': '2' }, unset: [], meta: { h: 'h1' } }, 60_000, { handle: 'h0' }),
  ).toBe('ok');
  expect(before.meta).toMatchObject({ lastSeenAt: 1, h: 'h0' });
  expect({ ...before.values }).toEqual({ 'v:a': '1' });
  const after = (await store.load(key))!;
  expect(Object.isFrozen(after.meta) && Object.isFrozen(after.values)).toBe(true);
  expect(after.meta).toMatchObject({ lastSeenAt: 5, h: 'h1' });
  expect({ ...after.values }).toEqual({ 'v:a': '1', 'v:b': '2' });
});

it("MemoryStore create keeps a copy: the record passed in stays the caller's", async () => {
  const store = new MemoryStore();
  const key = storageKey(newToken());
  const meta = { createdAt: 1, lastSeenAt: 1, deadline: Date.now() + 60_000, h: 'h0' };
  const values: Record<string, string> = { 'v:a': '1' };
  // A value named like the prototype stays a value (an own key, not the object's prototype).
  Object.defineProperty(values, '__proto__', { value: '"p"', enumerable: true, writable: true });
  const record = { meta, values };
  expect(await store.create(key, record, 60_000)).toBe(true);
  // The caller's objects are not frozen, and what it changes afterwards does not reach the store.
  expect(Object.isFrozen(record) || Object.isFrozen(meta) || Object.isFrozen(values)).toBe(false);
  values['v:a'] = 'changed';
  meta.h = 'changed';
  const loaded = (await store.load(key))!;
  expect(Object.entries(loaded.values)).toEqual([
    ['v:a', '1'],
    ['__proto__', '"p"'],
  ]);
  expect(Object.getPrototypeOf(loaded.values)).toBe(Object.prototype);
  expect(loaded.meta).toEqual({ createdAt: 1, lastSeenAt: 1, deadline: meta.deadline, h: 'h0' });
});

it('MemoryStore keeps its user index right through login (guard + retain), a conflict, and logout', async () => {
  const store = new MemoryStore();
  const key = storageKey(newToken());
  const meta = { createdAt: 1, lastSeenAt: 1, deadline: Date.now() + 60_000, h: 'h0' };
  await store.create(key, { meta, values: { 'v:pre': '1' } }, 60_000);
  const login = { set: { 'v:a': '1' }, unset: [], retain: [], meta: { h: 'h1', userId: 'alice' } };
  expect(await store.commit(key, login, 60_000, { handle: 'h0', userId: null })).toBe('ok');
  expect((await store.sessionsOf('alice')).map((s) => s.key)).toEqual([key]);
  expect({ ...(await store.load(key))?.values }).toEqual({ 'v:a': '1' });
  // A request still holding the old handle cannot move the session to another user.
  const steal = { set: {}, unset: [], retain: [], meta: { h: 'h2', userId: 'mallory' } };
  expect(await store.commit(key, steal, 60_000, { handle: 'h0' })).toBe('conflict');
  expect(await store.sessionsOf('mallory')).toEqual([]);
  expect((await store.sessionsOf('alice')).map((s) => s.key)).toEqual([key]);
  // Switching user, then logging out (userId set to undefined is removed).
  const relogin = { set: {}, unset: [], retain: ['v:a'], meta: { h: 'h2', userId: 'bob' } };
  expect(await store.commit(key, relogin, 60_000, { handle: 'h1', userId: 'alice' })).toBe('ok');
  expect(await store.sessionsOf('alice')).toEqual([]);
  expect((await store.sessionsOf('bob')).map((s) => s.key)).toEqual([key]);
  const logout = { set: {}, unset: [], retain: [], meta: { h: 'h3', userId: undefined } };
  expect(await store.commit(key, logout, 60_000, { handle: 'h2' })).toBe('ok');
  expect(await store.sessionsOf('bob')).toEqual([]);
  const loaded = await store.load(key);
  expect(loaded?.meta).not.toHaveProperty('userId');
  expect({ ...loaded?.values }).toEqual({});
});

it('MemoryStore refuses a key that is not a storage key', async () => {
  const store = new MemoryStore();
  await expect(store.load('not a key')).rejects.toMatchObject({ code: 'INVALID_KEY' });
  await expect(store.commit('x', { set: {}, unset: [] }, 1000)).rejects.toMatchObject({
    code: 'INVALID_KEY',
  });
});

it('a storage key is 16 to 128 base64url characters: every other length and character is refused', async () => {
  const store = new MemoryStore();
  const refused = async (key: string) =>
    store.load(key).then(
      () => false,
      (err: { code?: string }) => err.code === 'INVALID_KEY',
    );
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-';
  for (const key of ['a'.repeat(16), 'Z'.repeat(128), alphabet, storageKey(newToken())]) {
    expect(await refused(key)).toBe(false);
  }
  expect(await refused('a'.repeat(15))).toBe(true);
  expect(await refused('a'.repeat(129))).toBe(true);
  // Every other code unit of the first 256, and some beyond, in the middle of a valid key.
  const others = [...Array(256).keys(), 0x100, 0x141, 0x2028, 0xd800, 0xfeff, 0xffff]
    .map((c) => String.fromCharCode(c))
    .filter((c) => !alphabet.includes(c));
  expect(others.length).toBe(256 - 64 + 6);
  for (const c of others) expect(await refused(`${'a'.repeat(20)}${c}${'b'.repeat(20)}`)).toBe(true);
});

describe('MemoryStore eviction order (maxEntries)', () => {
  const HOUR = 3_600_000;
  const meta = (userId?: string) => ({
    createdAt: 1,
    lastSeenAt: 1,
    deadline: Date.now() + 10 * HOUR,
    ...(userId === undefined ? {} : { userId }),
  });
  const newKey = () => storageKey(newToken());

  it('evicts the least recently used anonymous session before any signed-in one, however old', async () => {
    const store = new MemoryStore({ maxEntries: 5 });
    const [u1, u2, a0, a1, a2] = [newKey(), newKey(), newKey(), newKey(), newKey()];
    await store.create(u1!, { meta: meta('alice'), values: {} }, HOUR);
    await store.create(u2!, { meta: meta('bob'), values: {} }, HOUR);
    for (const k of [a0!, a1!, a2!]) await store.create(k, { meta: meta(), values: {} }, HOUR);
    await store.load(a0!); // a1 is now the least recently used anonymous session
    await store.create(newKey(), { meta: meta(), values: {} }, HOUR);
    expect(await store.load(a1!)).toBeNull();
    // A signed-in newcomer also takes an anonymous place first.
    await store.create(newKey(), { meta: meta('carol'), values: {} }, HOUR);
    expect(await store.load(a2!)).toBeNull();
    expect(await store.load(u1!)).not.toBeNull();
    expect(await store.load(u2!)).not.toBeNull();
    expect(store.size).toBe(5);
  });

  it('a logged-in session leaves the anonymous order; a logged-out one joins it as most recent', async () => {
    const store = new MemoryStore({ maxEntries: 3 });
    const [a, b, c, d] = [newKey(), newKey(), newKey(), newKey()];
    for (const k of [a!, b!, c!]) await store.create(k, { meta: meta(), values: {} }, HOUR);
    expect(await store.commit(a!, { set: {}, unset: [], meta: { userId: 'alice' } }, HOUR)).toBe('ok');
    await store.create(d!, { meta: meta(), values: {} }, HOUR);
    expect(await store.load(b!)).toBeNull(); // a was older, but it is signed in now
    expect(await store.load(a!)).not.toBeNull();
    // Logged out, a is the most recent anonymous session: c is now the oldest.
    expect(await store.commit(a!, { set: {}, unset: [], meta: { userId: undefined } }, HOUR)).toBe('ok');
    await store.create(newKey(), { meta: meta(), values: {} }, HOUR);
    expect(await store.sessionsOf('alice')).toEqual([]);
    expect(store.size).toBe(3);
    expect(await store.load(c!)).toBeNull();
    expect(await store.load(d!)).not.toBeNull();
    expect(await store.load(a!)).not.toBeNull();
  });

  it('in a large store, evicts exactly in least-recently-used order', async () => {
    const store = new MemoryStore({ maxEntries: 1000 });
    const keys = Array.from({ length: 1000 }, newKey);
    for (const k of keys) await store.create(k, { meta: meta(), values: {} }, HOUR);
    for (const k of keys.slice(0, 250)) await store.load(k); // now the most recently used
    for (let i = 0; i < 200; i++) await store.create(newKey(), { meta: meta(), values: {} }, HOUR);
    expect(store.size).toBe(1000);
    const alive = async (ks: string[]) =>
      (await Promise.all(ks.map((k) => store.load(k)))).map((r) => r !== null);
    expect(await alive(keys.slice(250, 450))).toEqual(Array(200).fill(false));
    expect(await alive(keys.slice(0, 250))).toEqual(Array(250).fill(true));
    expect(await alive(keys.slice(450))).toEqual(Array(550).fill(true));
  });

  it('full of signed-in sessions: an expired one makes room, so the visitor is not refused', async () => {
    let t = Date.now();
    const store = new MemoryStore({ maxEntries: 2, now: () => t });
    await store.create(newKey(), { meta: meta('alice'), values: {} }, 60_000);
    const bob = newKey();
    await store.create(bob, { meta: meta('bob'), values: {} }, HOUR);
    await expect(store.create(newKey(), { meta: meta(), values: {} }, HOUR)).rejects.toMatchObject({
      code: 'STORE_UNAVAILABLE',
    });
    t += 2 * 60_000; // alice's session has expired (not collected yet)
    expect(await store.create(newKey(), { meta: meta(), values: {} }, HOUR)).toBe(true);
    expect(await store.load(bob)).not.toBeNull();
    expect(await store.sessionsOf('alice')).toEqual([]);
  });
});

describe('MemoryStore gc (expiry index)', () => {
  const MINUTE = 60_000;
  const HOUR = 60 * MINUTE;
  const meta = (t: number) => ({ createdAt: t, lastSeenAt: t, deadline: t + 10 * HOUR });
  const newKey = () => storageKey(newToken());

  it('follows expiries that move: extended sessions survive their old bucket, shortened ones go on time', async () => {
    let t = Date.now();
    const store = new MemoryStore({ now: () => t });
    const [extended, shortened, reused] = [newKey(), newKey(), newKey()];
    await store.create(extended!, { meta: meta(t), values: {} }, MINUTE);
    await store.create(shortened!, { meta: meta(t), values: {} }, HOUR);
    await store.create(reused!, { meta: meta(t), values: {} }, MINUTE);
    t += 30_000;
    expect(await store.touch(extended!, { lastSeenAt: t }, HOUR)).toBe('ok');
    expect(await store.commit(shortened!, { set: {}, unset: [] }, MINUTE)).toBe('ok');
    // A destroyed session's slot is reused by another, filed later: its old filing is stale.
    await store.destroy(reused!);
    const other = newKey();
    await store.create(other, { meta: meta(t), values: {} }, HOUR);
    t += 5 * MINUTE;
    expect(await store.gc()).toBe(1);
    expect(await store.load(shortened!)).toBeNull();
    expect(await store.load(extended!)).not.toBeNull();
    expect(await store.load(other)).not.toBeNull();
    expect(await store.gc()).toBe(0);
    t += 2 * HOUR;
    expect(await store.gc()).toBe(2);
    expect(store.size).toBe(0);
  });

  it('runs in slices: the event loop turns while a large gc runs, and the store stays usable meanwhile', async () => {
    let t = Date.now();
    const store = new MemoryStore({ maxEntries: 200_000, now: () => t });
    const keys = Array.from({ length: 100_000 }, (_, i) => `gc-slices-${String(i).padStart(8, '0')}`);
    const meta0 = meta(t);
    for (const [i, k] of keys.entries())
      await store.create(k, { meta: meta0, values: {} }, i % 2 ? HOUR : MINUTE);
    t += 5 * MINUTE;
    let turns = 0;
    const seen: (string | null)[] = [];
    const tick = () => {
      turns++;
      // Between slices: expired sessions stay invisible, live ones load, writes land.
      void store.load(keys[0]!).then((r) => seen.push(r === null ? null : 'expired visible'));
      void store.load(keys[1]!).then((r) => seen.push(r === null ? 'live missing' : null));
      void store.touch(keys[3]!, { lastSeenAt: t }, HOUR);
      if (turns < 1000) setImmediate(tick);
    };
    setImmediate(tick);
    const [removed, again] = await Promise.all([store.gc(), store.gc()]);
    expect(turns).toBeGreaterThan(1);
    // keys[0] may have been removed by a load first (an expired session found is removed at once).
    expect(50_000 - (removed + again)).toBeLessThanOrEqual(1);
    expect(seen.filter((s) => s !== null)).toEqual([]);
    expect(store.size).toBe(50_000);
    expect(await store.load(keys[3]!)).not.toBeNull();
  });

  it('agrees with a plain model through 20,000 random creates, writes, destroys, clock moves and gcs', async () => {
    let seed = 7;
    const random = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
      return seed / 2_147_483_648;
    };
    let t = Date.now();
    const store = new MemoryStore({ now: () => t });
    const keys = Array.from({ length: 300 }, newKey);
    const model = new Map<string, { expiresAt: number; n: number }>();
    const ttl = () => Math.floor(1000 + random() * 2 * HOUR);
    /** Whether `k` is absent or expired; an expired session the store finds is removed at once. */
    const expired = (k: string) => {
      const gone = (model.get(k)?.expiresAt ?? 0) <= t;
      if (gone) model.delete(k);
      return gone;
    };
    for (let op = 0; op < 20_000; op++) {
      const k = keys[Math.floor(random() * keys.length)]!;
      const r = random();
      if (r < 0.3) {
        const ms = ttl();
        const created = await store.create(k, { meta: meta(t), values: { 'v:n': String(op) } }, ms);
        expect(created).toBe(expired(k));
        if (created) model.set(k, { expiresAt: t + ms, n: op });
      } else if (r < 0.55) {
        const ms = ttl(); // shorter or longer than before
        const result = await store.commit(k, { set: { 'v:n': String(op) }, unset: [] }, ms);
        expect(result).toBe(expired(k) ? 'gone' : 'ok');
        if (result === 'ok') model.set(k, { expiresAt: t + ms, n: op });
      } else if (r < 0.75) {
        const loaded = await store.load(k);
        expect(loaded?.values['v:n']).toBe(expired(k) ? undefined : String(model.get(k)!.n));
      } else if (r < 0.85) {
        await store.destroy(k);
        model.delete(k);
      } else if (r < 0.97) {
        t += Math.floor(random() * 10 * MINUTE);
      } else {
        const due = [...model].filter(([, v]) => v.expiresAt <= t).map(([key]) => key);
        expect(await store.gc()).toBe(due.length);
        for (const key of due) model.delete(key);
        expect(store.size).toBe(model.size);
      }
    }
  });

  it('keeps the user index right when gc removes signed-in sessions', async () => {
    let t = Date.now();
    const store = new MemoryStore({ now: () => t });
    const [a, b] = [newKey(), newKey()];
    await store.create(a!, { meta: { ...meta(t), userId: 'alice' }, values: {} }, MINUTE);
    await store.create(b!, { meta: { ...meta(t), userId: 'alice' }, values: {} }, HOUR);
    t += 5 * MINUTE;
    expect(await store.gc()).toBe(1);
    expect((await store.sessionsOf('alice')).map((s) => s.key)).toEqual([b]);
  });
});
