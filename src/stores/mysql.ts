import type { Pool as CallbackPool } from 'mysql2';
import type { Pool, PoolConnection, ResultSetHeader, RowDataPacket } from 'mysql2/promise';
import { SessionError } from '../errors.js';
import {
  type Bind,
  type Budget,
  bindValues,
  type CommitDialect,
  type CommitInput,
  CommitStatements,
  type Compiled,
  checkTable,
  DEFAULT_TABLE,
  decodeMeta,
  deleteInput,
  deleteShape,
  indexName,
  metaPatch,
  portableStatements,
  type SessionRow,
  Shape,
  SqlSessionStore,
  type SqlStoreOptions,
  type StatementName,
  type UserSessionRow,
  valuesPatch,
  waitWithin,
} from './sql-common.js';
import { type CommitGuard, guardHolds, type StoredSession } from './store.js';

/**
 * Options of {@link MySqlStore}: the shared SQL store options.
 *
 * @interface
 */
export type MySqlStoreOptions = SqlStoreOptions;

/**
 * The MySQL/MariaDB DDL of the session table, for users who run migrations themselves. One
 * statement (indexes inline), so it is atomic and idempotent.
 *
 * `id` and `user_id` use a binary collation: storage keys are case-sensitive base64url, and a
 * case-insensitive collation would make two keys collide. On MariaDB `JSON` is LONGTEXT with a
 * `JSON_VALID` check; on MySQL it is the native JSON type. Both work with the same statements.
 */
export function mysqlSchema(table: string = DEFAULT_TABLE): string {
  const t = checkTable(table);
  return `CREATE TABLE IF NOT EXISTS \`${t}\` (
  id VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  meta JSON NOT NULL,
  data JSON NOT NULL,
  user_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
    AS (JSON_UNQUOTE(JSON_EXTRACT(meta, '$.userId'))) STORED,
  expires_at BIGINT NOT NULL,
  PRIMARY KEY (id),
  KEY \`${indexName(t, 'user_id_idx')}\` (user_id),
  KEY \`${indexName(t, 'expires_at_idx')}\` (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`;
}

/**
 * `user_id = ?` alone is not exact: utf8mb4_bin is a PAD SPACE collation, so 'alice ' would
 * equal 'alice'. The equality keeps the index usable, the byte length makes it exact.
 */
const exactUser = (bind: Bind) => {
  const user = (c: CommitInput) => c.guard!.userId;
  return `user_id = ${bind.add(user)} AND OCTET_LENGTH(user_id) = OCTET_LENGTH(${bind.add(user)})`;
};

/** One row per string of a JSON array (column `k`); callers compare them as bytes, never by collation. */
const keysOf = (json: string) => `JSON_TABLE(${json}, '$[*]' COLUMNS (k LONGTEXT PATH '$'))`;

/**
 * How a commit reads in MySQL/MariaDB: merge patches, never JSON paths. `retain` merges first a
 * patch, built in the statement from the row's own keys (JSON_KEYS), that maps every field not
 * retained to null, so values written concurrently are dropped too.
 */
const dialect: CommitDialect = {
  numbered: false,
  data(shape, bind) {
    const dropped =
      shape & Shape.retain
        ? `, (SELECT COALESCE(JSON_OBJECTAGG(j.k, NULL), '{}') FROM ${keysOf('JSON_KEYS(data)')} AS j
          WHERE CAST(j.k AS BINARY) NOT IN (SELECT CAST(r.k AS BINARY) FROM ${keysOf(bind.add((c) => JSON.stringify(c.delta.retain)))} AS r))`
        : '';
    const patch = shape & (Shape.set | Shape.unset) ? `, ${bind.add((c) => valuesPatch(c.delta))}` : '';
    return `JSON_MERGE_PATCH(data${dropped}${patch})`;
  },
  meta: (_shape, bind) => `JSON_MERGE_PATCH(meta, ${bind.add(metaPatch)})`,
  // JSON_UNQUOTE answers in the connection's collation, maybe case-insensitive: compare bytes.
  handleIs: (bind) =>
    `CAST(JSON_UNQUOTE(JSON_EXTRACT(meta, '$.h')) AS BINARY) = CAST(${bind.add((c) => c.guard!.handle)} AS BINARY)`,
  userIs: exactUser,
};

/** Keys per batched read: IN lists of 2, 4, ... 64 placeholders, so a handful of prepared texts. */
const READ_BATCH_SIZES = [2, 4, 8, 16, 32, 64];

