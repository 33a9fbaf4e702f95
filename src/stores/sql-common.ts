import { createHash } from 'node:crypto';
import { SessionError } from '../errors.js';
import { asMeta, asValues, CorruptLog, checkDelta, checkRecord, checkStorageKey } from './kit.js';
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

/** Metadata changes: fields to set, and fields to remove (set to `undefined`, as in applyDelta). */
export function metaChanges(meta: Partial<SessionMeta> | undefined): {
  set: Record<string, unknown>;
  unset: string[];
} {
  const set: Record<string, unknown> = {};
  const unset: string[] = [];
  if (meta) {
    for (const k in meta) {
      if (!Object.hasOwn(meta, k)) continue;
      const v = (meta as Record<string, unknown>)[k];
      if (v === undefined) unset.push(k);
      else set[k] = v;
    }
  }
  return { set, unset };
}

/** True if `record` has an own enumerable key (without building the key list). */
function hasKeys(record: object): boolean {
  for (const k in record) if (Object.hasOwn(record, k)) return true;
  return false;
}

/** Whether the values change at all: a touch leaves the data column unwritten. */
export function changesValues(delta: SessionDelta): boolean {
  return delta.retain !== undefined || delta.unset.length > 0 || hasKeys(delta.set);
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
  // Nothing to remove (the common write): the set object is already the patch.
  return delta.unset.length === 0 ? JSON.stringify(delta.set) : patchOf(delta.set, delta.unset);
}

