import { createHash } from 'node:crypto';
import { SessionError } from '../errors.js';
import { asMeta, asValues, CorruptLog, checkStorageKey } from './kit.js';
import {
  type CommitGuard,
  type CommitResult,
  isLiveTtl,
  type SessionDelta,
  type SessionMeta,
  type SessionStore,
  type SessionSummary,
  type StoredSession,
} from './store.js';

/**
 * What the three SQL stores (PostgreSQL, MySQL/MariaDB, SQLite) share. The contract logic lives
 * once in {@link SqlSessionStore}; each engine only supplies its statements.
 *
 * Clock: every expiry is computed and compared with the application's clock (`now` option), never
 * the database's `now()`. The manager already decides lifetimes from its own clock and hands the
 * store a TTL, and it passes its own `now` to `gc`; mixing in a second clock would let a skewed
 * database server expire sessions early or keep them late, and would make `gc(now)` compare two
 * different clocks. Times are stored as BIGINT milliseconds since the epoch, like the metadata.
 */

/**
 * Options every SQL store accepts.
 *
 * @inline
 */
export interface SqlStoreOptions {
  /**
   * Table name, matching /^[A-Za-z_][A-Za-z0-9_]{0,62}$/: identifiers cannot be bound as query
   * parameters, so the name is validated once here and then quoted.
   * @default 'sessionflow_sessions'
   */
  table?: string;
  /** Rows deleted per statement by `gc()`, which loops until no expired row is left. @default 500 */
  gcBatchSize?: number;
  /** Clock in milliseconds; expiry is computed and checked with it. @default Date.now */
  now?: () => number;
  /**
   * Called for a row whose `meta` or `data` is not what the store writes (not a JSON object, a
   * value that is not a string); the session is then treated as absent. `where` names the table
   * and the row's key, never its content.
   * @default the manager's `warn` (see `setWarn`), else console.warn
   */
  onCorrupt?: (where: string, reason: string) => void;
  /**
   * Longest time one store operation may take, in milliseconds: waiting for a pooled connection,
   * for a row another transaction holds, and for the server's answer, all included. Past it the
   * operation fails with `SessionError` `STORE_UNAVAILABLE` (the manager answers 503), and the
   * server is told to stop waiting for the row lock too, so nothing is written late.
   * @default 1000
   */
  timeoutMs?: number;
}

/** The default table of every SQL store. */
export const DEFAULT_TABLE = 'sessionflow_sessions';

const TABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;
const MAX_IDENTIFIER = 63;

/** Validates a table name; the only text of a query that does not travel as a parameter. */
export function checkTable(table: string = DEFAULT_TABLE): string {
  if (typeof table !== 'string' || !TABLE_NAME.test(table)) {
    throw new SessionError(
      'INVALID_OPTION',
      `SQL store table name ${JSON.stringify(table)} is invalid: use letters, digits and underscores (at most 63, not starting with a digit).`,
    );
  }
  return table;
}

/**
 * An index name derived from the table. PostgreSQL silently truncates identifiers to 63 bytes
 * (and index names are per schema), so long table names get a short hash instead of colliding.
 */
export function indexName(table: string, suffix: string): string {
  const plain = `${table}_${suffix}`;
  if (plain.length <= MAX_IDENTIFIER) return plain;
  const hash = createHash('sha256').update(table).digest('hex').slice(0, 8);
  return `${table.slice(0, MAX_IDENTIFIER - suffix.length - hash.length - 2)}_${hash}_${suffix}`;
}

function metaChanges(meta: Partial<SessionMeta> | undefined): {
  set: Record<string, unknown>;
  unset: string[];
} {
  const set: Record<string, unknown> = {};
  const unset: string[] = [];
  // `undefined` means "drop this field", as in applyDelta.
  for (const [k, v] of Object.entries(meta ?? {})) {
    if (v === undefined) unset.push(k);
    else set[k] = v;
  }
  return { set, unset };
}