/**
 * gc walks the table in key order once at least this many rows have expired, and at least one
 * row in {@link SWEEP_SHARE} (see `sweepsInKeyOrder`).
 */
const SWEEP_MIN_EXPIRED = 10_000;
const SWEEP_SHARE = 10;
/**
 * Keys per DELETE of a key-order gc batch (the last statement is padded up to one of them). Each
 * DELETE is a transaction, and its commit a redo-log flush: a batch of 500 in one statement took
 * 6.1-6.3 s for 500k rows against 6.9 s in statements of at most 128.
 */
const SWEEP_DELETE_SIZES = [16, 128, 512];

/**
 * The values of an `IN (?, ...)` statement prepared for a few list sizes: `keys` padded with its
 * first key up to the smallest size that holds them (a key named twice matches once), then `now`.
 */
function inList(
  keys: readonly string[],
  sizes: readonly number[],
  now: number,
): { size: number; values: unknown[] } {
  const size = sizes.find((n) => n >= keys.length) ?? keys.length;
  const values: unknown[] = [...keys];
  while (values.length < size) values.push(keys[0]);
  values.push(now);
  return { size, values };
}

/** "Rows matched: 1  Changed: 0  Warnings: 0", the server's info on an UPDATE. */
const ROWS_MATCHED = /Rows matched:\s*(\d+)/;

const ER_DUP_ENTRY = 1062;
/** InnoDB gave up waiting for a row lock (innodb_lock_wait_timeout). */
const ER_LOCK_WAIT_TIMEOUT = 1205;
/** MariaDB stopped a statement at its max_statement_time. */
const ER_STATEMENT_TIMEOUT = 1969;

const errnoOf = (err: unknown) => (err as { errno?: unknown } | null)?.errno;

function isDuplicateKey(err: unknown): boolean {
  return errnoOf(err) === ER_DUP_ENTRY;
}

/** A time in MariaDB's `max_statement_time` unit: seconds, rounded up to a tenth. */
const statementSeconds = (ms: number) => (Math.max(1, Math.ceil(ms / 100)) / 10).toFixed(1);

/**
 * What every statement of the store asks of mysql2, whatever options the application's pool was
 * given: rows as objects keyed by column (not `rowsAsArray`, not `nestTables`) with mysql2's own
 * conversion of each column (`typeCast`). Without them a pool made with `rowsAsArray: true` or
 * `typeCast: false` read every session as corrupt, and so signed everyone out.
 */
const ROWS_AS_OBJECTS = { rowsAsArray: false, nestTables: false, typeCast: true } as const;

/**
 * A pool whose `typeCast` is a function of the application's keeps it over a statement's
 * `typeCast: true` (mysql2 lets only a function replace a function): this one hands every column
 * to mysql2's own conversion.
 */
const OWN_CONVERSION = {
  ...ROWS_AS_OBJECTS,
  typeCast: (_field: unknown, next: () => unknown) => next(),
} as const;

/**
 * The promise API of the application's mysql2 pool: a pool of mysql2's callback API
 * (`require('mysql2').createPool`) is taken through its `.promise()`. Anything without
 * `getConnection` (a single connection, say) is refused at construction, with what to pass,
 * instead of failing every request with a 503.
 */
function promisePool(pool: unknown): Pool {
  const p = pool as { getConnection?: unknown; promise?: () => Pool } | null;
  if (typeof p?.getConnection !== 'function') {
    throw new SessionError(
      'INVALID_OPTION',
      'MySqlStore needs a mysql2 pool (createPool from mysql2/promise, or from mysql2), not a single connection or anything else: the store takes a connection from the pool for each statement, so that requests of different sessions run side by side and a broken connection is replaced.',
    );
  }
  return typeof p.promise === 'function' ? p.promise() : (pool as Pool);
}

/** The statement options for `conn` (see {@link ROWS_AS_OBJECTS}). */
function rowOptions(conn: PoolConnection) {
  const config = (conn.connection as { config?: { typeCast?: unknown } }).config;
  return typeof config?.typeCast === 'function' ? OWN_CONVERSION : ROWS_AS_OBJECTS;
}

