import { createHash } from 'node:crypto';
import { auditTag } from '../crypto/ids.js';
import { SessionError, storeUnavailable } from '../errors.js';
import { asMeta, asValues, CorruptLog, checkDelta, checkRecord, checkStorageKey } from './kit.js';
import { Budget, checkTimeout, DEFAULT_TIMEOUT_MS } from './sql-common.js';
import {
  applyDelta,
  type CommitGuard,
  type CommitResult,
  guardHolds,
  isLiveTtl,
  type SessionDelta,
  type SessionMeta,
  type SessionStore,
  type StoredSession,
} from './store.js';

/**
 * The part of a `memcached` (npm) client this store calls. Structural, so the store carries no
 * type or runtime dependency on the driver; an instance of `new Memcached(servers, options)`
 * fits as it is.
 */
export interface MemcachedClient {
  gets(key: string, callback: (err: unknown, data: unknown) => void): void;
  cas(
    key: string,
    value: string,
    cas: string,
    lifetime: number,
    callback: (err: unknown, ok: unknown) => void,
  ): void;
  add(key: string, value: string, lifetime: number, callback: (err: unknown, ok: unknown) => void): void;
  del(key: string, callback: (err: unknown, ok: unknown) => void): void;
  /** The `memcached` client's own key prefix, if configured; it counts against the 250-byte key limit. */
  readonly namespace?: string;
  /** Read to refuse clients that drop a failed server from the hash ring (see the constructor). */
  readonly remove?: boolean;
}

export interface MemcachedStoreOptions {
  /** Prepended to every storage key; printable ASCII without spaces, at most 100 characters. @default 'sf:' */
  prefix?: string;
  /**
   * Largest record, in bytes of JSON, the store writes; larger ones throw VALUE_TOO_LARGE before any
   * I/O. Keep it under the server's item size (`-I`, 1 MiB by default) and the client's `maxValue`.
   * @default 1000000
   */
  maxItemBytes?: number;
  /** Compare-and-swap attempts of one commit before it gives up under contention (STORE_UNAVAILABLE). @default 16 */
  casAttempts?: number;
  /**
   * Longest time one store operation may take, in milliseconds, all its memcached calls and
   * compare-and-swap retries included. Past it the operation fails with `SessionError`
   * `STORE_UNAVAILABLE` (the manager answers 503) and sends nothing more.
   * @default 1000
   */
  timeoutMs?: number;
  /** @deprecated The former name of `timeoutMs` (then per call, 2000 by default); used when `timeoutMs` is not given. */
  operationTimeoutMs?: number;
  /**
   * Called when an item cannot be parsed; the session (or the user's revocation state) is then
   * treated as absent. Receives the storage key for a session item, `user record <tag>` for a
   * user item. @default the manager's `warn` (see `setWarn`), else console.warn
   */
  onCorrupt?: (key: string, reason: string) => void;
  /** Clock in milliseconds, for tests. @default Date.now */
  now?: () => number;
}

/**
 * Options for the `memcached` client that turn an outage into errors, which the manager answers
 * with 503, instead of cache misses, which would log users out. Spread them into the client's
 * options: `new Memcached(servers, { ...recommendedMemcachedOptions })`.
 */
export const recommendedMemcachedOptions = Object.freeze({
  /**
   * Connection-pool retries, 10 ms growing to 200 ms. The client's defaults (1 s growing by 3x)
   * hold a request ~100 s when a server is down; no retries at all fail a cold burst of more than
   * `poolSize` requests with "connection pool is full", which the client then takes for a failed server.
   */
  retries: 4,
  minTimeout: 10,
  factor: 2,
  maxTimeout: 200,
  /** Connect timeout, milliseconds. */
  timeout: 1000,
  /** After an error, fail fast for this long, then try the server again. */
  retry: 1000,
  /** Never declare a server dead: a dead server waits for `reconnect`, which probes it with `ping`. */
  failures: Number.MAX_SAFE_INTEGER,
  /** The `ping` probe is still armed by bursts of errors; push it to the longest timer Node allows. */
  reconnect: 2_147_483_647,
  /** Never drop a failed server from the ring: its keys would silently map to another server and miss. */
  remove: false,
});