/** Metadata changes split into fields to set (a JSON object) and fields to remove (jsonb operators). */
export function splitMeta(meta: Partial<SessionMeta> | undefined): { set: string; unset: string[] } {
  const { set, unset } = metaChanges(meta);
  return { set: JSON.stringify(set), unset };
}

/** Whether the values change at all: a touch leaves the data column unwritten. */
export function changesValues(delta: SessionDelta): boolean {
  return delta.retain !== undefined || Object.keys(delta.set).length > 0 || delta.unset.length > 0;
}

function patchOf(set: Record<string, unknown>, unset: Iterable<string>): string {
  // Values and metadata fields are scalars, never null, so a null in the patch can only mean
  // "remove": no JSON path is ever built from a key, so no key needs escaping.
  const patch: Record<string, unknown> = Object.create(null);
  for (const k of unset) patch[k] = null;
  for (const [k, v] of Object.entries(set)) patch[k] = v;
  return JSON.stringify(patch);
}

/**
 * The values of a delta as an RFC 7396 merge patch (for JSON_MERGE_PATCH / json_patch): set
 * members, and `null` for each unset one. A field both unset and set ends up set, as in applyDelta.
 */
export function valuesPatch(delta: SessionDelta): string {
  return patchOf(delta.set, delta.unset);
}

/** The metadata changes as a merge patch: a field set to `undefined` becomes `null`, i.e. removed. */
export function metaPatch(meta: Partial<SessionMeta> | undefined): string {
  const { set, unset } = metaChanges(meta);
  return patchOf(set, unset);
}

function parseJson(value: unknown): unknown {
  // Drivers differ: pg parses jsonb, mysql2 parses MySQL's JSON but not MariaDB's (LONGTEXT),
  // better-sqlite3 returns text.
  if (typeof value !== 'string') return value;
  try {
    return JSON.parse(value);
  } catch {
    return undefined;
  }
}

/** Reads a row's meta column; null when it is not session metadata. */
export function decodeMeta(meta: unknown): SessionMeta | null {
  const parsed = asMeta(parseJson(meta));
  return parsed ? { ...parsed } : null;
}

/**
 * Builds a record from a row's JSON columns; values get a null prototype so `__proto__` stays
 * data. A string names what is corrupt instead.
 */
export function decodeRow(meta: unknown, data: unknown): StoredSession | string {
  const m = decodeMeta(meta);
  if (!m) return 'meta is not a session metadata object';
  const values = asValues(parseJson(data));
  if (!values) return 'data is not a JSON object of string values';
  return { meta: m, values };
}

/** A live row as read by `load`. */
export interface SessionRow {
  meta: unknown;
  data: unknown;
}

/** A live row as read by `sessionsOf`. */
export interface UserSessionRow {
  id: string;
  meta: unknown;
}

/** The fixed statements each engine prepares (commits are composed per delta and guard). */
export type StatementName = 'select' | 'purge' | 'insert' | 'byUser' | 'gc';

/** Placeholder of the n-th parameter (1-based): `$n` in PostgreSQL, `?` elsewhere. */
export type Placeholder = (n: number) => string;

/**
 * The statements whose text is the same in every engine but for identifier quoting and
 * placeholders. `table` arrives already validated and quoted. The expiry predicate sits in every
 * read, so an expired row is never returned whatever gc has or has not done yet.
 */
export function portableStatements(
  table: string,
  p: Placeholder,
): Record<'select' | 'purge' | 'byUser', string> {
  return {
    select: `SELECT meta, data FROM ${table} WHERE id = ${p(1)} AND expires_at > ${p(2)}`,
    purge: `DELETE FROM ${table} WHERE id = ${p(1)} AND expires_at <= ${p(2)}`,
    byUser: `SELECT id, meta FROM ${table} WHERE user_id = ${p(1)} AND expires_at > ${p(2)}`,
  };
}

