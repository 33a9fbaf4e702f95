/**
 * The store contract. A store never sees a cookie or a token: it is handed the session's record
 * key (a random, stable identifier that is not a credential) and opaque, individually encoded
 * values. The cookie's secret part is known to the store only as a hash, inside the metadata
 * (`meta.h`), and compared by the manager.
 *
 * Guarantees every store must give (the conformance suite in `sessionflow/testing` checks them):
 * - `load` never returns an expired record, and removes the one it finds expired.
 * - `create` never overwrites: it returns false if the key exists.
 * - `commit` is the one primitive for every change of a live record, identity changes
 *   included: it checks the guard and merges the delta key by key (set + unset, or with
 *   `retain`, drops every other value) into the stored record as one atomic step. It never
 *   creates a record: if the key is gone (destroyed, expired) it writes nothing and answers
 *   'gone'; if the record is there but the guard does not hold, it writes nothing and answers
 *   'conflict'. This is what keeps a logout from being undone by a request that was still in
 *   flight, and what makes an ID change race-free: a regeneration is a commit guarded by the
 *   handle the request loaded.
 * - `touch`, if implemented, updates metadata and TTL only, with the same 'gone' rule.
 * - `destroy` is idempotent.
 */

/** Metadata the manager keeps beside the values. All times are milliseconds since the epoch. */
export interface SessionMeta {
  /** When the record was created (login resets it). */
  createdAt: number;
  /** Last time a request was seen; the idle timeout counts from here. */
  lastSeenAt: number;
  /** Absolute deadline: the session is dead after this instant whatever the activity. */
  deadline: number;
  /** When the user last authenticated on this session, if ever. */
  authAt?: number;
  /** The authenticated user's id, kept here so stores can index sessions by user. */
  userId?: string;
  /** Short hash of the user agent, when user-agent binding is on. */
  ua?: string;
  /** Network prefix of the client address, when IP binding is on. */
  ip?: string;
  /** Hash of the cookie token that currently opens this record (the handle). */
  h?: string;
  /** Hash of the handle this one replaced at the last ID change, kept to recognise its reuse. */
  ph?: string;
  /** The previous handle still opens the record until this instant (renewal grace). */
  phUntil?: number;
  /** When the current handle was issued; absent means `createdAt`. */
  idAt?: number;
  /**
   * "Remember me" (`session.rememberFor()`): the session's cookie is persistent (Max-Age) until
   * this instant, never past `deadline`; absent means the `cookie.maxAge` option decides.
   */
  persistUntil?: number;
  /** With encryption on: MAC over the identity fields, bound to the record key. */
  mac?: string;
}

/** What a store returns from `load`. `values` holds each value encoded on its own. */
export interface StoredSession {
  meta: SessionMeta;
  values: Record<string, string>;
}

/**
 * The changes one request made: keys to set, keys to remove, metadata to overwrite (a metadata
 * field set to `undefined` is removed).
 */
export interface SessionDelta {
  set: Record<string, string>;
  unset: string[];
  meta?: Partial<SessionMeta>;
  /**
   * When present, every stored value whose field is neither here nor in `set` is removed, in the
   * same atomic step (login drops the pre-login data, including data written concurrently).
   */
  retain?: string[];
}

/**
 * A condition on the stored metadata, checked atomically with the write. Omitted fields are not
 * checked.
 */
export interface CommitGuard {
  /** `meta.h` must equal this (the request still holds the current handle). */
  handle?: string;
  /** `meta.userId` must equal this; `null` means the record must have no user. */
  userId?: string | null;
}

/** A live session as listed by `sessionsOf`. */
export interface SessionSummary {
  key: string;
  meta: SessionMeta;
}

/** Optional abilities a store declares; the manager checks them before using optional methods. */
export interface StoreCapabilities {
  /** `sessionsOf(userId)` is implemented (a user -> sessions index). */
  listByUser: boolean;
  /** `gc()` does something useful (stores with native expiry may not need it). */
  gc: boolean;
  /** The backend expires records on its own (Redis, Memcached). */
  nativeTtl: boolean;
}

/** 'gone': no live record under the key; 'conflict': the record is there, the guard failed. */
export type CommitResult = 'ok' | 'gone' | 'conflict';

/** The contract every backend implements. See the module comment for its guarantees. */
export interface SessionStore {
  readonly capabilities: StoreCapabilities;
  load(key: string): Promise<StoredSession | null>;
  create(key: string, record: StoredSession, ttlMs: number): Promise<boolean>;
  commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult>;
  /** Metadata and TTL only; when absent the manager commits an empty delta instead. */
  touch?(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'>;
  destroy(key: string): Promise<void>;
  sessionsOf?(userId: string): Promise<SessionSummary[]>;
  /**
   * For stores that cannot list sessions by user: makes every session of `userId` that exists
   * now dead for good, except `except`, as seen by every later `load` and `commit`.
   */
  revokeUser?(userId: string, except?: string): Promise<void>;
  gc?(now?: number): Promise<number>;
  close?(): Promise<void>;
  /** The manager hands its `warn` here, so a store reports corrupt records where the app looks. */
  setWarn?(warn: (message: string) => void): void;
}

/** True if the record's metadata satisfies the guard (for stores that merge in application code). */
export function guardHolds(meta: SessionMeta, guard: CommitGuard | undefined): boolean {
  if (!guard) return true;
  if (guard.handle !== undefined && meta.h !== guard.handle) return false;
  if (guard.userId !== undefined && (meta.userId ?? null) !== guard.userId) return false;
  return true;
}

/** Applies a delta to a record in place; stores that merge in application code share this. */
export function applyDelta(record: StoredSession, delta: SessionDelta): StoredSession {
  if (delta.retain) {
    const keep = new Set(delta.retain);
    for (const k of Object.keys(record.values))
      if (!keep.has(k) && !Object.hasOwn(delta.set, k)) delete record.values[k];
  }
  for (const k of delta.unset) delete record.values[k];
  for (const [k, v] of Object.entries(delta.set)) record.values[k] = v;
  if (delta.meta) {
    for (const [k, v] of Object.entries(delta.meta)) {
      if (v === undefined) delete (record.meta as unknown as Record<string, unknown>)[k];
      else (record.meta as unknown as Record<string, unknown>)[k] = v;
    }
  }
  return record;
}

/** A record with a null prototype for values, so that keys such as `__proto__` stay plain data. */
export function cloneRecord(record: StoredSession): StoredSession {
  const values: Record<string, string> = Object.create(null);
  for (const [k, v] of Object.entries(record.values)) values[k] = v;
  return { meta: { ...record.meta }, values };
}

/** Checks a TTL handed to a store: a non-positive TTL means the record must not exist anymore. */
export function isLiveTtl(ttlMs: number): boolean {
  return Number.isFinite(ttlMs) && ttlMs > 0;
}