/** The metadata changes of a commit as a merge patch: a removed field becomes `null`. */
export function metaPatch(input: CommitInput): string {
  return input.metaUnset.length === 0
    ? JSON.stringify(input.metaSet)
    : patchOf(input.metaSet, input.metaUnset);
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

/** The fixed statements each engine prepares (commits are compiled per shape, see {@link CommitStatements}). */
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

// ---- commit statements: compiled once per shape ------------------------------------------------

/** Everything one commit (or guarded delete) binds; each parameter is read from here by a {@link Slot}. */
export interface CommitInput {
  key: string;
  delta: SessionDelta;
  guard: CommitGuard | undefined;
  expiresAt: number;
  now: number;
  /** Metadata fields to set. */
  metaSet: Record<string, unknown>;
  /** Metadata fields to remove (set to `undefined` in the delta). */
  metaUnset: string[];
}

/** Reads one parameter of a compiled statement from the commit it runs for. */
export type Slot = (input: CommitInput) => unknown;

/** Parameters of a statement being compiled, in the order of their placeholders. */
export class Bind {
  readonly slots: Slot[] = [];
  readonly #numbered: boolean;

  /** `numbered`: `$1, $2, ...` (PostgreSQL); otherwise `?`. */
  constructor(numbered: boolean) {
    this.#numbered = numbered;
  }

  /** Binds the parameter `slot` reads and returns its placeholder. */
  add(slot: Slot): string {
    this.slots.push(slot);
    return this.#numbered ? `$${this.slots.length}` : '?';
  }
}

/**
 * The shape of a commit: the bits its statement text depends on. Its data never does, so a store
 * has at most 2^9 commit statements (in practice a handful), each composed and prepared once.
 */
export const Shape = {
  /** The values change (set, unset or retain); otherwise `data` is not assigned. */
  data: 1,
  retain: 2,
  unset: 4,
  set: 8,
  metaSet: 16,
  metaUnset: 32,
  /** Guard: `meta.h` equals the handle. */
  handle: 64,
  /** Guard: no user. */
  noUser: 128,
  /** Guard: this user. */
  user: 256,
} as const;

/** The shape bits of a commit's guard. */
function guardShape(guard: CommitGuard | undefined): number {
  if (!guard) return 0;
  let shape = guard.handle !== undefined ? Shape.handle : 0;
  if (guard.userId === null) shape |= Shape.noUser;
  else if (guard.userId !== undefined) shape |= Shape.user;
  return shape;
}

/** Reads a commit once: its input for the slots, and its shape. */
export function commitInput(
  key: string,
  delta: SessionDelta,
  guard: CommitGuard | undefined,
  expiresAt: number,
  now: number,
): { input: CommitInput; shape: number } {
  const meta = metaChanges(delta.meta);
  let shape = guardShape(guard);
  if (delta.retain !== undefined) shape |= Shape.retain | Shape.data;
  if (delta.unset.length > 0) shape |= Shape.unset | Shape.data;
  if (hasKeys(delta.set)) shape |= Shape.set | Shape.data;
  if (hasKeys(meta.set)) shape |= Shape.metaSet;
  if (meta.unset.length > 0) shape |= Shape.metaUnset;
  return {
    input: { key, delta, guard, expiresAt, now, metaSet: meta.set, metaUnset: meta.unset },
    shape,
  };
}

/** The shape of a guarded delete (a commit with a TTL <= 0): its guard bits. */
export function deleteShape(guard: CommitGuard | undefined): number {
  return guardShape(guard);
}

const NO_DELTA: SessionDelta = Object.freeze({ set: {}, unset: [] });

/** What a guarded delete binds: the key and the guard (see {@link compileDelete}). */
export function deleteInput(key: string, guard: CommitGuard | undefined): CommitInput {
  return { key, delta: NO_DELTA, guard, expiresAt: 0, now: 0, metaSet: {}, metaUnset: [] };
}

/** How an engine writes the parts of a guarded commit, for a given shape. */
export interface CommitDialect {
  /** `$n` placeholders (PostgreSQL) rather than `?`. */
  numbered: boolean;
  /** The new `data` expression (retain, unset, set); only called when the shape has `data`. */
  data(shape: number, bind: Bind): string;
  /** The new `meta` expression; only called when the shape sets or removes metadata. */
  meta(shape: number, bind: Bind): string;
  /** Condition: `meta.h` equals `guard.handle`, exactly. */
  handleIs(bind: Bind): string;
  /** Condition: `user_id` equals `guard.userId`, exactly (byte for byte). */
  userIs(bind: Bind): string;
}

/** A statement compiled for one shape: its text, and where each parameter comes from. */
export interface Compiled {
  sql: string;
  slots: Slot[];
}

/** True if the guard checks anything. */
export function isGuarded(guard: CommitGuard | undefined): guard is CommitGuard {
  return guard !== undefined && (guard.handle !== undefined || guard.userId !== undefined);
}

function guardSql(dialect: CommitDialect, shape: number, bind: Bind): string {
  let sql = '';
  if (shape & Shape.handle) sql += ` AND ${dialect.handleIs(bind)}`;
  if (shape & Shape.noUser) sql += ' AND user_id IS NULL';
  else if (shape & Shape.user) sql += ` AND ${dialect.userIs(bind)}`;
  return sql;
}

/**
 * The one UPDATE of a commit of `shape`: the guard and the expiry predicate sit in its WHERE, so
 * checking the guard and writing the delta are one atomic step. 0 rows matched: gone or conflict.
 */
export function compileCommit(table: string, dialect: CommitDialect, shape: number): Compiled {
  const bind = new Bind(dialect.numbered);
  // Without a value change `data` is not assigned: a touch does not rewrite a large session.
  let sets = shape & Shape.data ? `data = ${dialect.data(shape, bind)}, ` : '';
  if (shape & (Shape.metaSet | Shape.metaUnset)) sets += `meta = ${dialect.meta(shape, bind)}, `;
  sets += `expires_at = ${bind.add((c) => c.expiresAt)}`;
  const where = `id = ${bind.add((c) => c.key)} AND expires_at > ${bind.add((c) => c.now)}${guardSql(dialect, shape, bind)}`;
  return { sql: `UPDATE ${table} SET ${sets} WHERE ${where}`, slots: bind.slots };
}

/** The DELETE of a commit with a TTL <= 0 (of guard shape `shape`): the row goes only if the guard holds. */
export function compileDelete(table: string, dialect: CommitDialect, shape: number): Compiled {
  const bind = new Bind(dialect.numbered);
  const where = `id = ${bind.add((c) => c.key)}${guardSql(dialect, shape, bind)}`;
  return { sql: `DELETE FROM ${table} WHERE ${where}`, slots: bind.slots };
}

/** The parameters of a compiled statement for one commit. */
export function bindValues(slots: readonly Slot[], input: CommitInput): unknown[] {
  const values = new Array<unknown>(slots.length);
  for (let i = 0; i < slots.length; i++) values[i] = slots[i]!(input);
  return values;
}

/**
 * An engine's commit and delete statements by shape, each built (composed, and prepared by the
 * engine) on first use and kept: there are at most 2^9 shapes, so the cache is bounded by design.
 */
export class CommitStatements<S> {
  readonly #commits = new Map<number, S>();
  readonly #deletes = new Map<number, S>();

  /** `prepare` turns a compiled statement into the engine's own form (a name, a prepared statement). */
  constructor(
    readonly table: string,
    readonly dialect: CommitDialect,
    readonly prepare: (compiled: Compiled) => S,
  ) {}

  commit(shape: number): S {
    let statement = this.#commits.get(shape);
    if (statement === undefined) {
      statement = this.prepare(compileCommit(this.table, this.dialect, shape));
      this.#commits.set(shape, statement);
    }
    return statement;
  }

  delete(shape: number): S {
    let statement = this.#deletes.get(shape);
    if (statement === undefined) {
      statement = this.prepare(compileDelete(this.table, this.dialect, shape));
      this.#deletes.set(shape, statement);
    }
    return statement;
  }
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

/**
 * The time one store operation has left; every wait inside it (pool, lock, answer) draws on it.
 * One timer per operation at most: the stages of an operation register what to do when the time
 * is up ({@link Budget.onExpire}) instead of starting timers of their own.
 */
export class Budget {
  readonly #end: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #expired = false;
  #settled = false;
  #listeners: (() => void)[] | undefined;

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
    if (this.#expired) return 0;
    return Math.max(0, Math.ceil(this.#end - performance.now()));
  }

  /** True once the time is up (the timer fired). */
  get expired(): boolean {
    return this.#expired;
  }

  /**
   * Calls `listener` once, when the time is up (at once if it already is), unless the operation
   * settles first; starts the operation's one timer if it is not running yet. Returns a function
   * that removes the listener.
   */
  onExpire(listener: () => void): () => void {
    if (this.#expired) {
      listener();
      return noop;
    }
    if (this.#settled) return noop;
    let listeners = this.#listeners;
    if (!listeners) {
      listeners = this.#listeners = [];
      this.#timer = setTimeout(() => this.#expire(), Math.max(0, this.#end - performance.now()));
    }
    const index = listeners.push(listener) - 1;
    return () => {
      if (this.#listeners === listeners) listeners[index] = noop;
    };
  }

  /** The operation is over: no listener runs any more, and the timer stops. */
  settle(): void {
    this.#settled = true;
    this.#listeners = undefined;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
  }

  #expire(): void {
    this.#expired = true;
    const listeners = this.#listeners;
    this.#listeners = undefined;
    if (listeners) for (const listener of listeners) listener();
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

function noop(): void {}

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

/**
 * Runs one operation on `budget`: rejects with its error once spent (the work is not cancelled;
 * its stages see {@link Budget.expired} and the listeners they registered run). The budget's one
 * timer is the only one of the operation.
 */
export function bounded<T>(budget: Budget, work: (budget: Budget) => Awaitable<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    budget.onExpire(() => reject(budget.error()));
    let result: Awaitable<T>;
    try {
      result = work(budget);
    } catch (err) {
      budget.settle();
      reject(err);
      return;
    }
    if (!(result instanceof Promise)) {
      budget.settle();
      resolve(result);
      return;
    }
    result.then(
      (value) => {
        budget.settle();
        resolve(value);
      },
      (err: unknown) => {
        budget.settle();
        reject(err);
      },
    );
  });
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
      if (previous) await waitWithin(previous, budget);
      return await fn();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}

/**
 * Waits for `work` until `budget` is spent, then rejects with its error: {@link withDeadline} on
 * the budget's one timer instead of a timer of its own. The work goes on: `late` receives a
 * result that arrives afterwards (to hand a pooled connection back), and a late failure is ignored.
 */
export function waitWithin<T>(work: Promise<T>, budget: Budget, late?: (value: T) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const off = budget.onExpire(() => {
      settled = true;
      reject(budget.error());
    });
    work.then(
      (value) => {
        if (settled) {
          late?.(value);
          return;
        }
        settled = true;
        off();
        resolve(value);
      },
      (err: unknown) => {
        if (settled) return;
        settled = true;
        off();
        reject(err);
      },
    );
  });
}

/** An operation waiting for the next batch of its kind. */
interface Waiting<I, R> {
  item: I;
  budget: Budget;
  resolve(result: R): void;
  reject(err: unknown): void;
}

/**
 * Statements of one kind (reads, or commits) one store has out at a time. Two: a lone operation
 * goes out at once, and a second one beside it too; those that arrive while both are out wait
 * for the next batch.
 */
const BATCHES_IN_FLIGHT = 2;

/**
 * Batching under load: at most {@link BATCHES_IN_FLIGHT} statements out at a time; operations
 * that arrive meanwhile wait here, in memory, and as soon as one statement comes back they go out
 * together as one statement (at most `max` of them). A lone operation goes out at once and alone.
 * Each operation keeps its own budget: one that gives up while it waits is not sent.
 */
class Batcher<I, R> {
  #out = 0;
  #waiting: Waiting<I, R>[] = [];

  /**
   * `one` sends a single operation within its own budget; `many` sends several as one statement
   * and answers in their order, within `ms`: the time the last of them has left, so a statement
   * never outlives every operation it serves.
   */
  constructor(
    readonly max: number,
    readonly one: (item: I, budget: Budget) => Awaitable<R>,
    readonly many: (items: I[], ms: number) => Promise<R[]>,
  ) {}

  run(item: I, budget: Budget): Promise<R> {
    if (this.#out < BATCHES_IN_FLIGHT) {
      this.#out++;
      return this.#one(item, budget);
    }
    return new Promise<R>((resolve, reject) => {
      this.#waiting.push({ item, budget, resolve, reject });
    });
  }

  async #one(item: I, budget: Budget): Promise<R> {
    try {
      return await this.#alone(item, budget);
    } finally {
      this.#done();
    }
  }

  /**
   * One operation by itself, settled at the latest when its budget runs out: a driver whose
   * abandoned statement never settles (a destroyed mysql2 connection) must not keep its place
   * among the statements out for good.
   */
  #alone(item: I, budget: Budget): Promise<R> {
    const sent = this.one(item, budget);
    return sent instanceof Promise ? waitWithin(sent, budget) : Promise.resolve(sent);
  }

  #done(): void {
    this.#out--;
    while (this.#out < BATCHES_IN_FLIGHT && this.#waiting.length > 0) {
      let batch = this.#waiting;
      if (batch.length > this.max) {
        this.#waiting = batch.slice(this.max);
        batch = batch.slice(0, this.max);
      } else this.#waiting = [];
      // An operation that gave up meanwhile (its own timeoutMs) is not sent.
      const live = batch.filter((waiting) => {
        if (!waiting.budget.expired) return true;
        waiting.reject(waiting.budget.error());
        return false;
      });
      if (live.length === 0) continue;
      this.#out++;
      void this.#many(live);
    }
  }

  async #many(batch: Waiting<I, R>[]): Promise<void> {
    try {
      if (batch.length === 1) {
        const only = batch[0]!;
        only.resolve(await this.#alone(only.item, only.budget));
        return;
      }
      let ms = 1;
      for (const waiting of batch) ms = Math.max(ms, waiting.budget.remaining());
      const results = await this.many(
        batch.map((waiting) => waiting.item),
        ms,
      );
      for (let i = 0; i < batch.length; i++) batch[i]!.resolve(results[i]!);
    } catch (err) {
      for (const waiting of batch) waiting.reject(err);
    } finally {
      this.#done();
    }
  }
}