/**
 * Insert that never overwrites a live row but replaces an expired leftover with the same key, in
 * one atomic statement (PostgreSQL 9.5+, SQLite 3.24+): the conflict branch only fires when its
 * WHERE holds, so a live row yields 0 affected rows. Parameters: key, meta, data, expiresAt, now.
 */
export function upsertUnlessLive(table: string, p: Placeholder, json: (n: number) => string): string {
  return `INSERT INTO ${table} AS s (id, meta, data, expires_at) VALUES (${p(1)}, ${json(2)}, ${json(3)}, ${p(4)})
    ON CONFLICT (id) DO UPDATE SET meta = excluded.meta, data = excluded.data, expires_at = excluded.expires_at
    WHERE s.expires_at <= ${p(5)}`;
}

/** Parameters collected while a statement is composed, in the order of their placeholders. */
export class Bind {
  readonly values: unknown[] = [];
  readonly #numbered: boolean;

  /** `numbered`: `$1, $2, ...` (PostgreSQL); otherwise `?`. */
  constructor(numbered: boolean) {
    this.#numbered = numbered;
  }

  /** Binds `value` and returns its placeholder. */
  add(value: unknown): string {
    this.values.push(value);
    return this.#numbered ? `$${this.values.length}` : '?';
  }
}

/** A composed statement: the text depends only on the shape of the delta and guard, never on data. */
export interface Composed {
  sql: string;
  values: unknown[];
}

/** How an engine writes the parts of a guarded commit. */
export interface CommitDialect {
  /** `$n` placeholders (PostgreSQL) rather than `?`. */
  numbered: boolean;
  /** The new `data` expression (retain, unset, set); only called when {@link changesValues}. */
  data(delta: SessionDelta, bind: Bind): string;
  /** The new `meta` expression (merge; fields set to undefined removed). */
  meta(meta: Partial<SessionMeta> | undefined, bind: Bind): string;
  /** Condition: `meta.h` equals `handle`, exactly. */
  handleIs(handle: string, bind: Bind): string;
  /** Condition: `user_id` equals `userId`, exactly (byte for byte). */
  userIs(userId: string, bind: Bind): string;
}

/** True if the guard checks anything. */
export function isGuarded(guard: CommitGuard | undefined): guard is CommitGuard {
  return guard !== undefined && (guard.handle !== undefined || guard.userId !== undefined);
}

function guardSql(dialect: CommitDialect, guard: CommitGuard | undefined, bind: Bind): string {
  let sql = '';
  if (guard?.handle !== undefined) sql += ` AND ${dialect.handleIs(guard.handle, bind)}`;
  if (guard?.userId === null) sql += ' AND user_id IS NULL';
  else if (guard?.userId !== undefined) sql += ` AND ${dialect.userIs(guard.userId, bind)}`;
  return sql;
}

/**
 * The one UPDATE of a commit: the guard and the expiry predicate sit in its WHERE, so checking
 * the guard and writing the delta are one atomic step. 0 rows matched: gone or conflict.
 */
export function composeCommit(
  table: string,
  dialect: CommitDialect,
  key: string,
  delta: SessionDelta,
  guard: CommitGuard | undefined,
  expiresAt: number,
  now: number,
): Composed {
  const bind = new Bind(dialect.numbered);
  // Without a value change `data` is not assigned: a touch does not rewrite a large session.
  const data = changesValues(delta) ? `data = ${dialect.data(delta, bind)}, ` : '';
  const sets = `${data}meta = ${dialect.meta(delta.meta, bind)}, expires_at = ${bind.add(expiresAt)}`;
  const where = `id = ${bind.add(key)} AND expires_at > ${bind.add(now)}${guardSql(dialect, guard, bind)}`;
  return { sql: `UPDATE ${table} SET ${sets} WHERE ${where}`, values: bind.values };
}

