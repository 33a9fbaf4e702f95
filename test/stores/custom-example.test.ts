// The worked example of docs/stores.md, verbatim but for the import path: the custom-store
// guide stays true only if its example passes the conformance suite.

import { applyDelta, isLiveTtl, type SessionStore, type StoredSession } from '../../src/index.js';
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
    return item ? structuredClone(item.record) : null;
  }

  async create(key: string, record: StoredSession, ttlMs: number) {
    if (this.#live(key)) return false; // guarantee 2
    if (isLiveTtl(ttlMs))
      this.#items.set(key, { record: structuredClone(record), expiresAt: Date.now() + ttlMs, version: 1 });
    return true;
  }

  async commit(key: string, delta: Parameters<SessionStore['commit']>[1], ttlMs: number) {
    for (;;) {
      const item = this.#live(key);
      if (!item) return 'gone' as const; // guarantee 4
      if (!isLiveTtl(ttlMs)) {
        this.#items.delete(key);
        return 'gone' as const;
      } // guarantee 5
      const next = applyDelta(structuredClone(item.record), delta); // guarantee 3: per key
      // With a real service this is its compare-and-set; on conflict, read again and retry.
      if (this.#items.get(key)?.version === item.version) {
        this.#items.set(key, { record: next, expiresAt: Date.now() + ttlMs, version: item.version + 1 });
        return 'ok' as const;
      }
    }
  }

  async touch(key: string, meta: Parameters<SessionStore['touch']>[1], ttlMs: number) {
    return this.commit(key, { set: {}, unset: [], meta }, ttlMs);
  }

  async destroy(key: string) {
    this.#items.delete(key); // guarantee 6
  }
}

describeStoreConformance('docs/stores.md worked example (VersionedMapStore)', async () => ({
  store: new VersionedMapStore(),
}));
