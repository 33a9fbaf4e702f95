import {
  type CommitResult,
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

/** Records are frozen and replaced on every write, so `load` can hand them out without copying. */
interface Entry {
  record: Readonly<StoredSession>;
  expiresAt: number;
}

function freeze(meta: SessionMeta, values: Record<string, string>): Readonly<StoredSession> {
  return Object.freeze({ meta: Object.freeze(meta), values: Object.freeze(values) });
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
    const userId = entry.record.meta.userId;
    if (userId !== undefined) {
      const set = this.#byUser.get(userId);
      set?.delete(key);
      if (set?.size === 0) this.#byUser.delete(userId);
    }
  }

  #index(key: string, entry: Entry, previousUser: string | undefined): void {
    const userId = entry.record.meta.userId;
    if (previousUser === userId) return;
    if (previousUser !== undefined) this.#byUser.get(previousUser)?.delete(key);
    if (userId !== undefined) {
      const set = this.#byUser.get(userId) ?? new Set<string>();
      this.#byUser.set(userId, set);
      set.add(key);
    }
  }

  async load(key: string): Promise<StoredSession | null> {
    const entry = this.#live(key);
    if (!entry) return null;
    // Map order is insertion order: re-inserting marks the entry most recently used.
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    return entry.record;
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    if (this.#live(key)) return false;
    if (!isLiveTtl(ttlMs)) return true;
    const entry: Entry = {
      record: freeze({ ...record.meta }, { ...record.values }),
      expiresAt: this.#now() + ttlMs,
    };
    this.#entries.set(key, entry);
    this.#index(key, entry, undefined);
    while (this.#entries.size > this.#max) {
      const oldest = this.#entries.keys().next().value as string;
      this.#remove(oldest, this.#entries.get(oldest)!);
    }
    return true;
  }

  async commit(key: string, delta: SessionDelta, ttlMs: number): Promise<CommitResult> {
    const entry = this.#live(key);
    if (!entry) return 'gone';
    if (!isLiveTtl(ttlMs)) {
      this.#remove(key, entry);
      return 'gone';
    }
    const previousUser = entry.record.meta.userId;
    const values = { ...entry.record.values };
    for (const f of delta.unset) delete values[f];
    for (const [f, v] of Object.entries(delta.set)) values[f] = v;
    entry.record = freeze(delta.meta ? { ...entry.record.meta, ...delta.meta } : entry.record.meta, values);
    entry.expiresAt = this.#now() + ttlMs;
    this.#index(key, entry, previousUser);
    return 'ok';
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<CommitResult> {
    return this.commit(key, { set: {}, unset: [], meta }, ttlMs);
  }

  async destroy(key: string): Promise<void> {
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