/** The DELETE of a commit with a TTL <= 0: the row goes only if the guard holds. */
export function composeDelete(
  table: string,
  dialect: CommitDialect,
  key: string,
  guard: CommitGuard | undefined,
): Composed {
  const bind = new Bind(dialect.numbered);
  const where = `id = ${bind.add(key)}${guardSql(dialect, guard, bind)}`;
  return { sql: `DELETE FROM ${table} WHERE ${where}`, values: bind.values };
}

type Awaitable<T> = T | Promise<T>;

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

// ---- time budgets and client errors ---------------------------------------------------------
// Shared by every store that talks to a server (SQL, Redis, Memcached).

/**
 * Default bound of one store operation, in milliseconds. A session read or write takes about a
 * millisecond on a healthy server, and tens of milliseconds at the worst of a busy one; a second
 * is far above that, yet short enough that a user whose store is down gets a 503 at once rather
 * than a hanging page, and that requests waiting on a dead server do not pile up by the thousand.
 */
export const DEFAULT_TIMEOUT_MS = 1_000;

const MAX_TIMER_MS = 2_147_483_647;

/** Validates a `timeoutMs` option (a positive integer of milliseconds). */
export function checkTimeout(storeName: string, value: unknown, fallback = DEFAULT_TIMEOUT_MS): number {
  if (value === undefined) return fallback;
  if (!(Number.isSafeInteger(value) && (value as number) >= 1 && (value as number) <= MAX_TIMER_MS)) {
    throw new SessionError(
      'INVALID_OPTION',
      `${storeName} \`timeoutMs\` must be a positive integer of milliseconds (at most ${MAX_TIMER_MS}).`,
    );
  }
  return value as number;
}

/** The time one store operation has left; every wait inside it (pool, lock, answer) draws on it. */
export class Budget {
  readonly #end: number;

  /** `store` and `operation` name the failure; `ms` is the whole budget. */
  constructor(
    readonly store: string,
    readonly operation: string,
    readonly ms: number,
  ) {
    this.#end = performance.now() + ms;
  }

  /** Milliseconds left, rounded up; 0 once spent. */
  remaining(): number {
    return Math.max(0, Math.ceil(this.#end - performance.now()));
  }

  /**
   * The error of an operation that ran out of time: a 503, with what to check. `cause` is the
   * server's own report of it, if any (a lock timeout).
   */
  error(cause?: unknown): SessionError {
    return new SessionError(
      'STORE_UNAVAILABLE',
      `${this.store}: ${this.operation} did not finish within ${this.ms} ms (timeoutMs): the server is down, unreachable or overloaded, or another transaction holds this session. The request was refused instead of waiting longer.`,
      cause === undefined ? undefined : { cause },
    );
  }
}

/**
 * Waits for `work` at most `ms` milliseconds, then rejects with `error()`. The work itself goes
 * on: `late` receives a result that arrives afterwards (to hand a pooled connection back), and a
 * late failure is ignored.
 */
export function withDeadline<T>(
  work: Promise<T>,
  ms: number,
  error: () => Error,
  late?: (value: T) => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      settled = true;
      reject(error());
    }, ms);
    work.then(
      (value) => {
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          resolve(value);
        } else late?.(value);
      },
      (err: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

/** Runs one operation on `budget`: rejects with its error once spent (the work is not cancelled). */
export function bounded<T>(budget: Budget, work: (budget: Budget) => Awaitable<T>): Promise<T> {
  let promise: Promise<T>;
  try {
    promise = Promise.resolve(work(budget));
  } catch (err) {
    return Promise.reject(err);
  }
  return withDeadline(promise, budget.ms, () => budget.error());
}

/** At most one report per this many milliseconds per store; the others are counted. */
const CLIENT_ERROR_INTERVAL_MS = 10_000;

interface Emitter {
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  listenerCount(event: string): number;
}

function isEmitter(value: unknown): value is Emitter {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as Emitter).on === 'function' &&
    typeof (value as Emitter).listenerCount === 'function'
  );
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point.
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]+/g;

