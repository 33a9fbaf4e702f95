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

/** Options every SQL store accepts. */
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

/**
 * The store contract on top of a handful of engine statements. Every statement an engine supplies
 * binds keys, values and times as parameters; only the validated table name is part of the text.
 */
export abstract class SqlSessionStore implements SessionStore {
  readonly capabilities = { listByUser: true, gc: true, nativeTtl: false } as const;
  /** The validated table name. */
  readonly table: string;
  readonly #name: string;
  readonly #now: () => number;
  readonly #gcBatch: number;
  readonly #corrupt: CorruptLog;

  /** `storeName` names the store in errors and corrupt-row reports. */
  protected constructor(storeName: string, options: SqlStoreOptions = {}) {
    this.#name = storeName;
    this.table = checkTable(options.table);
    this.#now = options.now ?? Date.now;
    this.#gcBatch = options.gcBatchSize ?? 500;
    if (!(Number.isInteger(this.#gcBatch) && this.#gcBatch > 0)) {
      throw new SessionError('INVALID_OPTION', 'SQL store gcBatchSize must be a positive integer.');
    }
    this.#corrupt = new CorruptLog(options.onCorrupt);
  }

  /** Creates the table and its indexes if they are missing; safe to run on every start. */
  abstract migrate(): Promise<void>;

  /** The row of `key` if it has not expired at `now`. */
  protected abstract selectLive(key: string, now: number): Awaitable<SessionRow | undefined>;
  /** Deletes the row of `key` only if it has expired at `now`. */
  protected abstract deleteIfExpired(key: string, now: number): Awaitable<void>;
  /** Inserts a row, replacing an expired one; false if a live row holds the key. */
  protected abstract insert(
    key: string,
    record: StoredSession,
    expiresAt: number,
    now: number,
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
  ): Awaitable<boolean>;
  /** Deletes the row of `key`, live or not, if the guard holds; true if a row was deleted. */
  protected abstract deleteKey(key: string, guard?: CommitGuard): Awaitable<boolean>;
  /** Live rows of one user, found through the user_id index. */
  protected abstract selectByUser(userId: string, now: number): Awaitable<UserSessionRow[]>;
  /** Deletes at most `limit` rows expired at `now`; returns how many. */
  protected abstract deleteExpiredBatch(now: number, limit: number): Awaitable<number>;

  /** Corrupt rows are reported through the manager's `warn` (unless `onCorrupt` was given). */
  setWarn(warn: (message: string) => void): void {
    this.#corrupt.attach(warn);
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
    const now = this.#clock();
    const row = await this.selectLive(key, now);
    if (row) {
      const record = decodeRow(row.meta, row.data);
      if (typeof record !== 'string') return record;
      this.#report(key, record);
      return null;
    }
    // Only a miss pays for the cleanup; the read above already ignored the expired row.
    await this.deleteIfExpired(key, now);
    return null;
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    checkStorageKey(this.#name, key);
    const now = this.#clock();
    if (!isLiveTtl(ttlMs)) return (await this.selectLive(key, now)) === undefined;
    return this.insert(key, record, Math.ceil(now + ttlMs), now);
  }

  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    checkStorageKey(this.#name, key);
    const now = this.#clock();
    if (isLiveTtl(ttlMs)) {
      if (await this.update(key, delta, guard, Math.ceil(now + ttlMs), now)) return 'ok';
    } else if ((await this.deleteKey(key, guard)) || !isGuarded(guard)) {
      // A non-positive TTL ends the session: the row goes (if the guard holds) and the answer is 'gone'.
      return 'gone';
    }
    // Nothing matched. Only this failure path reads again, to tell a failed guard from a gone row.
    return isGuarded(guard) && (await this.selectLive(key, now)) !== undefined ? 'conflict' : 'gone';
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'> {
    return (await this.commit(key, { set: {}, unset: [], meta }, ttlMs)) === 'ok' ? 'ok' : 'gone';
  }

  async destroy(key: string): Promise<void> {
    checkStorageKey(this.#name, key);
    await this.deleteKey(key);
  }

  async sessionsOf(userId: string): Promise<SessionSummary[]> {
    const rows = await this.selectByUser(userId, this.#clock());
    const out: SessionSummary[] = [];
    for (const row of rows) {
      const key = String(row.id);
      const meta = decodeMeta(row.meta);
      if (meta) out.push({ key, meta });
      else this.#report(key, 'meta is not a session metadata object');
    }
    return out;
  }

  /** Deletes expired rows in bounded batches, yielding between them; returns how many. */
  async gc(now: number = this.#clock()): Promise<number> {
    const at = Math.floor(now);
    let removed = 0;
    for (;;) {
      const n = await this.deleteExpiredBatch(at, this.#gcBatch);
      removed += n;
      if (n < this.#gcBatch) return removed;
      await yieldToEventLoop();
    }
  }
}
