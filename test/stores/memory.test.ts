import { expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { MemoryStore } from '../../src/index.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';

describeStoreConformance('MemoryStore', async () => ({ store: new MemoryStore() }));

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