/**
 * Sessions in MySQL 8 or MariaDB (tested on 10.11) through the application's own `mysql2/promise` pool.
 *
 * Atomic merge: one `UPDATE ... SET data = JSON_MERGE_PATCH(data, ?) ... WHERE id = ? AND
 * expires_at > ? [AND <guard>]`. The delta travels as a single RFC 7396 merge patch (unset keys as
 * `null`; values are always strings, so `null` is unambiguous). No JSON path is ever built from a
 * session key, which removes the path-quoting pitfall of JSON_SET/JSON_REMOVE altogether. InnoDB
 * holds the row lock for the statement and evaluates the WHERE (guard included) and the patch on
 * the latest committed version, so parallel commits all survive, of two ID changes from one
 * handle only the first matches, and a deleted row matches nothing. One round trip and no
 * explicit transaction, unlike `SELECT ... FOR UPDATE` + merge in JS + `UPDATE`, which would pin
 * a pooled connection and hold the row lock for four round trips.
 *
 * Every comparison is exact: `id` and `user_id` are utf8mb4_bin, which ignores trailing spaces, so
 * a user id is also compared by byte length, and the handle as bytes.
 *
 * Every operation is bounded by `timeoutMs`: the wait for a pooled connection (mysql2 has no such
 * bound of its own), the statement, and its answer. On MariaDB each write runs as
 * `SET STATEMENT max_statement_time=<time left> FOR ...`, so the server stops waiting for a row
 * another transaction holds when the request stops waiting. On MySQL, which has no per-statement
 * lock bound, set `innodb_lock_wait_timeout` on the pool's connections (docs/stores-sql.md). A
 * connection whose answer did not come in time is destroyed, not returned to the pool.
 *
 * @example
 * const pool = mysql.createPool('mysql://app@127.0.0.1:3306/app');
 * const store = new MySqlStore(pool);
 * await store.migrate();
 * const sessions = new SessionManager({ store, secret });
 */
export class MySqlStore extends SqlSessionStore {
  readonly #pool: Pool;
  readonly #sql: Readonly<Record<StatementName, string>>;
  /** `SELECT ... WHERE id IN (?, ...)` by the number of placeholders. */
  readonly #selectMany = new Map<number, string>();
  /** The fewest expired rows for which gc walks the table in key order (see `sweepsInKeyOrder`). */
  protected readonly sweepMinExpired: number = SWEEP_MIN_EXPIRED;
  /** The statements of gc in key order (see `sweepsInKeyOrder`); the deletes by size. */
  readonly #sweep: { rows: string; count: string; first: string; next: string; delete: Map<number, string> };
  readonly #commits: CommitStatements<Compiled>;
  /** Whether the server is MariaDB (which bounds a statement with SET STATEMENT); asked once. */
  #mariadb: Promise<boolean> | undefined;
  #isMariaDbKnown: boolean | undefined;

