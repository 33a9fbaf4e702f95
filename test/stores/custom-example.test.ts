// The worked example of docs/stores.md, verbatim but for the import path: the custom-store
// guide stays true only if its example passes the conformance suite.

import { afterAll, beforeAll, describe, it } from 'vitest';
// (The store kit is imported from its module until src/index.ts exports guardHolds and
// CommitGuard; the guide imports all of it from 'sessionflow'.)
import {
  applyDelta,
  type CommitGuard,
  type CommitResult,
  cloneRecord,
  guardHolds,
  isLiveTtl,
  type SessionDelta,
  type SessionStore,
  type StoredSession,
} from '../../src/stores/store.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';

type Item = { record: StoredSession; expiresAt: number; version: number };

export class VersionedMapStore implements SessionStore {
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
    if (this.#live(key)) return false; // guarantee 2
    if (isLiveTtl(ttlMs))
      this.#items.set(key, { record: cloneRecord(record), expiresAt: Date.now() + ttlMs, version: 1 });
    return true;
  }

  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
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