/** A driver's error text for a log line: one line, no control characters, bounded. */
function describeError(err: unknown): string {
  const text = err instanceof Error ? `${err.message || err.name}` : String(err);
  const code = (err as { code?: unknown } | null)?.code;
  const line = typeof code === 'string' && !text.includes(code) ? `${code}: ${text}` : text;
  return line.replace(UNPRINTABLE, ' ').slice(0, 300);
}

/**
 * What a store does with a client's `'error'` events. Node ends the process on an `'error'`
 * event nobody listens to, and node-redis clients, `pg` pools and mysql2 connections emit one
 * when their server goes away. So the store listens on the client it is given; its listener
 * reports the error (through the manager's `warn`, else `console.warn`), at most once per 10 s
 * with a count of the others, and stays silent when the application listens too, so the
 * application's own handling is left as it is. The requests themselves fail with 503.
 */
export class ClientErrorLog {
  readonly #store: string;
  #warn: ((message: string) => void) | undefined;
  #lastReport = Number.NEGATIVE_INFINITY;
  #unreported = 0;

  constructor(storeName: string) {
    this.#store = storeName;
  }

  attach(warn: (message: string) => void): void {
    this.#warn = warn;
  }

  /** Listens for `event` on `emitter`: one listener per emitter, reporting to the latest store built on it. */
  watch(emitter: unknown, event = 'error'): void {
    if (!isEmitter(emitter)) return;
    let events = watched.get(emitter);
    if (!events) {
      events = new Map();
      watched.set(emitter, events);
    }
    const existing = events.get(event);
    if (existing) {
      // Another store on the same client: its reports now go to this store's channel.
      existing.log = this;
      return;
    }
    const entry = { log: this as ClientErrorLog };
    events.set(event, entry);
    emitter.on(event, (err: unknown) => {
      // Someone else listens (the application): its handler is the report.
      if (emitter.listenerCount(event) > 1) return;
      entry.log.report(err);
    });
  }

  report(err: unknown): void {
    const now = performance.now();
    if (now - this.#lastReport < CLIENT_ERROR_INTERVAL_MS) {
      this.#unreported++;
      return;
    }
    const more = this.#unreported > 0 ? ` (${this.#unreported} more since the last report)` : '';
    this.#lastReport = now;
    this.#unreported = 0;
    const message = `${this.#store}: client error: ${describeError(err)}${more}. Requests needing the store are answered 503 until it is reachable again.`;
    if (this.#warn) this.#warn(message);
    else console.warn(`[sessionflow] ${message}`);
  }
}

/** Clients already listened to, per event: one listener each, however many stores share them. */
const watched = new WeakMap<object, Map<string, { log: ClientErrorLog }>>();

/**
 * One write statement per session key at a time from this store; the others wait here, in
 * memory, within their own budget. A row another transaction holds then ties up one pooled
 * connection, not the whole pool: requests for other sessions keep theirs. Writes to one row are
 * serialised by its lock anyway, so this costs nothing in throughput.
 */
class KeyQueue {
  readonly #tails = new Map<string, Promise<void>>();

