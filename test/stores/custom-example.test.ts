// The worked example of docs/stores.md, verbatim but for the import path and `export` (a test
// file exports nothing): the custom-store guide stays true only if its example passes the
// conformance suite.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  applyDelta,
  type CommitGuard,
  type CommitResult,
  checkDelta,
  checkRecord,
  cloneRecord,
  guardHolds,
  isLiveTtl,
  type SessionDelta,
  type SessionStore,
  type StoredSession,
} from '../../src/index.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';

type Item = { record: StoredSession; expiresAt: number; version: number };

class VersionedMapStore implements SessionStore {
  readonly capabilities = { listByUser: false, gc: false, nativeTtl: false } as const;
  readonly #items = new Map<string, Item>();

  #live(key: string): Item | undefined {
    const item = this.#items.get(key);
    if (item && item.expiresAt <= Date.now()) this.#items.delete(key); // guarantee 1
    return item && item.expiresAt > Date.now() ? item : undefined;
  }

  async load(key: string) {
    const item = this.#live(key);
    return item ? cloneRecord(item.record) : null;
  }

  async create(key: string, record: StoredSession, ttlMs: number) {
    checkRecord('VersionedMapStore', record); // INVALID_RECORD for what a load could not read back
    if (this.#live(key)) return false; // guarantee 2
    if (isLiveTtl(ttlMs))
      this.#items.set(key, { record: cloneRecord(record), expiresAt: Date.now() + ttlMs, version: 1 });
    return true;
  }

  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    checkDelta('VersionedMapStore', delta);
    for (;;) {
      const item = this.#live(key);
      if (!item) return 'gone'; // guarantee 4
      if (!guardHolds(item.record.meta, guard)) return 'conflict'; // the guard: nothing written
      if (!isLiveTtl(ttlMs)) {
        this.#items.delete(key);
        return 'gone';
      } // guarantee 5
      // guarantee 3: per key, `retain` honoured, meta fields set to undefined removed
      const next = applyDelta(cloneRecord(item.record), delta);
      // With a real service this is its compare-and-set: the guard was checked on the version
      // being replaced. On conflict, read again, check the guard again, and retry.
      if (this.#items.get(key)?.version === item.version) {
        this.#items.set(key, { record: next, expiresAt: Date.now() + ttlMs, version: item.version + 1 });
        return 'ok';
      }
    }
  }

  async destroy(key: string) {
    this.#items.delete(key); // guarantee 6
  }
}

describeStoreConformance(
  'docs/stores.md worked example (VersionedMapStore)',
  async () => ({ store: new VersionedMapStore() }),
  { runner: { describe, it, beforeAll, afterAll } },
);

describe('docs/stores.md worked example: the kit checks it calls', () => {
  const key = 'k'.repeat(43);
  const now = Date.now();
  const good: StoredSession = {
    meta: { createdAt: now, lastSeenAt: now, deadline: now + 60_000 },
    values: {},
  };

  it('a record whose deadline came through JSON as text is refused and not stored', async () => {
    const store = new VersionedMapStore();
    const bad = JSON.parse(JSON.stringify({ ...good, meta: { ...good.meta, deadline: String(now) } }));
    await expect(store.create(key, bad, 60_000)).rejects.toMatchObject({ code: 'INVALID_RECORD' });
    expect(await store.load(key)).toBeNull();
  });

  it('a delta setting a value that is not encoded is refused and the record is unchanged', async () => {
    const store = new VersionedMapStore();
    await store.create(key, { ...good, values: { 'v:a': '"1"' } }, 60_000);
    const bad = { set: { 'v:a': 2 }, unset: [] } as unknown as SessionDelta;
    await expect(store.commit(key, bad, 60_000)).rejects.toMatchObject({ code: 'INVALID_RECORD' });
    expect((await store.load(key))?.values).toEqual({ 'v:a': '"1"' });
  });
});
