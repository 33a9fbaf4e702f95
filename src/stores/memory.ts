import { SessionError } from '../errors.js';
import { checkDelta, checkRecord, checkStorageKey, freezeRecord } from './kit.js';
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
   * Most sessions kept. To make room, an expired session is dropped if the expiry index shows
   * one (it looks at up to 64 entries whose 16-second expiry bucket is over); else the least
   * recently used (created, loaded, or logged in or out) *anonymous* session is evicted. A signed-in session is evicted
   * (the least recently used one) only to make room for another signed-in one, and an anonymous
   * session that would need that is refused (503) instead. At about 500 bytes per small session
   * the default is in the order of 50 MB.
   * @default 100000
   */
  maxEntries?: number;
  /** Clock in milliseconds, for tests. @default Date.now */
  now?: () => number;
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
  return freezeRecord({ meta, values });
}

/**
 * The record `create` keeps: a frozen copy of the caller's, whose metadata `checkRecord` has
 * passed (known fields, none undefined). What `applyFrozen` makes of an empty record, without
 * its spreads and checks for shared parts (bench/README.md, twenty-eighth pass).
 *
 * The metadata is copied with `Object.assign` onto a fresh object, not spread: V8 clones a
 * spread object from the caller's object, and those frozen clones kept 723 bytes a small
 * session against 534 (`npm run bench:stores`, bench/README.md, thirtieth pass).
 */
function frozenCopy(record: StoredSession): Readonly<StoredSession> {
  const values: Record<string, string> = {};
  const from = record.values;
  for (const k of Object.keys(from)) put(values, k, from[k]!);
  const meta = Object.freeze(Object.assign({}, record.meta));
  return Object.freeze({ meta, values: Object.freeze(values) });
}

// ---- slot layout ----------------------------------------------------------------------------
// Every session lives in a numbered slot: its key and frozen record in two arrays, and its
// numbers in typed arrays (no wrapper object and no boxed number per session). The key -> slot
// map is the only hash table a session is in (the user index aside), and a load changes no hash
// table: recency is two doubly linked lists (anonymous, signed in) threaded through `#links`, so
// marking a session used is a few array writes. Free slots are chained through `#links` too.
//
// Expiry index: every live slot is filed, exactly once, in the bucket (BUCKET_MS wide) of its
// expiry or of an earlier one: a commit that extends a session leaves it where it is (gc files
// it again when that bucket comes due), one that shortens it moves it. So gc opens only buckets
// that are due, and the index holds one entry per live session, gc or no gc.

const NONE = -1;
/** The two eviction classes: sessions without a user go first. */
const ANONYMOUS = 0;
const SIGNED_IN = 1;
/** Width of one expiry bucket in milliseconds (about 16 s). */
const BUCKET_MS = 16_384;
/** One gc slice runs at most this long before it yields to the event loop (setImmediate). */
const GC_SLICE_MS = 2;
/** Filings one `#collect` call examines; the slice checks its clock between calls. */
const GC_STEP = 256;
/** Expiry filings examined, at most, to find an expired session before a live one is evicted. */
const ROOM_STEP = 64;

/** The expiry bucket of an instant (clamped into Int32 range, keeping the order). */
function bucketOf(ms: number): number {
  return Math.min(0x7fffffff, Math.max(-0x80000000, Math.floor(ms / BUCKET_MS)));
}

/**
 * The slots filed under one bucket, unordered (a slot leaves by swapping the last one into its
 * place). A gc pass walks it from the end down, across slices: `next` is the index it visits
 * next, NONE when no pass is under way. Whatever leaves or moves during a pass comes from the
 * part already visited, so nothing is skipped.
 */
interface Bucket {
  readonly slots: number[];
  next: number;
}

/** A binary min-heap of bucket ids. */
function heapPush(heap: number[], id: number): void {
  let i = heap.push(id) - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (heap[parent]! <= id) break;
    heap[i] = heap[parent]!;
    i = parent;
  }
  heap[i] = id;
}

