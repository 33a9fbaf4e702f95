import { createHash } from 'node:crypto';
import { SessionError } from '../errors.js';
import {
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

/** A delta split for engines that merge with set/remove operators (PostgreSQL jsonb). */
export interface SplitDelta {
  /** Whether the values change at all (a touch leaves the data column alone). */
  hasValues: boolean;
  set: string;
  unset: string[];
  metaSet: string;
  metaUnset: string[];
}

function splitMeta(meta: Partial<SessionMeta> | undefined): {
  set: Record<string, unknown>;
  unset: string[];
} {
  const set: Record<string, unknown> = {};
  const unset: string[] = [];
  // `undefined` means "drop this field", as it does when applyDelta's result is serialised.
  for (const [k, v] of Object.entries(meta ?? {})) {
    if (v === undefined) unset.push(k);
    else set[k] = v;
  }
  return { set, unset };
}

/** Splits a delta into JSON objects to merge and key lists to remove. */
export function splitDelta(delta: SessionDelta): SplitDelta {
  const meta = splitMeta(delta.meta);
  return {
    hasValues: Object.keys(delta.set).length > 0 || delta.unset.length > 0,
    set: JSON.stringify(delta.set),
    unset: delta.unset,
    metaSet: JSON.stringify(meta.set),
    metaUnset: meta.unset,
  };
}

/** A delta as RFC 7396 merge patches, for engines with JSON_MERGE_PATCH / json_patch. */
export interface PatchDelta {
  /** The values patch, or null when no value changed: a touch then leaves the data column unwritten. */
  data: string | null;
  meta: string;
}

function patchOf(set: Record<string, unknown>, unset: Iterable<string>): string {
  // Values and metadata fields are scalars, never null, so a null in the patch can only mean
  // "remove": no JSON path is ever built from a key, so no key needs escaping.
  const patch: Record<string, unknown> = Object.create(null);
  for (const k of unset) patch[k] = null;
  for (const [k, v] of Object.entries(set)) patch[k] = v;
  return JSON.stringify(patch);
}

/** Turns a delta into merge patches where `null` removes a key. */
export function patchDelta(delta: SessionDelta): PatchDelta {
  const meta = splitMeta(delta.meta);
  const hasValues = Object.keys(delta.set).length > 0 || delta.unset.length > 0;
  return { data: hasValues ? patchOf(delta.set, delta.unset) : null, meta: patchOf(meta.set, meta.unset) };
}

function jsonObject(value: unknown, what: string): Record<string, unknown> {
  // Drivers differ: pg and mysql2 parse JSON columns, better-sqlite3 returns text.
  const parsed: unknown = typeof value === 'string' ? JSON.parse(value) : value;
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new SessionError('STORE_CORRUPT', `A session row has a ${what} column that is not a JSON object.`);
  }
  return parsed as Record<string, unknown>;
}

/** Reads a row's meta column. */
export function decodeMeta(meta: unknown): SessionMeta {
  return { ...jsonObject(meta, 'meta') } as unknown as SessionMeta;
}

/** Builds a record from a row's JSON columns; values get a null prototype so `__proto__` stays data. */
export function decodeRow(meta: unknown, data: unknown): StoredSession {
  const values: Record<string, string> = Object.create(null);
  for (const [k, v] of Object.entries(jsonObject(data, 'data'))) {
    if (typeof v !== 'string')
      throw new SessionError('STORE_CORRUPT', 'A session row holds a non-string value.');
    values[k] = v;
  }
  return { meta: decodeMeta(meta), values };
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

/** The statements each engine prepares. */
export type StatementName = 'select' | 'purge' | 'insert' | 'update' | 'touch' | 'remove' | 'byUser' | 'gc';

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
): Record<'select' | 'purge' | 'remove' | 'byUser', string> {
  return {
    select: `SELECT meta, data FROM ${table} WHERE id = ${p(1)} AND expires_at > ${p(2)}`,
    purge: `DELETE FROM ${table} WHERE id = ${p(1)} AND expires_at <= ${p(2)}`,
    remove: `DELETE FROM ${table} WHERE id = ${p(1)}`,
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
  readonly #now: () => number;
  readonly #gcBatch: number;

  protected constructor(options: SqlStoreOptions = {}) {
    this.table = checkTable(options.table);
    this.#now = options.now ?? Date.now;
    this.#gcBatch = options.gcBatchSize ?? 500;
    if (!(Number.isInteger(this.#gcBatch) && this.#gcBatch > 0)) {
      throw new SessionError('INVALID_OPTION', 'SQL store gcBatchSize must be a positive integer.');
    }
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
  /** Merges the delta into the live row in one atomic statement; false if no live row matched. */
  protected abstract update(
    key: string,
    delta: SessionDelta,
    expiresAt: number,
    now: number,
  ): Awaitable<boolean>;
  /** Deletes the row of `key`, live or not. */
  protected abstract deleteKey(key: string): Awaitable<void>;
  /** Live rows of one user, found through the user_id index. */
  protected abstract selectByUser(userId: string, now: number): Awaitable<UserSessionRow[]>;
  /** Deletes at most `limit` rows expired at `now`; returns how many. */
  protected abstract deleteExpiredBatch(now: number, limit: number): Awaitable<number>;

  /** Integer milliseconds: the expiry column is a BIGINT. */
  #clock(): number {
    return Math.floor(this.#now());
  }

  async load(key: string): Promise<StoredSession | null> {
    const now = this.#clock();
    const row = await this.selectLive(key, now);
    if (row) return decodeRow(row.meta, row.data);
    // Only a miss pays for the cleanup; the read above already ignored the expired row.
    await this.deleteIfExpired(key, now);
    return null;
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    const now = this.#clock();
    if (!isLiveTtl(ttlMs)) return (await this.selectLive(key, now)) === undefined;
    return this.insert(key, record, Math.ceil(now + ttlMs), now);
  }

  async commit(key: string, delta: SessionDelta, ttlMs: number): Promise<CommitResult> {
    if (!isLiveTtl(ttlMs)) {
      await this.deleteKey(key);
      return 'gone';
    }
    const now = this.#clock();
    return (await this.update(key, delta, Math.ceil(now + ttlMs), now)) ? 'ok' : 'gone';
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<CommitResult> {
    return this.commit(key, { set: {}, unset: [], meta }, ttlMs);
  }

  async destroy(key: string): Promise<void> {
    await this.deleteKey(key);
  }

  async sessionsOf(userId: string): Promise<SessionSummary[]> {
    const rows = await this.selectByUser(userId, this.#clock());
    return rows.map((row) => ({ key: String(row.id), meta: decodeMeta(row.meta) }));
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