/** What one memcached session item holds: the session plus its exact expiry, JSON-encoded. */
interface ItemRecord {
  v: 1;
  /** Milliseconds since the epoch; memcached's own TTL is only accurate to a second. */
  expiresAt: number;
  /**
   * The revocation generation of the user the session was authenticated under (see
   * `revokeUser`). Absent on sessions without a user (and read as 0 on older items). Kept beside
   * `meta`, not in it, so the manager never sees, copies or overwrites it.
   */
  ug?: number;
  meta: SessionMeta;
  values: Record<string, string>;
}

/** A decoded session item. */
interface Decoded extends StoredSession {
  expiresAt: number;
  ug: number | undefined;
}

/** What one user item holds (`prefix + 'u:' + sha256(userId)`): the user's revocation state. */
interface UserRecord {
  /** Sessions of the user stamped with a lower generation are dead. 0 when there is no user item. */
  gen: number;
  /** The one session kept alive by the last `revokeUser`... */
  except?: string;
  /** ...provided it was stamped with at least this generation (it was alive just before). */
  exceptGen?: number;
}

interface Got {
  cas: string;
  raw: unknown;
}

const STORE_NAME = 'MemcachedStore';
/** Longest storage key `checkStorageKey` accepts; the prefix budget is computed with it. */
const MAX_STORAGE_KEY = 128;
/** Printable ASCII without space: memcached keys must not contain whitespace or control characters. */
const PREFIX = /^[\x21-\x7e]{0,100}$/;
const MAX_KEY_BYTES = 250;
/** memcached reads an expiration above 30 days as an absolute unix time. */
const MAX_RELATIVE_SECONDS = 60 * 60 * 24 * 30;
/** Largest backoff window: measured with 100 writers on one session, 50 ms ran out of attempts, 200 ms did not. */
const BACKOFF_CAP_MS = 200;
/** memcached's "never expires": the user item must outlive every session it governs. */
const NO_EXPIRY = 0;
/** Users whose last seen generation a store remembers, as the stamp a signed-in `create` tries first. */
const GENERATION_CACHE = 4096;

/**
 * The expiration to send for a TTL. One second is added because memcached's clock ticks once a
 * second: a relative TTL of n seconds can end up to a second early (measured: a 1 s item lived
 * 187-893 ms). The exact deadline is `expiresAt`, checked on every read.
 */
function memcachedExpiration(ttlMs: number, nowMs: number): number {
  const seconds = Math.ceil(ttlMs / 1000) + 1;
  if (seconds <= MAX_RELATIVE_SECONDS) return seconds;
  return Math.ceil((nowMs + ttlMs) / 1000) + 1;
}

function asError(err: unknown): Error {
  if (err instanceof Error) return err;
  if (Array.isArray(err)) return new AggregateError(err.map(asError), 'memcached reported several errors');
  return new Error(String(err));
}

function isNotStored(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { notStored?: unknown }).notStored === true;
}

const isGeneration = (value: unknown): value is number =>
  Number.isSafeInteger(value) && (value as number) >= 0;

/**
 * True if a session of the user, under storage key `key` and stamped with generation `ug`, was
 * revoked: stamped below the user's generation, unless it is the session the last `revokeUser`
 * kept and it was alive just before that call.
 */
function isRevoked(key: string, ug: number | undefined, user: UserRecord): boolean {
  const stamp = ug ?? 0;
  if (stamp >= user.gen) return false;
  return !(user.except === key && stamp >= (user.exceptGen ?? user.gen - 1));
}

