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
