/**
 * The store contract. A store never sees a cookie or a token: it is handed the storage key
 * (a SHA-256 of the token) and opaque, individually encoded values.
 *
 * Guarantees every store must give (the conformance suite in `sessionflow/testing` checks them):
 * - `load` never returns an expired record, and removes the one it finds expired.
 * - `create` never overwrites: it returns false if the key exists.
 * - `commit` merges the delta key by key (set + unset) into the stored record atomically and
 *   never creates a record: if the key is gone (destroyed, regenerated away, expired) it writes
 *   nothing and answers 'gone'. This is what keeps a logout from being undone by a request that
 *   was still in flight.
 * - `touch` updates metadata and TTL only, with the same 'gone' rule.
 * - `destroy` is idempotent.
 */

/** Metadata the manager keeps beside the values. All times are milliseconds since the epoch. */
export interface SessionMeta {
  /** When the record was created (login resets it through regeneration). */
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
  /** When this record's ID was issued by a regeneration; absent means `createdAt`. */
  idAt?: number;
  /** Set when the ID was renewed away: the record is then only a pointer to `successor`. */
  renewedAt?: number;
  /** Storage key of the record that replaced this one at renewal. */
  successor?: string;
}

/** What a store returns from `load`. `values` holds each value encoded on its own. */
export interface StoredSession {
  meta: SessionMeta;
  values: Record<string, string>;
}

/** The changes one request made: keys to set, keys to remove, metadata to overwrite. */
export interface SessionDelta {
  set: Record<string, string>;
  unset: string[];
  meta?: Partial<SessionMeta>;
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

export type CommitResult = 'ok' | 'gone';

/** The contract every backend implements. See the module comment for its guarantees. */
export interface SessionStore {
  readonly capabilities: StoreCapabilities;
  load(key: string): Promise<StoredSession | null>;
  create(key: string, record: StoredSession, ttlMs: number): Promise<boolean>;
  commit(key: string, delta: SessionDelta, ttlMs: number): Promise<CommitResult>;
  touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<CommitResult>;
  destroy(key: string): Promise<void>;
  sessionsOf?(userId: string): Promise<SessionSummary[]>;
  gc?(now?: number): Promise<number>;
  close?(): Promise<void>;
}

/** Applies a delta to a record in place; stores that merge in application code share this. */
export function applyDelta(record: StoredSession, delta: SessionDelta): StoredSession {
  for (const k of delta.unset) delete record.values[k];
  for (const [k, v] of Object.entries(delta.set)) record.values[k] = v;
  if (delta.meta) Object.assign(record.meta, delta.meta);
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