function heapPop(heap: number[]): void {
  const last = heap.pop()!;
  if (heap.length === 0) return;
  let i = 0;
  for (;;) {
    const left = 2 * i + 1;
    if (left >= heap.length) break;
    const right = left + 1;
    const child = right < heap.length && heap[right]! < heap[left]! ? right : left;
    if (heap[child]! >= last) break;
    heap[i] = heap[child]!;
    i = child;
  }
  heap[i] = last;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

let warnedProduction = false;

/**
 * Sessions in this process's memory: for tests and development. Bounded (LRU eviction, anonymous
 * sessions first) so it cannot grow without limit, and lost on restart; it warns once when
 * NODE_ENV is production.
 *
 * Costs: `load` is one hash lookup and a few typed-array reads and writes (no hash table changes);
 * `gc` visits only the expiry buckets that are due, in slices that yield to the event loop.
 */
export class MemoryStore implements SessionStore {
  readonly capabilities = { listByUser: true, gc: true, nativeTtl: false } as const;
  readonly #slots = new Map<string, number>();
  readonly #keys: (string | undefined)[] = [];
  /** Records are frozen and replaced on every write (never changed in place), so `load` can hand them out without copying. */
  readonly #records: (Readonly<StoredSession> | undefined)[] = [];
  /** Per slot: its expiry (ms). */
  #expires = new Float64Array(0);
  /** Per slot: [2s] previous and [2s + 1] next slot in its class's recency list (NONE at the ends); a free slot's next free one at [2s + 1]. */
  #links = new Int32Array(0);
  /** Per slot: its class (ANONYMOUS or SIGNED_IN), which list it is in. */
  #classes = new Uint8Array(0);
  /** Per slot: the bucket it is filed under (NONE when free), and its index there. */
  #filed = new Int32Array(0);
  #filedAt = new Int32Array(0);
  /** Per class: the least and the most recently used slot. */
  readonly #head: [number, number] = [NONE, NONE];
  readonly #tail: [number, number] = [NONE, NONE];
  #capacity = 0;
  #top = 0;
  #free = NONE;
  readonly #buckets = new Map<number, Bucket>();
  /** Ids of `#buckets`, earliest at the top (and ids of emptied buckets, dropped when met). */
  #due: number[] = [];
  #gcQueue: Promise<unknown> = Promise.resolve();
  readonly #byUser = new Map<string, Set<string>>();
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
    return this.#slots.size;
  }

  // ---- slots --------------------------------------------------------------------------------

  #grow(): void {
    const capacity = Math.max(64, this.#capacity * 2);
    const expires = new Float64Array(capacity);
    expires.set(this.#expires);
    this.#expires = expires;
    const links = new Int32Array(capacity * 2);
    links.set(this.#links);
    this.#links = links;
    const classes = new Uint8Array(capacity);
    classes.set(this.#classes);
    this.#classes = classes;
    const filed = new Int32Array(capacity);
    filed.set(this.#filed);
    this.#filed = filed;
    const filedAt = new Int32Array(capacity);
    filedAt.set(this.#filedAt);
    this.#filedAt = filedAt;
    this.#capacity = capacity;
  }

  #classOf(record: Readonly<StoredSession>): number {
    return record.meta.userId === undefined ? ANONYMOUS : SIGNED_IN;
  }

  /** Puts `slot` in class `cls` as its most recently used session. */
  #join(slot: number, cls: number): void {
    const links = this.#links;
    const tail = this.#tail[cls]!;
    this.#classes[slot] = cls;
    links[2 * slot] = tail;
    links[2 * slot + 1] = NONE;
    if (tail === NONE) this.#head[cls] = slot;
    else links[2 * tail + 1] = slot;
    this.#tail[cls] = slot;
  }

  #leave(slot: number): void {
    const links = this.#links;
    const cls = this.#classes[slot]!;
    const prev = links[2 * slot]!;
    const next = links[2 * slot + 1]!;
    if (prev === NONE) this.#head[cls] = next;
    else links[2 * prev + 1] = next;
    if (next === NONE) this.#tail[cls] = prev;
    else links[2 * next] = prev;
  }

  /** Marks `slot` most recently used in its class. */
  #used(slot: number): void {
    const cls = this.#classes[slot]!;
    if (this.#tail[cls] === slot) return;
    this.#leave(slot);
    this.#join(slot, cls);
  }

  #insert(key: string, record: Readonly<StoredSession>, expiresAt: number): void {
    let slot = this.#free;
    if (slot !== NONE) {
      this.#free = this.#links[2 * slot + 1]!;
      this.#keys[slot] = key;
      this.#records[slot] = record;
    } else {
      slot = this.#top++;
      if (slot === this.#capacity) this.#grow();
      this.#keys.push(key);
      this.#records.push(record);
    }
    this.#expires[slot] = expiresAt;
    this.#join(slot, this.#classOf(record));
    this.#file(slot, bucketOf(expiresAt));
    this.#slots.set(key, slot);
    this.#index(key, record.meta.userId, undefined);
  }

  #remove(slot: number): void {
    const key = this.#keys[slot]!;
    const record = this.#records[slot]!;
    this.#slots.delete(key);
    this.#leave(slot);
    this.#unfile(slot);
    this.#unindex(key, record.meta.userId);
    this.#keys[slot] = undefined;
    this.#records[slot] = undefined;
    this.#links[2 * slot + 1] = this.#free;
    this.#free = slot;
  }

  /** The live slot of `key`, or NONE; an expired session found here is removed at once. */
  #live(key: string): number {
    const slot = this.#slots.get(key);
    if (slot === undefined) return NONE;
    if (this.#expires[slot]! <= this.#now()) {
      this.#remove(slot);
      return NONE;
    }
    return slot;
  }

  // ---- eviction -----------------------------------------------------------------------------

  /** Room for one more entry: see `maxEntries` for the order. */
  #makeRoom(forSignedIn: boolean): void {
    while (this.#slots.size >= this.#max) {
      // An expired session, if the due part of the expiry index has one, goes before any other.
      if (this.#collect(this.#now(), ROOM_STEP, true) > 0) continue;
      const anonymous = this.#head[ANONYMOUS];
      if (anonymous !== NONE) this.#remove(anonymous);
      else if (forSignedIn) this.#remove(this.#head[SIGNED_IN]);
      else {
        throw new SessionError(
          'STORE_UNAVAILABLE',
          `MemoryStore is full of signed-in sessions (maxEntries ${this.#max}); a visitor's session was not stored. Raise maxEntries or use a server-backed store.`,
        );
      }
    }
  }

  // ---- expiry index -------------------------------------------------------------------------

  /** Files `slot` under bucket `id` (its expiry's bucket, or an earlier one). */
  #file(slot: number, id: number): void {
    let bucket = this.#buckets.get(id);
    if (!bucket) {
      bucket = { slots: [], next: NONE };
      this.#buckets.set(id, bucket);
      heapPush(this.#due, id);
      // Ids of emptied buckets stay in the heap until met at its top: rebuilt when they dominate.
      if (this.#due.length > 2 * this.#buckets.size + 64) {
        this.#due = [...this.#buckets.keys()].sort((a, b) => a - b); // sorted is a heap
      }
    }
    this.#filed[slot] = id;
    this.#filedAt[slot] = bucket.slots.push(slot) - 1;
  }

  #unfile(slot: number): void {
    const id = this.#filed[slot]!;
    const bucket = this.#buckets.get(id)!;
    const slots = bucket.slots;
    const last = slots.pop()!;
    if (last !== slot) {
      const at = this.#filedAt[slot]!;
      slots[at] = last;
      this.#filedAt[last] = at;
    }
    this.#filed[slot] = NONE;
    if (slots.length === 0) this.#buckets.delete(id);
  }

  /**
   * Examines up to `budget` filings of the due buckets (earliest first) and removes the sessions
   * expired at `now`; a session whose expiry has moved on is filed under its new bucket. Since
   * every live session is filed no later than its expiry's bucket, nothing expired is missed, and
   * no bucket is opened before it is due: the work is the expired sessions plus the sessions
   * extended since they were filed. A bucket that is still current (it holds sessions that have
   * not expired) gets one pass, which ends the collection. Returns the sessions removed; whether
   * due filings are left is in `#pending`. With `settledOnly`, only buckets wholly in the past
   * are examined (never the one a running gc may be passing over).
   */
  #collect(now: number, budget: number, settledOnly = false): number {
    const current = bucketOf(now);
    const expires = this.#expires;
    let removed = 0;
    this.#pending = false;
    while (budget > 0 && this.#due.length > 0) {
      const id = this.#due[0]!;
      const bucket = this.#buckets.get(id);
      if (!bucket) {
        heapPop(this.#due); // emptied since
        continue;
      }
      if (id > current || (settledOnly && id === current)) return removed;
      const slots = bucket.slots;
      let i = bucket.next === NONE ? slots.length - 1 : Math.min(bucket.next, slots.length - 1);
      for (; i >= 0 && budget > 0; i--, budget--) {
        const slot = slots[i]!;
        const expiresAt = expires[slot]!;
        if (expiresAt <= now) {
          this.#remove(slot); // swaps an already visited slot into i, or empties the bucket
          removed++;
        } else {
          const later = bucketOf(expiresAt);
          if (later !== id) {
            this.#unfile(slot);
            this.#file(slot, later);
          }
        }
      }
      if (i >= 0) {
        bucket.next = i;
        this.#pending = true;
        return removed;
      }
      bucket.next = NONE;
      if (slots.length > 0) return removed; // the current bucket: the rest has not expired
      // Emptied: #unfile has dropped it from #buckets; its id leaves the heap at the next turn.
    }
    this.#pending = budget === 0 && this.#due.length > 0 && this.#due[0]! <= current;
    return removed;
  }

  /** Set by `#collect`: due filings are left to examine. */
  #pending = false;

  // ---- user index ---------------------------------------------------------------------------

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

  // ---- the contract -------------------------------------------------------------------------

  async load(key: string): Promise<StoredSession | null> {
    checkStorageKey('MemoryStore', key);
    const slot = this.#live(key);
    if (slot === NONE) return null;
    this.#used(slot);
    return this.#records[slot]!;
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    checkStorageKey('MemoryStore', key);
    checkRecord('MemoryStore', record);
    if (this.#live(key) !== NONE) return false;
    if (!isLiveTtl(ttlMs)) return true;
    const frozen = frozenCopy(record);
    this.#makeRoom(frozen.meta.userId !== undefined);
    this.#insert(key, frozen, this.#now() + ttlMs);
    return true;
  }

  /** Synchronous from the guard check to the write: nothing can run in between. */
  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    checkStorageKey('MemoryStore', key);
    checkDelta('MemoryStore', delta);
    const slot = this.#live(key);
    if (slot === NONE) return 'gone';
    const record = this.#records[slot]!;
    if (!guardHolds(record.meta, guard)) return 'conflict';
    if (!isLiveTtl(ttlMs)) {
      this.#remove(slot);
      return 'gone';
    }
    const next = applyFrozen(record, delta);
    this.#records[slot] = next;
    const expiresAt = this.#now() + ttlMs;
    this.#expires[slot] = expiresAt;
    // A later expiry stays filed where it was (gc re-files it when that bucket comes due); an
    // earlier one is filed again, so that gc finds it in time.
    const id = bucketOf(expiresAt);
    if (id < this.#filed[slot]!) {
      this.#unfile(slot);
      this.#file(slot, id);
    }
    const previousUser = record.meta.userId;
    const userId = next.meta.userId;
    if (userId !== previousUser) {
      // Login, logout or a change of user: the session moves to its (new) class as most recent.
      this.#index(key, userId, previousUser);
      this.#leave(slot);
      this.#join(slot, this.#classOf(next));
    }
    return 'ok';
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'> {
    return (await this.commit(key, { set: {}, unset: [], meta }, ttlMs)) === 'ok' ? 'ok' : 'gone';
  }

  async destroy(key: string): Promise<void> {
    checkStorageKey('MemoryStore', key);
    const slot = this.#slots.get(key);
    if (slot !== undefined) this.#remove(slot);
  }

  async sessionsOf(userId: string): Promise<SessionSummary[]> {
    const out: SessionSummary[] = [];
    for (const key of [...(this.#byUser.get(userId) ?? [])]) {
      const slot = this.#live(key);
      if (slot !== NONE) out.push({ key, meta: this.#records[slot]!.meta });
    }
    return out;
  }

  /**
   * Removes the sessions expired at `now` and returns how many. Only the expiry buckets that are
   * due are visited, in slices of at most about 2 ms with the event loop free in between;
   * concurrent calls run one after the other. Expired sessions are invisible to `load` and
   * `commit` whether or not gc has run.
   */
  gc(now = this.#now()): Promise<number> {
    const run = this.#gcQueue.then(() => this.#gc(now));
    this.#gcQueue = run.catch(() => undefined);
    return run;
  }

  async #gc(now: number): Promise<number> {
    let removed = 0;
    for (;;) {
      const started = performance.now();
      do {
        removed += this.#collect(now, GC_STEP);
        if (!this.#pending) return removed;
      } while (performance.now() - started < GC_SLICE_MS);
      await yieldToEventLoop();
    }
  }
}
