import { SessionError } from '../errors.js';
import { checkStorageKey } from './kit.js';
import {
  type CommitGuard,
  type CommitResult,
  guardHolds,
  isLiveTtl,
  type SessionDelta,
  type SessionMeta,
  type SessionStore,
  type SessionSummary,
  type StoredSession,
} from './store.js';

export interface MemoryStoreOptions {
  /**
   * Most sessions kept. Beyond it the least recently used *anonymous* session is evicted first; a
   * signed-in session is evicted only to make room for another signed-in one, and an anonymous
   * session that would need that is refused (503) instead. At about 1 KB per small session the
   * default is in the order of 100 MB.
   * @default 100000
   */
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
  if (!Object.isFrozen(record.meta)) Object.freeze(record.meta);
  if (!Object.isFrozen(record.values)) Object.freeze(record.values);
  return Object.freeze(record);
}

/** Copies `from` into a plain object (fast properties; `__proto__` stays an own data key). */
function put(target: Record<string, string>, key: string, value: string): void {
  if (key === '__proto__')
    Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
  else target[key] = value;
}

/**
 * The record a delta makes of a frozen one: a fresh copy (plain objects, which V8 keeps in fast
 * mode, unlike null-prototype ones); a meta-only delta shares the values.
 */
function applyFrozen(record: Readonly<StoredSession>, delta: SessionDelta): Readonly<StoredSession> {
  let values = record.values;
  const setKeys = Object.keys(delta.set);
  if (delta.retain !== undefined) {
    const keep = new Set(delta.retain);
    values = {};
    for (const k of Object.keys(record.values)) if (keep.has(k)) put(values, k, record.values[k]!);
  } else if (delta.unset.length > 0 || setKeys.length > 0) {
    values = { ...record.values };
  }
  if (values !== record.values) {
    for (const k of delta.unset) delete values[k];
    for (const k of setKeys) put(values, k, delta.set[k]!);
  }
  let meta = record.meta;
  if (delta.meta) {
    meta = { ...record.meta, ...delta.meta };
    for (const k of Object.keys(delta.meta) as (keyof SessionMeta)[]) {
      if (delta.meta[k] === undefined) delete meta[k];
    }
  }
  return freeze({ meta, values });
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
  /** Keys of sessions without a user, least recently used first: what eviction takes first. */
  readonly #anonymous = new Set<string>();
  readonly #max: number;
  readonly #now: () => number;

  constructor(options: MemoryStoreOptions = {}) {
    this.#max = options.maxEntries ?? 100_000;
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

  /** The most sessions kept (see {@link MemoryStoreOptions.maxEntries}). */
  get maxEntries(): number {
    return this.#max;
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
    this.#anonymous.delete(key);
    this.#unindex(key, entry.record.meta.userId);
  }

  /** Marks `key` most recently used, in the anonymous order too while it has no user. */
  #used(key: string, entry: Entry): void {
    // Map and Set order is insertion order: re-inserting marks the entry most recently used.
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    this.#anonymous.delete(key);
    if (entry.record.meta.userId === undefined) this.#anonymous.add(key);
  }

  /** Room for one more entry: anonymous sessions go first; see `maxEntries`. */
  #makeRoom(forSignedIn: boolean): void {
    while (this.#entries.size >= this.#max) {
      const anonymous = this.#anonymous.values().next();
      let victim: string;
      if (!anonymous.done) victim = anonymous.value;
      else if (forSignedIn) victim = this.#entries.keys().next().value as string;
      else {
        throw new SessionError(
          'STORE_UNAVAILABLE',
          `MemoryStore is full of signed-in sessions (maxEntries ${this.#max}); a visitor's session was not stored. Raise maxEntries or use a server-backed store.`,
        );
      }
      this.#remove(victim, this.#entries.get(victim)!);
    }
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
    this.#used(key, entry);
    return entry.record;
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    checkStorageKey('MemoryStore', key);
    if (this.#live(key)) return false;
    if (!isLiveTtl(ttlMs)) return true;
    const entry: Entry = {
      record: applyFrozen(
        { meta: {} as SessionMeta, values: {} },
        { set: record.values, unset: [], meta: record.meta },
      ),
      expiresAt: this.#now() + ttlMs,
    };
    this.#makeRoom(entry.record.meta.userId !== undefined);
    this.#used(key, entry);
    this.#index(key, entry.record.meta.userId, undefined);
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
    if (entry.record.meta.userId !== previousUser) this.#used(key, entry);
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