/** A commit as the batcher holds it. */
interface CommitItem {
  input: CommitInput;
  shape: number;
}

/** A create as the batcher holds it. */
export interface InsertItem {
  key: string;
  record: StoredSession;
  expiresAt: number;
  now: number;
}

/** Shapes a batched commit statement cannot take: they go out alone. */
const UNBATCHED_SHAPES = Shape.retain | Shape.unset | Shape.metaUnset;

/** True if an engine error is the server refusing the statement (SQLSTATE): nothing was written. */
export function isStatementError(err: unknown): boolean {
  const e = err as { code?: unknown; severity?: unknown } | null;
  return typeof e?.severity === 'string' && typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code);
}

/** The longest a gc batch of a server engine should take, as a share of `timeoutMs`. */
const GC_BATCH_SHARE_OF_TIMEOUT = 0.25;

/**
 * The store contract on top of a handful of engine statements. Every statement an engine supplies
 * binds keys, values and times as parameters; only the validated table name is part of the text.
 *
 * Every operation runs within `timeoutMs` (a {@link Budget} handed to each engine statement, which
 * bounds its wait for a connection, for a locked row and for the answer), and writes to one
 * session key go one at a time from this store (see {@link KeyQueue}).
 *
 * Under load, reads and commits are batched, for an engine that supplies `selectLiveMany` and
 * `updateMany` (see {@link Batcher}): at most two statements of each kind are out at a time; the
 * operations that arrive meanwhile wait in memory and, as soon as one comes back, go out together
 * as one statement, each still within its own `timeoutMs`. A lone operation costs one statement,
 * as before, and waits for nothing. On the Node side a round trip (a write to the socket, a read,
 * waking the server process) costs more CPU than everything else an operation does, so under load
 * one round trip now serves many requests. Nothing of the contract changes: a batched read goes
 * out after every load in it began, so each sees every write that finished before it began; a
 * batched commit applies each delta with its own guard, row by row, never waits for a row another
 * transaction holds, and a commit it did not apply is sent alone, exactly as without batching.
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
  #reads: Batcher<{ key: string; now: number }, SessionRow | undefined> | undefined;
  #commits: Batcher<CommitItem, boolean> | undefined;
  #inserts: Batcher<InsertItem, boolean> | undefined;
  /** Where the driver's `'error'` events are reported (see {@link ClientErrorLog}). */
  protected readonly clientErrors: ClientErrorLog;
  /**
   * The longest one gc batch should take, in milliseconds: the next batch is sized from the time
   * the last one took (never above `gcBatchSize`). SQLite lowers it, since its statements block
   * the event loop.
   */
  protected gcBatchMs: number;
  /** Operations per batched statement (see the class comment). */
  protected batchMax = 100;

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
    this.gcBatchMs = this.timeoutMs * GC_BATCH_SHARE_OF_TIMEOUT;
    this.#corrupt = new CorruptLog(options.onCorrupt);
    this.clientErrors = new ClientErrorLog(storeName);
  }

  /** Creates the table and its indexes if they are missing; safe to run on every start. */
  abstract migrate(): Promise<void>;

  // Every statement gets the budget of the operation it belongs to. It is optional only so that
  // a test can wrap a statement method without passing it on; an engine then uses a fresh one.

  /** The row of `key` if it has not expired at `now`. */
  protected abstract selectLive(key: string, now: number, budget?: Budget): Awaitable<SessionRow | undefined>;
  /**
   * The live rows of several keys in one statement, by key (optional: an engine that supplies it
   * gets its reads batched under load, see the class comment).
   */
  protected selectLiveMany?(keys: string[], now: number, budget?: Budget): Promise<Map<string, SessionRow>>;
  /**
   * Several commits in one statement (optional: an engine that supplies it gets its commits
   * batched under load). Only shapes without `retain` and without removals (of values or
   * metadata) are handed over. The statement must never wait for a row another transaction
   * holds (`FOR UPDATE SKIP LOCKED`): a commit it did not apply, for that or any other reason,
   * answers false and is then sent alone, as if there were no batching.
   */
  protected updateMany?(items: readonly CommitInput[], budget?: Budget): Promise<boolean[]>;
  /**
   * Several creates in one statement (optional: an engine that supplies it gets its creates
   * batched under load): inserts each row whose key is free and answers true for it. A row
   * whose key is taken (live, or an expired leftover) is left alone and answers false; that
   * create is then sent alone, as if there were no batching.
   */
  protected insertMany?(items: readonly InsertItem[], budget?: Budget): Promise<boolean[]>;
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
   * {@link compileCommit}; `shape` picks it); false if no row matched (gone, or the guard failed).
   */
  protected abstract update(input: CommitInput, shape: number, budget?: Budget): Awaitable<boolean>;
  /** Deletes the row of `key`, live or not, if the guard holds; true if a row was deleted. */
  protected abstract deleteKey(key: string, guard?: CommitGuard, budget?: Budget): Awaitable<boolean>;
  /** Live rows of one user, found through the user_id index. */
  protected abstract selectByUser(userId: string, now: number, budget?: Budget): Awaitable<UserSessionRow[]>;
  /** Deletes at most `limit` rows expired at `now`; returns how many. */
  protected abstract deleteExpiredBatch(now: number, limit: number, budget?: Budget): Awaitable<number>;
  /**
   * Optional, for an engine that keeps rows in key order (InnoDB): whether this gc should walk
   * the table in key order ({@link deleteExpiredAfter}) rather than the expires_at index. Asked
   * once per `gc`.
   */
  protected sweepsInKeyOrder?(now: number, budget?: Budget): Promise<boolean>;
  /**
   * Optional, with {@link sweepsInKeyOrder}: deletes the first `limit` rows expired at `now` whose
   * key sorts after `after` (from the first key when null), in key order. `removed`: how many it
   * deleted; `last`: the key to continue after, or null when the end of the table was reached.
   */
  protected deleteExpiredAfter?(
    now: number,
    after: string | null,
    limit: number,
    budget?: Budget,
  ): Promise<{ removed: number; last: string | null }>;

  /** A fresh budget of `timeoutMs` for `operation`. */
  protected budget(operation: string): Budget {
    return new Budget(this.#name, operation, this.timeoutMs);
  }

  /**
   * Runs one operation within `timeoutMs`: it rejects with STORE_UNAVAILABLE once the budget is
   * spent. An engine whose statements never wait on the event loop (SQLite) bounds them itself.
   */
  protected within<T>(
    operation: string,
    fn: (budget: Budget) => Awaitable<T>,
    ms = this.timeoutMs,
  ): Promise<T> {
    return bounded(new Budget(this.#name, operation, ms), fn);
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

  // ---- batching ----

  /** The live row of `key`: at once if few reads are out, else with the next batch. */
  #readLive(key: string, now: number, budget: Budget): Awaitable<SessionRow | undefined> {
    const many = this.selectLiveMany;
    if (many === undefined) return this.selectLive(key, now, budget);
    this.#reads ??= new Batcher(
      this.batchMax,
      (read, own) => this.selectLive(read.key, read.now, own),
      (reads, ms) => {
        // Read after every load of the batch began: a row expired by then is not returned.
        const at = this.#clock();
        const keys = reads.map((read) => read.key);
        return this.within(
          'load',
          async (batch) => {
            const rows = await many.call(this, keys, at, batch);
            return reads.map((read) => rows.get(read.key));
          },
          ms,
        );
      },
    );
    return this.#reads.run({ key, now }, budget);
  }

  /**
   * A commit's one UPDATE: with the next batch if the engine batches this shape, else alone. A
   * commit the batch did not apply (its row held by another transaction, gone, or its guard
   * failed) is sent alone, so it waits for a held row and answers exactly as without batching.
   */
  async #update(input: CommitInput, shape: number, budget: Budget): Promise<boolean> {
    const many = this.updateMany;
    if (many === undefined || (shape & UNBATCHED_SHAPES) !== 0) return this.update(input, shape, budget);
    this.#commits ??= new Batcher(
      this.batchMax,
      // Alone, too, through the statement that does not wait for a held row: a held row never
      // keeps one of the two statements out (and everyone else's commits) waiting.
      async (item, own) => (await many.call(this, [item.input], own))[0]!,
      (items, ms) => {
        const inputs = items.map((item) => item.input);
        return this.within('commit', (batch) => many.call(this, inputs, batch), ms);
      },
    );
    return this.#batched(this.#commits, { input, shape }, budget, () => this.update(input, shape, budget));
  }

  /** A create's insert: with the next batch if the engine batches creates, else alone. */
  #insert(item: InsertItem, budget: Budget): Awaitable<boolean> {
    const many = this.insertMany;
    const alone = () => this.insert(item.key, item.record, item.expiresAt, item.now, budget);
    if (many === undefined) return alone();
    this.#inserts ??= new Batcher(
      this.batchMax,
      async (one, own) => (await many.call(this, [one], own))[0]!,
      (items, ms) => this.within('create', (batch) => many.call(this, items, batch), ms),
    );
    return this.#batched(this.#inserts, item, budget, alone);
  }

  /**
   * Runs `item` with the next batch of `batcher`; if the batch did not apply it (or the server
   * refused the whole statement, which then wrote nothing: one item of it may be what it
   * refused), `alone` sends it by itself and gives its own answer.
   */
  async #batched<I>(
    batcher: Batcher<I, boolean>,
    item: I,
    budget: Budget,
    alone: () => Awaitable<boolean>,
  ): Promise<boolean> {
    let applied: boolean;
    try {
      applied = await batcher.run(item, budget);
    } catch (err) {
      if (!isStatementError(err)) throw err;
      applied = false;
    }
    return applied || alone();
  }

  // ---- the contract ----

  async load(key: string): Promise<StoredSession | null> {
    checkStorageKey(this.#name, key);
    return this.within('load', async (budget) => {
      const now = this.#clock();
      const row = await this.#readLive(key, now, budget);
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
    checkRecord(this.#name, record);
    return this.within('create', async (budget) => {
      const now = this.#clock();
      if (!isLiveTtl(ttlMs)) return (await this.selectLive(key, now, budget)) === undefined;
      const item = { key, record, expiresAt: Math.ceil(now + ttlMs), now };
      return this.serial(key, budget, () => this.#insert(item, budget));
    });
  }

  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    checkStorageKey(this.#name, key);
    checkDelta(this.#name, delta);
    return this.within('commit', (budget) =>
      this.serial(key, budget, async (): Promise<CommitResult> => {
        const now = this.#clock();
        if (isLiveTtl(ttlMs)) {
          const { input, shape } = commitInput(key, delta, guard, Math.ceil(now + ttlMs), now);
          if (await this.#update(input, shape, budget)) return 'ok';
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
   * Deletes expired rows in batches, oldest expiry first through the `expires_at` index, yielding
   * to the event loop between them; returns how many. Each batch has its own `timeoutMs`, so a
   * large backlog is not cut short, but a stalled server is. A batch holds at most `gcBatchSize`
   * rows, fewer when the last one took longer than a quarter of `timeoutMs` (SQLite: 8 ms; the
   * next batch is sized from the time per row just measured), so a slow disk or a busy server
   * gets short statements. MySqlStore walks the table in key order instead once at least a
   * tenth of it has expired (docs/stores-sql.md); its batches are bounded the same way.
   */
  async gc(now: number = this.#clock()): Promise<number> {
    const at = Math.floor(now);
    const inKeyOrder =
      this.deleteExpiredAfter !== undefined &&
      (await this.within('gc', (budget) => this.sweepsInKeyOrder?.(at, budget))) === true;
    // One batch: how many rows it removed, and whether it was the last. In key order, each batch
    // continues after the last key the previous one deleted, until the end of the table.
    let after: string | null = null;
    const batch = async (limit: number, budget: Budget): Promise<{ removed: number; done: boolean }> => {
      if (inKeyOrder) {
        const step = await this.deleteExpiredAfter!(at, after, limit, budget);
        after = step.last;
        return { removed: step.removed, done: step.last === null };
      }
      const n = await this.deleteExpiredBatch(at, limit, budget);
      return { removed: n, done: n < limit };
    };
    let removed = 0;
    let limit = this.#gcBatch;
    for (;;) {
      const started = performance.now();
      const step = await this.within('gc', (budget) => batch(limit, budget));
      removed += step.removed;
      if (step.done) return removed;
      limit = this.#nextGcBatch(limit, performance.now() - started);
      await yieldToEventLoop();
    }
  }

  /** The size of the next gc batch: what fits in `gcBatchMs` at the last batch's pace. */
  #nextGcBatch(limit: number, tookMs: number): number {
    const fits = Math.floor((limit * this.gcBatchMs) / Math.max(tookMs, 0.01));
    // Grow at most twofold a batch (one fast batch proves little), never above gcBatchSize.
    return Math.max(1, Math.min(this.#gcBatch, 2 * limit, fits));
  }
}