  constructor(pool: Pool | CallbackPool, options: MySqlStoreOptions = {}) {
    super('MySqlStore', options);
    this.#pool = promisePool(pool);
    this.batchMax = READ_BATCH_SIZES.at(-1)!;
    const t = `\`${this.table}\``;
    this.#sql = {
      ...portableStatements(t, () => '?'),
      insert: `INSERT INTO ${t} (id, meta, data, expires_at) VALUES (?, ?, ?, ?)`,
      // Exact, as in the guard: see exactUser.
      byUser: `SELECT id, meta FROM ${t}
        WHERE user_id = ? AND OCTET_LENGTH(user_id) = OCTET_LENGTH(?) AND expires_at > ?`,
      // Oldest expiry first, through the expires_at index (the ORDER BY keeps it so whatever the
      // optimizer's statistics say): the cost follows the expired rows, not the live ones.
      gc: `DELETE FROM ${t} WHERE expires_at <= ? ORDER BY expires_at LIMIT ?`,
    };
    for (const n of READ_BATCH_SIZES) {
      this.#selectMany.set(
        n,
        `SELECT id, meta, data FROM ${t} WHERE id IN (${Array(n).fill('?').join(', ')}) AND expires_at > ?`,
      );
    }
    this.#commits = new CommitStatements(t, dialect, (compiled) => compiled);
    // The SELECTs are plain (lock-free) reads along the primary key; the DELETEs lock only the
    // expired rows they name, and keep a row renewed meanwhile.
    this.#sweep = {
      rows: `SELECT TABLE_ROWS AS n FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?`,
      count: `SELECT COUNT(*) AS n FROM (SELECT 1 FROM ${t} WHERE expires_at <= ? LIMIT ?) AS expired`,
      first: `SELECT id FROM ${t} FORCE INDEX (PRIMARY) WHERE expires_at <= ? ORDER BY id LIMIT ?`,
      next: `SELECT id FROM ${t} FORCE INDEX (PRIMARY) WHERE id > ? AND expires_at <= ? ORDER BY id LIMIT ?`,
      delete: new Map(
        SWEEP_DELETE_SIZES.map((n) => [
          n,
          `DELETE FROM ${t} WHERE id IN (${Array(n).fill('?').join(', ')}) AND expires_at <= ?`,
        ]),
      ),
    };
  }

  /** Creates the table with its indexes if missing (a single, idempotent statement). */
  async migrate(): Promise<void> {
    await this.#pool.query(mysqlSchema(this.table));
  }

  #isMariaDb(conn: PoolConnection): Promise<boolean> {
    if (!this.#mariadb) {
      const asked = conn
        .query<RowDataPacket[]>({ sql: 'SELECT VERSION() AS v', ...rowOptions(conn) })
        .then(([rows]) => (this.#isMariaDbKnown = /mariadb/i.test(String(rows[0]?.v))));
      // Asked again on the next statement if the server did not answer.
      asked.catch(() => {
        if (this.#mariadb === asked) this.#mariadb = undefined;
      });
      this.#mariadb = asked;
    }
    return this.#mariadb;
  }

  /**
   * One prepared statement on a pooled connection, within `budget`; a write (`lockBounded`) also
   * tells MariaDB to give up at the same time. A connection that arrives after the budget is
   * handed straight back; one whose answer does not come in time is destroyed when the budget
   * runs out. No timer of its own: every wait is on the operation's budget.
   */
  async #execute<T extends ResultSetHeader | RowDataPacket[]>(
    sql: string,
    values: unknown[],
    budget: Budget = this.budget('query'),
    lockBounded = false,
  ): Promise<T> {
    // mysql2's pool has no bound of its own; a connection that comes after the deadline is
    // handed straight back.
    const conn = await waitWithin(this.#pool.getConnection(), budget, (late) => late.release());
    // mysql2 listens for a pooled connection's first error only.
    this.clientErrors.watch(conn.connection);
    if (budget.remaining() === 0) {
      conn.release();
      throw budget.error();
    }
    let broken = false;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      if (broken) conn.destroy();
      else conn.release();
    };
    const stop = budget.onExpire(() => {
      broken = true;
      finish();
    });
    try {
      const mariadb =
        lockBounded && (this.#isMariaDbKnown ?? (await waitWithin(this.#isMariaDb(conn), budget)));
      const text = mariadb
        ? `SET STATEMENT max_statement_time=${statementSeconds(budget.remaining())} FOR ${sql}`
        : sql;
      // A destroyed connection may never answer: the wait ends with the budget all the same.
      const [result] = await waitWithin(
        conn.execute<T>({ sql: text, values: values as (string | number)[], ...rowOptions(conn) }),
        budget,
      );
      return result;
    } catch (err) {
      const errno = errnoOf(err);
      if (errno === ER_STATEMENT_TIMEOUT || errno === ER_LOCK_WAIT_TIMEOUT) throw budget.error(err);
      throw err;
    } finally {
      stop();
      finish();
    }
  }

  async #write(sql: string, values: unknown[], budget?: Budget): Promise<number> {
    return (await this.#execute<ResultSetHeader>(sql, values, budget, true)).affectedRows;
  }

  protected async selectLive(key: string, now: number, budget?: Budget): Promise<SessionRow | undefined> {
    const rows = await this.#execute<RowDataPacket[]>(this.#sql.select, [key, now], budget);
    return rows[0] as SessionRow | undefined;
  }

  protected override async selectLiveMany(
    keys: string[],
    now: number,
    budget?: Budget,
  ): Promise<Map<string, SessionRow>> {
    const { size, values } = inList(keys, READ_BATCH_SIZES, now);
    const rows = await this.#execute<RowDataPacket[]>(this.#selectMany.get(size)!, values, budget);
    const byKey = new Map<string, SessionRow>();
    for (const row of rows) byKey.set(String(row.id), row as SessionRow);
    return byKey;
  }

  protected async deleteIfExpired(key: string, now: number, budget?: Budget): Promise<void> {
    await this.#write(this.#sql.purge, [key, now], budget);
  }

  protected async insert(
    key: string,
    record: StoredSession,
    expiresAt: number,
    now: number,
    budget?: Budget,
  ): Promise<boolean> {
    const values = [key, JSON.stringify(record.meta), JSON.stringify(record.values), expiresAt];
    try {
      await this.#write(this.#sql.insert, values, budget);
      return true;
    } catch (err) {
      if (!isDuplicateKey(err)) throw err;
    }
    // The key is taken. Only an expired leftover may give way. The second insert decides, even
    // when the purge found nothing to remove: gc or a destroy may have removed the leftover
    // between the two statements (the key is free), or a live row holds the key (it fails again).
    await this.#write(this.#sql.purge, [key, now], budget);
    try {
      await this.#write(this.#sql.insert, values, budget);
      return true;
    } catch (err) {
      if (isDuplicateKey(err)) return false;
      throw err;
    }
  }

  protected async update(input: CommitInput, shape: number, budget?: Budget): Promise<boolean> {
    const { sql, slots } = this.#commits.commit(shape);
    const result = await this.#execute<ResultSetHeader>(sql, bindValues(slots, input), budget, true);
    // affectedRows counts matched rows under CLIENT_FOUND_ROWS (mysql2's default) but changed rows
    // on a pool without it, where an identical write reports 0: the server's info has the match.
    const matched = ROWS_MATCHED.exec(result.info ?? '');
    if (matched) return Number(matched[1]) > 0;
    if (result.affectedRows > 0) return true;
    const row = await this.selectLive(input.key, input.now, budget);
    const meta = row && decodeMeta(row.meta);
    return !!meta && guardHolds(meta, input.guard);
  }

  protected async deleteKey(key: string, guard?: CommitGuard, budget?: Budget): Promise<boolean> {
    const { sql, slots } = this.#commits.delete(deleteShape(guard));
    return (await this.#write(sql, bindValues(slots, deleteInput(key, guard)), budget)) > 0;
  }

  protected async selectByUser(userId: string, now: number, budget?: Budget): Promise<UserSessionRow[]> {
    const rows = await this.#execute<RowDataPacket[]>(this.#sql.byUser, [userId, userId, now], budget);
    return rows as UserSessionRow[];
  }

  protected async deleteExpiredBatch(now: number, limit: number, budget?: Budget): Promise<number> {
    // LIMIT as a string: MySQL 8's prepared statements reject a DOUBLE there (mysql2 sends
    // numbers as DOUBLE); MariaDB accepts both.
    return this.#write(this.#sql.gc, [now, String(limit)], budget);
  }

  /**
   * InnoDB keeps rows in primary-key order, and session keys are random: rows expire all over
   * the table. Through the expires_at index each expired row costs a random visit to its page,
   * a read from disk when the table is larger than the buffer pool (`npx tsx bench/sql.ts
   * --store mysql --mode gc`, 1M rows, 523 MB, default 128 MB pool: 79 s for the 500k expired).
   * Walking the table in key order reads each page once, in order (6.1-6.9 s for the same rows
   * without other load, 9-10.5 s under the bench's load; the disk is the limit there: two walks
   * over halves of the key range in parallel took as long as one), but it reads the live rows
   * too. So gc walks when at least a tenth of the rows (the server's estimate) and at least
   * 10,000 have expired: at one in ten both ways took 2.5 s for 100k rows of 1M on this table;
   * with fewer expired rows the index costs less.
   */
  protected override async sweepsInKeyOrder(now: number, budget?: Budget): Promise<boolean> {
    const table = await this.#execute<RowDataPacket[]>(this.#sweep.rows, [this.table], budget);
    const rows = Number(table[0]?.n);
    if (!(rows >= this.sweepMinExpired)) return false;
    const enough = Math.max(this.sweepMinExpired, Math.ceil(rows / SWEEP_SHARE));
    const counted = await this.#execute<RowDataPacket[]>(this.#sweep.count, [now, String(enough)], budget);
    return Number(counted[0]?.n) >= enough;
  }

  protected override async deleteExpiredAfter(
    now: number,
    after: string | null,
    limit: number,
    budget?: Budget,
  ): Promise<{ removed: number; last: string | null }> {
    const found = await this.#execute<RowDataPacket[]>(
      after === null ? this.#sweep.first : this.#sweep.next,
      after === null ? [now, String(limit)] : [after, now, String(limit)],
      budget,
      true,
    );
    const keys = found.map((row) => String(row.id));
    const largest = SWEEP_DELETE_SIZES.at(-1)!;
    let removed = 0;
    for (let at = 0; at < keys.length; at += largest) {
      const { size, values } = inList(keys.slice(at, at + largest), SWEEP_DELETE_SIZES, now);
      removed += await this.#write(this.#sweep.delete.get(size)!, values, budget);
    }
    return { removed, last: keys.length < limit ? null : keys.at(-1)! };
  }
}
