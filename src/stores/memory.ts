import { checkStorageKey } from './kit.js';
import {
  applyDelta,
  type CommitGuard,
  type CommitResult,
  cloneRecord,
  guardHolds,
  isLiveTtl,
  type SessionDelta,
  type SessionMeta,
  type SessionStore,
  type SessionSummary,
  type StoredSession,
} from './store.js';

export interface MemoryStoreOptions {
  /** Most sessions kept; the least recently used is evicted beyond it. @default 10000 */
  maxEntries?: number;
  /** Clock in milliseconds, for tests. @default Date.now */
  now?: () => number;
}

/**
 * Records are frozen and replaced on every write (never changed in place), so `load` can hand
 * them out without copying.
 */
interface Entry {
  record: Readonly<StoredSession>;
  expiresAt: number;
}

function freeze(record: StoredSession): Readonly<StoredSession> {
  Object.freeze(record.meta);
  Object.freeze(record.values);
  return Object.freeze(record);
}

/** The record a delta makes of a frozen one: a fresh copy; a meta-only delta shares the values. */
function applyFrozen(record: Readonly<StoredSession>, delta: SessionDelta): Readonly<StoredSession> {
  const valuesChange =
    delta.retain !== undefined || delta.unset.length > 0 || Object.keys(delta.set).length > 0;
  if (valuesChange) return freeze(applyDelta(cloneRecord(record), delta));
  // Nothing to set, unset or drop: applyDelta only writes the new meta object.
  return freeze(applyDelta({ meta: { ...record.meta }, values: record.values }, delta));
}

let warnedProduction = false;

/**
 * Sessions in this process's memory: for tests and development. Bounded (LRU eviction) so it
 * cannot grow without limit, and lost on restart; it warns once when NODE_ENV is production.
 */
export class MemoryStore implements SessionStore {
  readonly capabilities = { listByUser: true, gc: true, nativeTtl: false } as const;
  readonly #entries = new Map<string, Entry>();
  readonly #byUser = new Map<string, Set<string>>();
  readonly #max: number;
  readonly #now: () => number;

  constructor(options: MemoryStoreOptions = {}) {
    this.#max = options.maxEntries ?? 10_000;
    if (!(Number.isInteger(this.#max) && this.#max > 0))
      throw new TypeError('MemoryStore maxEntries must be a positive integer');
    this.#now = options.now ?? Date.now;
    if (process.env.NODE_ENV === 'production' && !warnedProduction) {
      warnedProduction = true;
      console.warn(
        '[sessionflow] MemoryStore is for tests and development: sessions are lost on restart and not shared between processes.',
      );
    }
  }

  /** Number of live entries (expired ones may still count until touched or collected). */
  get size(): number {
    return this.#entries.size;
  }

  #live(key: string): Entry | undefined {
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.#now()) {
      this.#remove(key, entry);
      return undefined;
    }
    return entry;
  }

  #remove(key: string, entry: Entry): void {
    this.#entries.delete(key);
    this.#unindex(key, entry.record.meta.userId);
  }

  #unindex(key: string, userId: string | undefined): void {
    if (userId === undefined) return;
    const set = this.#byUser.get(userId);
    set?.delete(key);
    if (set?.size === 0) this.#byUser.delete(userId);
  }

  /** Keeps the user index in step when a write changes the record's user (login, logout). */
  #index(key: string, userId: string | undefined, previousUser: string | undefined): void {
    if (previousUser === userId) return;
    this.#unindex(key, previousUser);
    if (userId !== undefined) {
      let set = this.#byUser.get(userId);
      if (!set) {
        set = new Set<string>();
        this.#byUser.set(userId, set);
      }
      set.add(key);
    }
  }

  async load(key: string): Promise<StoredSession | null> {
    checkStorageKey('MemoryStore', key);
    const entry = this.#live(key);
    if (!entry) return null;
    // Map order is insertion order: re-inserting marks the entry most recently used.
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    return entry.record;
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    checkStorageKey('MemoryStore', key);
    if (this.#live(key)) return false;
    if (!isLiveTtl(ttlMs)) return true;
    const entry: Entry = { record: freeze(cloneRecord(record)), expiresAt: this.#now() + ttlMs };
    this.#entries.set(key, entry);
    this.#index(key, entry.record.meta.userId, undefined);
    while (this.#entries.size > this.#max) {
      const oldest = this.#entries.keys().next().value as string;
      this.#remove(oldest, this.#entries.get(oldest)!);
    }
    return true;
  }

  /** Synchronous from the guard check to the write: nothing can run in between. */
  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    checkStorageKey('MemoryStore', key);
    const entry = this.#live(key);
    if (!entry) return 'gone';
    if (!guardHolds(entry.record.meta, guard)) return 'conflict';
    if (!isLiveTtl(ttlMs)) {
      this.#remove(key, entry);
      return 'gone';
    }
    const previousUser = entry.record.meta.userId;
    entry.record = applyFrozen(entry.record, delta);
    entry.expiresAt = this.#now() + ttlMs;
    this.#index(key, entry.record.meta.userId, previousUser);
    return 'ok';
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'> {
    return (await this.commit(key, { set: {}, unset: [], meta }, ttlMs)) === 'ok' ? 'ok' : 'gone';
  }

  async destroy(key: string): Promise<void> {
    checkStorageKey('MemoryStore', key);
    const entry = this.#entries.get(key);
    if (entry) this.#remove(key, entry);
  }

  async sessionsOf(userId: string): Promise<SessionSummary[]> {
    const out: SessionSummary[] = [];
    for (const key of [...(this.#byUser.get(userId) ?? [])]) {
      const entry = this.#live(key);
      if (entry) out.push({ key, meta: entry.record.meta });
    }
    return out;
  }

  async gc(now = this.#now()): Promise<number> {
    let removed = 0;
    for (const [key, entry] of this.#entries) {
      if (entry.expiresAt <= now) {
        this.#remove(key, entry);
        removed++;
      }
    }
    return removed;
  }
}