  async run<T>(key: string, budget: Budget, fn: () => Awaitable<T>): Promise<T> {
    const previous = this.#tails.get(key);
    let release!: () => void;
    const mine = new Promise<void>((resolve) => {
      release = resolve;
    });
    // A writer that gives up leaves `mine` resolved, but its successor still waits for `previous`.
    const tail = previous ? previous.then(() => mine) : mine;
    this.#tails.set(key, tail);
    try {
      if (previous) await withDeadline(previous, budget.remaining(), () => budget.error());
      return await fn();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}

/**
 * The store contract on top of a handful of engine statements. Every statement an engine supplies
 * binds keys, values and times as parameters; only the validated table name is part of the text.
 *
 * Every operation runs within `timeoutMs` (a {@link Budget} handed to each engine statement, which
 * bounds its wait for a connection, for a locked row and for the answer), and writes to one
 * session key go one at a time from this store (see {@link KeyQueue}).
 */
export abstract class SqlSessionStore implements SessionStore {
  readonly capabilities = { listByUser: true, gc: true, nativeTtl: false } as const;
  /** The validated table name. */
  readonly table: string;
  /** The bound of one operation, in milliseconds. */
  readonly timeoutMs: number;
  readonly #name: string;
  readonly #now: () => number;
  readonly #gcBatch: number;
  readonly #corrupt: CorruptLog;
  readonly #keys = new KeyQueue();
  /** Where the driver's `'error'` events are reported (see {@link ClientErrorLog}). */
  protected readonly clientErrors: ClientErrorLog;

  /** `storeName` names the store in errors and corrupt-row reports. */
  protected constructor(storeName: string, options: SqlStoreOptions = {}) {
    this.#name = storeName;
    this.table = checkTable(options.table);
    this.#now = options.now ?? Date.now;
    this.#gcBatch = options.gcBatchSize ?? 500;
    if (!(Number.isInteger(this.#gcBatch) && this.#gcBatch > 0)) {
      throw new SessionError('INVALID_OPTION', 'SQL store gcBatchSize must be a positive integer.');
    }
    this.timeoutMs = checkTimeout(storeName, options.timeoutMs);
    this.#corrupt = new CorruptLog(options.onCorrupt);
    this.clientErrors = new ClientErrorLog(storeName);
  }

  /** Creates the table and its indexes if they are missing; safe to run on every start. */
  abstract migrate(): Promise<void>;

  // Every statement gets the budget of the operation it belongs to. It is optional only so that
  // a test can wrap a statement method without passing it on; an engine then uses a fresh one.

  /** The row of `key` if it has not expired at `now`. */
  protected abstract selectLive(key: string, now: number, budget?: Budget): Awaitable<SessionRow | undefined>;
  /** Deletes the row of `key` only if it has expired at `now`. */
  protected abstract deleteIfExpired(key: string, now: number, budget?: Budget): Awaitable<void>;
  /** Inserts a row, replacing an expired one; false if a live row holds the key. */
  protected abstract insert(
    key: string,
    record: StoredSession,
    expiresAt: number,
    now: number,
    budget?: Budget,
  ): Awaitable<boolean>;
  /**
   * Merges the delta into the live row if the guard holds, in one atomic statement (see
   * {@link composeCommit}); false if no row matched (gone, or the guard failed).
   */
  protected abstract update(
    key: string,
    delta: SessionDelta,
    guard: CommitGuard | undefined,
    expiresAt: number,
    now: number,
    budget?: Budget,
  ): Awaitable<boolean>;
  /** Deletes the row of `key`, live or not, if the guard holds; true if a row was deleted. */
  protected abstract deleteKey(key: string, guard?: CommitGuard, budget?: Budget): Awaitable<boolean>;
  /** Live rows of one user, found through the user_id index. */
  protected abstract selectByUser(userId: string, now: number, budget?: Budget): Awaitable<UserSessionRow[]>;
  /** Deletes at most `limit` rows expired at `now`; returns how many. */
  protected abstract deleteExpiredBatch(now: number, limit: number, budget?: Budget): Awaitable<number>;

  /** A fresh budget of `timeoutMs` for `operation`. */
  protected budget(operation: string): Budget {
    return new Budget(this.#name, operation, this.timeoutMs);
  }

  /**
   * Runs one operation within `timeoutMs`: it rejects with STORE_UNAVAILABLE once the budget is
   * spent. An engine whose statements never wait on the event loop (SQLite) bounds them itself.
   */
  protected within<T>(operation: string, fn: (budget: Budget) => Awaitable<T>): Promise<T> {
    return bounded(this.budget(operation), fn);
  }

  /** Runs a write on `key` after the previous write on it from this store (see {@link KeyQueue}). */
  protected serial<T>(key: string, budget: Budget, fn: () => Awaitable<T>): Awaitable<T> {
    return this.#keys.run(key, budget, fn);
  }

  /** Corrupt rows and client errors are reported through the manager's `warn`. */
  setWarn(warn: (message: string) => void): void {
    this.#corrupt.attach(warn);
    this.clientErrors.attach(warn);
  }

  /** Integer milliseconds: the expiry column is a BIGINT. */
  #clock(): number {
    return Math.floor(this.#now());
  }

  #report(key: string, reason: string): void {
    this.#corrupt.report(this.#name, `${this.table}:${key}`, reason);
  }

  async load(key: string): Promise<StoredSession | null> {
    checkStorageKey(this.#name, key);
    return this.within('load', async (budget) => {
      const now = this.#clock();
      const row = await this.selectLive(key, now, budget);
      if (row) {
        const record = decodeRow(row.meta, row.data);
        if (typeof record !== 'string') return record;
        this.#report(key, record);
        return null;
      }
      // Only a miss pays for the cleanup; the read above already ignored the expired row.
      await this.serial(key, budget, () => this.deleteIfExpired(key, now, budget));
      return null;
    });
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    checkStorageKey(this.#name, key);
    return this.within('create', async (budget) => {
      const now = this.#clock();
      if (!isLiveTtl(ttlMs)) return (await this.selectLive(key, now, budget)) === undefined;
      return this.serial(key, budget, () => this.insert(key, record, Math.ceil(now + ttlMs), now, budget));
    });
  }

  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    checkStorageKey(this.#name, key);
    return this.within('commit', (budget) =>
      this.serial(key, budget, async (): Promise<CommitResult> => {
        const now = this.#clock();
        if (isLiveTtl(ttlMs)) {
          if (await this.update(key, delta, guard, Math.ceil(now + ttlMs), now, budget)) return 'ok';
        } else if ((await this.deleteKey(key, guard, budget)) || !isGuarded(guard)) {
          // A non-positive TTL ends the session: the row goes (if the guard holds) and the answer is 'gone'.
          return 'gone';
        }
        // Nothing matched. Only this failure path reads again, to tell a failed guard from a gone row.
        return isGuarded(guard) && (await this.selectLive(key, now, budget)) !== undefined
          ? 'conflict'
          : 'gone';
      }),
    );
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'> {
    return (await this.commit(key, { set: {}, unset: [], meta }, ttlMs)) === 'ok' ? 'ok' : 'gone';
  }

  async destroy(key: string): Promise<void> {
    checkStorageKey(this.#name, key);
    await this.within('destroy', (budget) =>
      this.serial(key, budget, () => this.deleteKey(key, undefined, budget)),
    );
  }

  async sessionsOf(userId: string): Promise<SessionSummary[]> {
    const rows = await this.within('sessionsOf', (budget) =>
      this.selectByUser(userId, this.#clock(), budget),
    );
    const out: SessionSummary[] = [];
    for (const row of rows) {
      const key = String(row.id);
      const meta = decodeMeta(row.meta);
      if (meta) out.push({ key, meta });
      else this.#report(key, 'meta is not a session metadata object');
    }
    return out;
  }

  /**
   * Deletes expired rows in bounded batches, yielding between them; returns how many. Each batch
   * has its own `timeoutMs`, so a large backlog is not cut short, but a stalled server is.
   */
  async gc(now: number = this.#clock()): Promise<number> {
    const at = Math.floor(now);
    let removed = 0;
    for (;;) {
      const n = await this.within('gc', (budget) => this.deleteExpiredBatch(at, this.#gcBatch, budget));
      removed += n;
      if (n < this.#gcBatch) return removed;
      await yieldToEventLoop();
    }
  }
}
