import { auditTag } from '../crypto/ids.js';
import { SessionError, storeUnavailable } from '../errors.js';
import {
  applyDelta,
  type CommitResult,
  cloneRecord,
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
  /** A memcached call that has not answered after this many milliseconds fails the request. @default 2000 */
  operationTimeoutMs?: number;
  /** Called when an item cannot be parsed; the session is then treated as absent. @default console.warn */
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

/** What one memcached item holds: the session plus its exact expiry, JSON-encoded. */
interface ItemRecord {
  v: 1;
  /** Milliseconds since the epoch; memcached's own TTL is only accurate to a second. */
  expiresAt: number;
  meta: SessionMeta;
  values: Record<string, string>;
}

interface Fetched {
  cas: string;
  /** null when the item exists but is not a session record. */
  record: (StoredSession & { expiresAt: number }) | null;
}

/** Storage keys are SHA-256 in base64url (43 characters); anything else never reaches the wire. */
const STORAGE_KEY = /^[A-Za-z0-9_-]{16,128}$/;
const MAX_STORAGE_KEY = 128;
/** Printable ASCII without space: memcached keys must not contain whitespace or control characters. */
const PREFIX = /^[\x21-\x7e]{0,100}$/;
const MAX_KEY_BYTES = 250;
/** memcached reads an expiration above 30 days as an absolute unix time. */
const MAX_RELATIVE_SECONDS = 60 * 60 * 24 * 30;
/** Largest backoff window: measured with 100 writers on one session, 50 ms ran out of attempts, 200 ms did not. */
const BACKOFF_CAP_MS = 200;

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

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Sessions in memcached, one item per session, spread over the client's servers by its
 * consistent hashing.
 *
 * - The item is JSON `{ v, expiresAt, meta, values }` under `prefix + storageKey`; memcached's TTL
 *   removes it, and `expiresAt` (milliseconds) makes every read exact.
 * - `create` is `add` (atomic, never overwrites). `commit` and `touch` are `gets`, merge, `cas`,
 *   retried with jittered backoff while another writer wins; a miss is 'gone' and nothing is ever
 *   inserted, so a commit racing a logout cannot resurrect the session.
 * - Memcached cannot enumerate keys: no `sessionsOf` (revoke-all-devices needs another store) and
 *   no `gc` (items expire on their own).
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
  readonly #timeoutMs: number;
  readonly #onCorrupt: (key: string, reason: string) => void;
  readonly #now: () => number;

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
    this.#timeoutMs = positiveInteger(options.operationTimeoutMs, 2_000, 'operationTimeoutMs');
    this.#onCorrupt =
      options.onCorrupt ??
      ((key, reason) =>
        console.warn(`[sessionflow] unreadable memcached session ${auditTag(key)} ignored: ${reason}`));
    this.#now = options.now ?? Date.now;
  }

  /** The item key of a storage key; refuses anything that could break the text protocol (CVE-2020-13254). */
  #itemKey(key: string): string {
    if (typeof key !== 'string' || !STORAGE_KEY.test(key)) {
      throw new SessionError(
        'INVALID_KEY',
        'MemcachedStore refused a storage key that is not 16-128 base64url characters; it was not sent to memcached.',
      );
    }
    return this.prefix + key;
  }

  /** Runs one client call as a promise, with a deadline: the client never answers on a half-open socket. */
  #call<T>(operation: string, start: (done: (err: unknown, result: T) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        settled = true;
        reject(
          storeUnavailable(`memcached ${operation}`, new Error(`no answer within ${this.#timeoutMs} ms`)),
        );
      }, this.#timeoutMs);
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

  async #fetch(storageKey: string, itemKey: string): Promise<Fetched | null> {
    const data = await this.#call<unknown>('gets', (done) => this.#client.gets(itemKey, done));
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
    return { cas, record: this.#decode(storageKey, raw) };
  }

  #decode(storageKey: string, raw: unknown): Fetched['record'] {
    if (typeof raw !== 'string') {
      this.#onCorrupt(storageKey, 'not a string item');
      return null;
    }
    let parsed: Partial<ItemRecord>;
    try {
      parsed = JSON.parse(raw) as Partial<ItemRecord>;
    } catch {
      this.#onCorrupt(storageKey, 'not JSON');
      return null;
    }
    if (
      parsed?.v !== 1 ||
      typeof parsed.expiresAt !== 'number' ||
      typeof parsed.meta !== 'object' ||
      parsed.meta === null ||
      typeof parsed.values !== 'object' ||
      parsed.values === null ||
      Object.values(parsed.values).some((v) => typeof v !== 'string')
    ) {
      this.#onCorrupt(storageKey, 'not a session record');
      return null;
    }
    // Null-prototype values, so that a field named `__proto__` stays plain data through a merge.
    return { ...cloneRecord({ meta: parsed.meta, values: parsed.values }), expiresAt: parsed.expiresAt };
  }

  #encode(record: StoredSession, expiresAt: number): string {
    const item: ItemRecord = { v: 1, expiresAt, meta: record.meta, values: record.values };
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

  #add(itemKey: string, body: string, lifetime: number): Promise<boolean> {
    return this.#call<boolean>('add', (done) =>
      this.#client.add(itemKey, body, lifetime, (err, ok) =>
        // NOT_STORED (the key exists) arrives as an error object flagged `notStored`.
        isNotStored(err) ? done(undefined, false) : done(err, ok === true),
      ),
    );
  }

  #cas(itemKey: string, body: string, cas: string, lifetime: number): Promise<boolean> {
    // false covers both EXISTS (another writer won) and NOT_FOUND (deleted): the caller reads again.
    return this.#call<boolean>('cas', (done) =>
      this.#client.cas(itemKey, body, cas, lifetime, (err, ok) => done(err, ok === true)),
    );
  }

  #del(itemKey: string): Promise<void> {
    return this.#call<void>('delete', (done) => this.#client.del(itemKey, (err) => done(err, undefined)));
  }

  #contention(operation: string): SessionError {
    return storeUnavailable(
      `memcached ${operation}`,
      new Error(`the item changed under ${this.#casAttempts} consecutive compare-and-swap attempts`),
    );
  }

  /** Full jitter over an exponential window, so that writers that lost a round spread out. */
  #backoff(attempt: number): Promise<void> {
    return sleep(Math.random() * Math.min(BACKOFF_CAP_MS, 2 ** (attempt + 1)));
  }

  async load(key: string): Promise<StoredSession | null> {
    const itemKey = this.#itemKey(key);
    const found = await this.#fetch(key, itemKey);
    if (!found?.record) return null;
    if (found.record.expiresAt <= this.#now()) {
      // Expired to the millisecond but still held by memcached for up to two seconds. Nothing can
      // revive it (commit answers 'gone'), so an unconditional delete is safe; if the delete fails
      // the answer is still known (absent) and memcached drops the item on its own.
      await this.#del(itemKey).catch(() => {});
      return null;
    }
    return { meta: found.record.meta, values: found.record.values };
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    const itemKey = this.#itemKey(key);
    const now = this.#now();
    if (!isLiveTtl(ttlMs)) {
      // Nothing to write; only say whether a live session already holds the key.
      const found = await this.#fetch(key, itemKey);
      return !(found?.record && found.record.expiresAt > now);
    }
    const body = this.#encode(record, now + ttlMs);
    const lifetime = memcachedExpiration(ttlMs, now);
    for (let attempt = 0; attempt < this.#casAttempts; attempt++) {
      if (await this.#add(itemKey, body, lifetime)) return true;
      const found = await this.#fetch(key, itemKey);
      if (!found) continue; // deleted between the add and the read: add again
      if (found.record && found.record.expiresAt > this.#now()) return false;
      // An expired or unreadable item memcached has not dropped yet: replace it, atomically.
      if (await this.#cas(itemKey, body, found.cas, lifetime)) return true;
    }
    throw this.#contention('create');
  }

  async commit(key: string, delta: SessionDelta, ttlMs: number): Promise<CommitResult> {
    const itemKey = this.#itemKey(key);
    if (!isLiveTtl(ttlMs)) {
      await this.#del(itemKey);
      return 'gone';
    }
    for (let attempt = 0; ; attempt++) {
      const found = await this.#fetch(key, itemKey);
      const now = this.#now();
      // Never an insert: a missing, unreadable or expired item stays gone.
      if (!found?.record || found.record.expiresAt <= now) return 'gone';
      if (attempt >= this.#casAttempts) throw this.#contention('commit');
      const merged = applyDelta(found.record, delta);
      const body = this.#encode({ meta: merged.meta, values: merged.values }, now + ttlMs);
      if (await this.#cas(itemKey, body, found.cas, memcachedExpiration(ttlMs, now))) return 'ok';
      await this.#backoff(attempt);
    }
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<CommitResult> {
    return this.commit(key, { set: {}, unset: [], meta }, ttlMs);
  }

  async destroy(key: string): Promise<void> {
    await this.#del(this.#itemKey(key));
  }
}

function positiveInteger(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new SessionError('INVALID_OPTION', `MemcachedStore \`${name}\` must be a positive integer.`);
  }
  return value;
}