/**
 * The user record after one more `revokeUser`. The generation also never falls below the clock,
 * so a revocation made after the user item was lost (evicted, restarted) still outranks every
 * stamp handed out under the lost item. The kept session stays alive only if it was alive just
 * before: stamped at the old generation or later, or the session the previous call kept (so
 * "log out my other devices" twice in a row keeps the caller's device).
 */
function nextRevocation(old: UserRecord, except: string | undefined, nowMs: number): UserRecord {
  const gen = Math.max(old.gen + 1, Math.floor(nowMs));
  if (except === undefined) return { gen };
  const exceptGen = old.except === except ? Math.min(old.exceptGen ?? old.gen - 1, old.gen) : old.gen;
  return { gen, except, exceptGen: Math.max(0, exceptGen) };
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Sessions in memcached, one item per session, spread over the client's servers by its
 * consistent hashing.
 *
 * - The item is JSON `{ v, expiresAt, ug?, meta, values }` under `prefix + storageKey`;
 *   memcached's TTL removes it, and `expiresAt` (milliseconds) makes every read exact.
 * - `create` is `add` (atomic, never overwrites). `commit` and `touch` are `gets`, guard check and
 *   merge, `cas`, retried with jittered backoff while another writer wins; a miss is 'gone', a
 *   guard that does not hold on the value `gets` read is 'conflict', and nothing is ever inserted,
 *   so a commit racing a logout cannot resurrect the session.
 * - Memcached cannot enumerate keys: no `sessionsOf` and no `gc` (items expire on their own).
 *   `revokeUser` works with a per-user revocation generation instead (see its comment).
 * - Every failure to reach a server is thrown (the manager answers 503), never read as a miss.
 *
 * @example
 * import Memcached from 'memcached';
 * import { MemcachedStore, recommendedMemcachedOptions } from 'sessionflow/stores/memcached';
 * const client = new Memcached(['10.0.0.5:11211', '10.0.0.6:11211'], { ...recommendedMemcachedOptions });
 * const store = new MemcachedStore(client, { prefix: 'myapp:sess:' });
 */
export class MemcachedStore implements SessionStore {
  readonly capabilities = { listByUser: false, gc: false, nativeTtl: true } as const;
  readonly prefix: string;
  readonly #client: MemcachedClient;
  readonly #maxItemBytes: number;
  readonly #casAttempts: number;
  /** The bound of one operation, in milliseconds. */
  readonly timeoutMs: number;
  readonly #corrupt: CorruptLog;
  /** With a custom `onCorrupt` the storage key is handed over; logs get its audit tag. */
  readonly #customCorrupt: boolean;
  readonly #now: () => number;
  /**
   * The last generation this store read or wrote per user (bounded, oldest dropped first). Only
   * a guess: a signed-in `create` stamps it, then keeps it only if the generation read in the
   * same round trip is equal (see `create`). Missing means 0, the generation of a user never revoked.
   */
  readonly #generations = new Map<string, number>();

  constructor(client: MemcachedClient, options: MemcachedStoreOptions = {}) {
    if (!client || typeof client.gets !== 'function' || typeof client.cas !== 'function') {
      throw new SessionError(
        'INVALID_OPTION',
        'MemcachedStore needs a `memcached` client: new MemcachedStore(new Memcached(servers, options)).',
      );
    }
    // `remove` drops a failed server from the hash ring (and `failOverServers`, which only acts
    // with it, puts a spare in its place): its keys then map to another server and miss, which
    // logs users out, and a logout made meanwhile is undone wherever the old server is still used
    // (another process, a restart) because its items are still there.
    if (client.remove === true) {
      throw new SessionError(
        'INVALID_OPTION',
        'MemcachedStore refuses a memcached client with `remove: true` (with or without `failOverServers`): it turns an outage into missing sessions and can bring logged-out sessions back. Use `recommendedMemcachedOptions`.',
      );
    }
    const prefix = options.prefix ?? 'sf:';
    const namespace = typeof client.namespace === 'string' ? client.namespace : '';
    if (!PREFIX.test(prefix) || !PREFIX.test(namespace)) {
      throw new SessionError(
        'INVALID_OPTION',
        'MemcachedStore `prefix` (and the client `namespace`) must be printable ASCII without spaces, at most 100 characters.',
      );
    }
    if (namespace.length + prefix.length + MAX_STORAGE_KEY > MAX_KEY_BYTES) {
      throw new SessionError(
        'INVALID_OPTION',
        `MemcachedStore \`prefix\` plus the client \`namespace\` must leave room for a ${MAX_STORAGE_KEY}-byte key within memcached's ${MAX_KEY_BYTES}-byte limit.`,
      );
    }
    this.prefix = prefix;
    this.#client = client;
    this.#maxItemBytes = positiveInteger(options.maxItemBytes, 1_000_000, 'maxItemBytes');
    this.#casAttempts = positiveInteger(options.casAttempts, 16, 'casAttempts');
    this.timeoutMs = checkTimeout(
      STORE_NAME,
      options.timeoutMs ?? options.operationTimeoutMs,
      DEFAULT_TIMEOUT_MS,
    );
    this.#corrupt = new CorruptLog(options.onCorrupt);
    this.#customCorrupt = options.onCorrupt !== undefined;
    this.#now = options.now ?? Date.now;
  }

  /** The manager hands its `warn` here: corrupt items are reported where the application looks. */
  setWarn(warn: (message: string) => void): void {
    this.#corrupt.attach(warn);
  }

  /** The item key of a storage key; refuses anything that could break the text protocol (CVE-2020-13254). */
  #itemKey(key: string): string {
    checkStorageKey(STORE_NAME, key);
    return this.prefix + key;
  }

  /**
   * The item key of a user's revocation record. The user id is hashed, so any id fits memcached's
   * key rules; `:` never occurs in a storage key, so it cannot collide with a session item.
   */
  #userItemKey(userId: string): string {
    return `${this.prefix}u:${createHash('sha256').update(userId).digest('base64url')}`;
  }

  #report(storageKey: string | undefined, userId: string | undefined, reason: string): void {
    const where =
      storageKey !== undefined
        ? this.#customCorrupt
          ? storageKey
          : `session ${auditTag(storageKey)}`
        : `user record ${auditTag(`user:${userId}`)}`;
    this.#corrupt.report(STORE_NAME, where, reason);
  }

  #budget(operation: string): Budget {
    return new Budget(STORE_NAME, operation, this.timeoutMs);
  }

  /**
   * Runs one client call as a promise, within what is left of the operation's budget: the client
   * never answers on a half-open socket. Once the budget is spent, nothing more is sent.
   */
  #call<T>(
    operation: string,
    budget: Budget,
    start: (done: (err: unknown, result: T) => void) => void,
  ): Promise<T> {
    const left = budget.remaining();
    if (left === 0) return Promise.reject(budget.error());
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        settled = true;
        reject(budget.error(new Error(`memcached ${operation}: no answer`)));
      }, left);
      timer.unref();
      const done = (err: unknown, result: T) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(storeUnavailable(`memcached ${operation}`, asError(err)));
        else resolve(result);
      };
      try {
        start(done);
      } catch (err) {
        done(err ?? new Error('memcached client threw'), undefined as T);
      }
    });
  }

  /** One `gets`: the raw value and its CAS token, or null on a miss. */
  async #gets(itemKey: string, budget: Budget): Promise<Got | null> {
    const data = await this.#call<unknown>('gets', budget, (done) => this.#client.gets(itemKey, done));
    if (data === undefined || data === null || data === false) return null;
    if (typeof data !== 'object') throw storeUnavailable('memcached gets', new Error('unexpected reply'));
    // The client answers { [keyAsSent]: value, cas }; the key as sent may carry its namespace.
    let raw: unknown;
    let cas: unknown;
    for (const [k, v] of Object.entries(data)) {
      if (k === 'cas') cas = v;
      else raw = v;
    }
    if (typeof cas !== 'string')
      throw storeUnavailable('memcached gets', new Error('reply without a CAS token'));
    return { cas, raw };
  }

  /** Parses a session item; an unreadable one is reported and answered as null (absent). */
  #decode(storageKey: string, raw: unknown): Decoded | null {
    if (typeof raw !== 'string') {
      this.#report(storageKey, undefined, 'not a string item');
      return null;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      this.#report(storageKey, undefined, 'not JSON');
      return null;
    }
    const item = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Partial<ItemRecord>;
    // The record checks every store shares (kit.ts); values come back with a null prototype, so
    // that a field named `__proto__` stays plain data through a merge.
    const meta = asMeta(item.meta);
    const values = asValues(item.values);
    if (
      item.v !== 1 ||
      typeof item.expiresAt !== 'number' ||
      (item.ug !== undefined && !isGeneration(item.ug)) ||
      !meta ||
      !values
    ) {
      this.#report(storageKey, undefined, 'not a session record');
      return null;
    }
    return { meta: { ...meta }, values, expiresAt: item.expiresAt, ug: item.ug };
  }

  #encode(record: StoredSession, expiresAt: number, ug: number | undefined): string {
    const item: ItemRecord = { v: 1, expiresAt, meta: record.meta, values: record.values };
    if (ug !== undefined) item.ug = ug;
    const body = JSON.stringify(item);
    const bytes = Buffer.byteLength(body);
    // Checked here because the `memcached` client reports a server-side SERVER_ERROR as a silent
    // `false` and marks the server failed, which would look like a conflict, not like a size problem.
    if (bytes > this.#maxItemBytes) {
      throw new SessionError(
        'VALUE_TOO_LARGE',
        `The session record would be ${bytes} bytes, over MemcachedStore's maxItemBytes of ${this.#maxItemBytes}; nothing was written. Keep sessions small (store ids, not objects).`,
      );
    }
    return body;
  }

  /** Reads a session item: null when missing or unreadable (reported). */
  async #fetch(
    storageKey: string,
    itemKey: string,
    budget: Budget,
  ): Promise<{ cas: string; record: Decoded | null } | null> {
    const got = await this.#gets(itemKey, budget);
    return got && { cas: got.cas, record: this.#decode(storageKey, got.raw) };
  }

  #decodeUser(userId: string, raw: unknown): UserRecord | null {
    let parsed: Partial<UserRecord> | null = null;
    try {
      parsed = typeof raw === 'string' ? (JSON.parse(raw) as Partial<UserRecord> | null) : null;
    } catch {
      // reported below
    }
    if (
      parsed &&
      typeof parsed === 'object' &&
      isGeneration(parsed.gen) &&
      (parsed.except === undefined || typeof parsed.except === 'string') &&
      (parsed.exceptGen === undefined || isGeneration(parsed.exceptGen))
    ) {
      return { gen: parsed.gen, except: parsed.except, exceptGen: parsed.exceptGen };
    }
    this.#report(undefined, userId, 'not a user revocation record');
    return null;
  }

  /**
   * The user's revocation state. No item (never revoked, or evicted) and an unreadable item
   * (reported) both read as generation 0: nothing is revoked.
   */
  async #user(userId: string, budget: Budget): Promise<UserRecord> {
    const got = await this.#gets(this.#userItemKey(userId), budget);
    const user = (got && this.#decodeUser(userId, got.raw)) ?? { gen: 0 };
    this.#remember(userId, user.gen);
    return user;
  }

  #remember(userId: string, gen: number): void {
    const cache = this.#generations;
    cache.delete(userId);
    if (gen !== 0) cache.set(userId, gen);
    if (cache.size > GENERATION_CACHE) cache.delete(cache.keys().next().value as string);
  }

  #add(itemKey: string, body: string, lifetime: number, budget: Budget): Promise<boolean> {
    return this.#call<boolean>('add', budget, (done) =>
      this.#client.add(itemKey, body, lifetime, (err, ok) =>
        // NOT_STORED (the key exists) arrives as an error object flagged `notStored`.
        isNotStored(err) ? done(undefined, false) : done(err, ok === true),
      ),
    );
  }

  #cas(itemKey: string, body: string, cas: string, lifetime: number, budget: Budget): Promise<boolean> {
    // false covers both EXISTS (another writer won) and NOT_FOUND (deleted): the caller reads again.
    return this.#call<boolean>('cas', budget, (done) =>
      this.#client.cas(itemKey, body, cas, lifetime, (err, ok) => done(err, ok === true)),
    );
  }

  #del(itemKey: string, budget: Budget): Promise<void> {
    return this.#call<void>('delete', budget, (done) =>
      this.#client.del(itemKey, (err) => done(err, undefined)),
    );
  }

  #contention(operation: string): SessionError {
    return storeUnavailable(
      `memcached ${operation}`,
      new Error(`the item changed under ${this.#casAttempts} consecutive compare-and-swap attempts`),
    );
  }

  /** Full jitter over an exponential window, so that writers that lost a round spread out. */
  #backoff(attempt: number, budget: Budget): Promise<void> {
    return sleep(Math.min(budget.remaining(), Math.random() * Math.min(BACKOFF_CAP_MS, 2 ** (attempt + 1))));
  }

  /**
   * True if the session read under `key` belongs to a user whose `revokeUser` came after it was
   * stamped. Costs one read of the user item, for authenticated sessions only. `user` receives the
   * state read, so that a commit can stamp with it.
   */
  async #revoked(
    key: string,
    record: Decoded,
    budget: Budget,
  ): Promise<{ revoked: boolean; user?: UserRecord }> {
    const userId = record.meta.userId;
    if (typeof userId !== 'string') return { revoked: false };
    const user = await this.#user(userId, budget);
    return { revoked: isRevoked(key, record.ug, user), user };
  }

  async load(key: string): Promise<StoredSession | null> {
    const itemKey = this.#itemKey(key);
    const budget = this.#budget('load');
    const found = await this.#fetch(key, itemKey, budget);
    if (!found?.record) return null;
    // Expired to the millisecond but still held by memcached for up to two seconds, or revoked:
    // either way dead for good (commit answers 'gone' and never rewrites it), so an unconditional
    // delete is safe; if the delete fails the answer is still known (absent) and memcached drops
    // the item on its own.
    if (found.record.expiresAt <= this.#now() || (await this.#revoked(key, found.record, budget)).revoked) {
      await this.#del(itemKey, budget).catch(() => {});
      return null;
    }
    return { meta: found.record.meta, values: found.record.values };
  }

  /**
   * `add`, which never overwrites. A session created signed in is stamped with its user's
   * generation; to cost one round trip, the `gets` of the user item and the `add` of the session
   * are sent together, the `add` stamped with the generation this store last saw for the user
   * (0 if none). The stamp is kept only if it equals the generation read: the outcome is then
   * the one of reading first and writing after (the session is unreachable until `create`
   * returns, so when it landed between the two cannot be observed). Otherwise the session is
   * stamped again with the generation read (`gets` + `cas`), before `create` returns.
   */
  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    const itemKey = this.#itemKey(key);
    checkRecord(STORE_NAME, record);
    const budget = this.#budget('create');
    if (!isLiveTtl(ttlMs)) {
      // Nothing to write; only say whether a live session already holds the key.
      const found = await this.#fetch(key, itemKey, budget);
      return !(found?.record && found.record.expiresAt > this.#now());
    }
    const now = this.#now();
    const expiresAt = now + ttlMs;
    const lifetime = memcachedExpiration(ttlMs, now);
    const userId = record.meta.userId;
    if (typeof userId !== 'string') {
      return this.#insert(key, itemKey, this.#encode(record, expiresAt, undefined), lifetime, budget, true);
    }
    const guess = this.#generations.get(userId) ?? 0;
    const guessed = this.#encode(record, expiresAt, guess);
    const [read, added] = await Promise.allSettled([
      this.#user(userId, budget),
      this.#add(itemKey, guessed, lifetime, budget),
    ]);
    if (read.status === 'rejected') {
      // The stamp is unchecked: the session must not stay (nobody knows its key yet).
      if (added.status === 'fulfilled' && added.value) await this.#del(itemKey, budget).catch(() => {});
      throw read.reason;
    }
    if (added.status === 'rejected') throw added.reason;
    const gen = read.value.gen;
    if (added.value && gen === guess) return true;
    let body: string;
    try {
      body = gen === guess ? guessed : this.#encode(record, expiresAt, gen);
    } catch (err) {
      if (added.value) await this.#del(itemKey, budget).catch(() => {});
      throw err;
    }
    // A wrong stamp (a generation that changed since this store last saw it, or a user item that
    // was lost): a stamp below the generation read would kill a valid login, one above would let
    // the session outlive a later revokeUser. Stamped again, only if the item is still ours.
    if (added.value) return this.#restamp(itemKey, guessed, body, lifetime, budget);
    return this.#insert(key, itemKey, body, lifetime, budget, false);
  }

  /**
   * Writes a new session item without ever overwriting a live one: `add`; if the key is held by
   * an item that is expired or unreadable but not yet dropped, `gets` + `cas` over it.
   * `addFirst` false: an `add` was just refused, start with the read.
   */
  async #insert(
    key: string,
    itemKey: string,
    body: string,
    lifetime: number,
    budget: Budget,
    addFirst: boolean,
  ): Promise<boolean> {
    for (let attempt = 0; attempt < this.#casAttempts; attempt++) {
      if ((addFirst || attempt > 0) && (await this.#add(itemKey, body, lifetime, budget))) return true;
      const found = await this.#fetch(key, itemKey, budget);
      if (!found) continue; // deleted between the add and the read: add again
      if (found.record && found.record.expiresAt > this.#now()) return false;
      // An expired or unreadable item memcached has not dropped yet: replace it, atomically.
      if (await this.#cas(itemKey, body, found.cas, lifetime, budget)) return true;
    }
    throw this.#contention('create');
  }

  /** Replaces the item this `create` just added (`written`) with `body`, if it is still that item. */
  async #restamp(
    itemKey: string,
    written: string,
    body: string,
    lifetime: number,
    budget: Budget,
  ): Promise<boolean> {
    for (let attempt = 0; attempt < this.#casAttempts; attempt++) {
      const got = await this.#gets(itemKey, budget);
      // Gone (evicted) before anyone knew its key: written again, `add` still never overwrites.
      if (!got) {
        if (await this.#add(itemKey, body, lifetime, budget)) return true;
        continue;
      }
      // Another item took the key (ours expired first): the key is taken, as for a refused `add`.
      if (got.raw !== written) return false;
      if (await this.#cas(itemKey, body, got.cas, lifetime, budget)) return true;
    }
    throw this.#contention('create');
  }

  /**
   * `gets`, then on the value read: liveness (expiry, revocation), the guard, the merge, the
   * user stamp; then `cas`, which writes only if nothing changed since the `gets`. So the guard
   * check and the write are one atomic step, and a guard failure writes nothing.
   */
  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    const itemKey = this.#itemKey(key);
    checkDelta(STORE_NAME, delta);
    const budget = this.#budget('commit');
    if (!isLiveTtl(ttlMs)) {
      await this.#del(itemKey, budget);
      return 'gone';
    }
    for (let attempt = 0; ; attempt++) {
      const found = await this.#fetch(key, itemKey, budget);
      // Never an insert: a missing, unreadable or expired item stays gone.
      if (!found?.record || found.record.expiresAt <= this.#now()) return 'gone';
      const current = found.record;
      const { revoked, user } = await this.#revoked(key, current, budget);
      if (revoked) {
        await this.#del(itemKey, budget).catch(() => {});
        return 'gone';
      }
      if (!guardHolds(current.meta, guard)) return 'conflict';
      if (attempt >= this.#casAttempts) throw this.#contention('commit');
      const { userId: oldUserId, authAt: oldAuthAt } = current.meta;
      const merged = applyDelta(current, delta);
      const newUserId = merged.meta.userId;
      let ug: number | undefined;
      if (typeof newUserId === 'string') {
        if (newUserId === oldUserId && merged.meta.authAt === oldAuthAt) ug = current.ug;
        // Login or reauthentication: stamp with the generation read before this write (the one
        // just read for the same user, or the new user's). A revokeUser that lands between that
        // read and the `cas` leaves the old generation on the session, which is then dead.
        else ug = newUserId === oldUserId && user ? user.gen : (await this.#user(newUserId, budget)).gen;
      }
      const now = this.#now();
      const body = this.#encode(merged, now + ttlMs, ug);
      if (await this.#cas(itemKey, body, found.cas, memcachedExpiration(ttlMs, now), budget)) return 'ok';
      await this.#backoff(attempt, budget);
    }
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'> {
    // No guard, so never 'conflict'.
    return (await this.commit(key, { set: {}, unset: [], meta }, ttlMs)) === 'ok' ? 'ok' : 'gone';
  }

  async destroy(key: string): Promise<void> {
    const itemKey = this.#itemKey(key);
    await this.#del(itemKey, this.#budget('destroy'));
  }

  /**
   * Makes every session of `userId` that exists now dead for good, except `except`. Memcached
   * cannot list a user's sessions, so this bumps the user's revocation generation instead: one
   * item per user (`prefix + 'u:' + sha256(userId)`, no expiry) holding `{ gen, except?,
   * exceptGen? }`, changed with `add` or `gets` + `cas`. Every authenticated session carries the
   * generation it was authenticated under (stamped by `create` and by a `commit` that changes
   * `userId` or `authAt`); `load`, `commit` and `touch` treat one stamped below the user's
   * generation as dead and delete it. An evicted user item, or a memcached restart, loses the
   * revocations (see docs/stores-memcached.md).
   */
  async revokeUser(userId: string, except?: string): Promise<void> {
    if (typeof userId !== 'string') {
      throw new SessionError('INVALID_KEY', 'MemcachedStore.revokeUser needs the user id as a string.');
    }
    if (except !== undefined) checkStorageKey(STORE_NAME, except);
    const itemKey = this.#userItemKey(userId);
    const budget = this.#budget('revokeUser');
    for (let attempt = 0; attempt < this.#casAttempts; attempt++) {
      if (attempt > 0) await this.#backoff(attempt - 1, budget);
      const got = await this.#gets(itemKey, budget);
      const old = (got && this.#decodeUser(userId, got.raw)) ?? { gen: 0 };
      const next = nextRevocation(old, except, this.#now());
      const body = JSON.stringify(next);
      // An unreadable item is replaced too: the clock-based generation outranks what it held.
      if (
        got
          ? await this.#cas(itemKey, body, got.cas, NO_EXPIRY, budget)
          : await this.#add(itemKey, body, NO_EXPIRY, budget)
      ) {
        this.#remember(userId, next.gen);
        return;
      }
    }
    throw this.#contention('revokeUser');
  }
}

function positiveInteger(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new SessionError('INVALID_OPTION', `MemcachedStore \`${name}\` must be a positive integer.`);
  }
  return value;
}
