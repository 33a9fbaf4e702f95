import type { Pool, ResultSetHeader, RowDataPacket } from 'mysql2/promise';
import {
  type Bind,
  type CommitDialect,
  type Composed,
  checkTable,
  composeCommit,
  composeDelete,
  DEFAULT_TABLE,
  decodeMeta,
  indexName,
  metaPatch,
  portableStatements,
  type SessionRow,
  SqlSessionStore,
  type SqlStoreOptions,
  type StatementName,
  type UserSessionRow,
  valuesPatch,
} from './sql-common.js';
import { type CommitGuard, guardHolds, type SessionDelta, type StoredSession } from './store.js';

/** Options of {@link MySqlStore}: the shared SQL store options. */
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
const exactUser = (userId: string, bind: Bind) =>
  `user_id = ${bind.add(userId)} AND OCTET_LENGTH(user_id) = OCTET_LENGTH(${bind.add(userId)})`;

/** One row per string of a JSON array (column `k`); callers compare them as bytes, never by collation. */
const keysOf = (json: string) => `JSON_TABLE(${json}, '$[*]' COLUMNS (k LONGTEXT PATH '$'))`;

/**
 * How a commit reads in MySQL/MariaDB: merge patches, never JSON paths. `retain` merges first a
 * patch, built in the statement from the row's own keys (JSON_KEYS), that maps every field not
 * retained to null, so values written concurrently are dropped too.
 */
const dialect: CommitDialect = {
  numbered: false,
  data(delta, bind) {
    const dropped = delta.retain
      ? `(SELECT COALESCE(JSON_OBJECTAGG(j.k, NULL), '{}') FROM ${keysOf('JSON_KEYS(data)')} AS j
          WHERE CAST(j.k AS BINARY) NOT IN (SELECT CAST(r.k AS BINARY) FROM ${keysOf(bind.add(JSON.stringify(delta.retain)))} AS r)), `
      : '';
    return `JSON_MERGE_PATCH(data, ${dropped}${bind.add(valuesPatch(delta))})`;
  },
  meta: (meta, bind) => `JSON_MERGE_PATCH(meta, ${bind.add(metaPatch(meta))})`,
  // JSON_UNQUOTE answers in the connection's collation, maybe case-insensitive: compare bytes.
  handleIs: (handle, bind) =>
    `CAST(JSON_UNQUOTE(JSON_EXTRACT(meta, '$.h')) AS BINARY) = CAST(${bind.add(handle)} AS BINARY)`,
  userIs: exactUser,
};

/** "Rows matched: 1  Changed: 0  Warnings: 0", the server's info on an UPDATE. */
const ROWS_MATCHED = /Rows matched:\s*(\d+)/;

const ER_DUP_ENTRY = 1062;

function isDuplicateKey(err: unknown): boolean {
  return (err as { errno?: unknown } | null)?.errno === ER_DUP_ENTRY;
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
 * @example
 * const pool = mysql.createPool('mysql://app@127.0.0.1:3306/app');
 * const store = new MySqlStore(pool);
 * await store.migrate();
 * const sessions = new SessionManager({ store, secret });
 */
export class MySqlStore extends SqlSessionStore {
  readonly #pool: Pool;
  readonly #sql: Readonly<Record<StatementName, string>>;

  constructor(pool: Pool, options: MySqlStoreOptions = {}) {
    super('MySqlStore', options);
    this.#pool = pool;
    const t = `\`${this.table}\``;
    this.#sql = {
      ...portableStatements(t, () => '?'),
      insert: `INSERT INTO ${t} (id, meta, data, expires_at) VALUES (?, ?, ?, ?)`,
      // Exact, as in the guard: see exactUser.
      byUser: `SELECT id, meta FROM ${t}
        WHERE user_id = ? AND OCTET_LENGTH(user_id) = OCTET_LENGTH(?) AND expires_at > ?`,
      gc: `DELETE FROM ${t} WHERE expires_at <= ? LIMIT ?`,
    };
  }

  /** Creates the table with its indexes if missing (a single, idempotent statement). */
  async migrate(): Promise<void> {
    await this.#pool.query(mysqlSchema(this.table));
  }

  async #write(sql: string, values: (string | number)[]): Promise<number> {
    const [result] = await this.#pool.execute<ResultSetHeader>(sql, values);
    return result.affectedRows;
  }

  protected async selectLive(key: string, now: number): Promise<SessionRow | undefined> {
    const [rows] = await this.#pool.execute<RowDataPacket[]>(this.#sql.select, [key, now]);
    return rows[0] as SessionRow | undefined;
  }

  protected async deleteIfExpired(key: string, now: number): Promise<void> {
    await this.#write(this.#sql.purge, [key, now]);
  }

  protected async insert(
    key: string,
    record: StoredSession,
    expiresAt: number,
    now: number,
  ): Promise<boolean> {
    const values = [key, JSON.stringify(record.meta), JSON.stringify(record.values), expiresAt];
    try {
      await this.#write(this.#sql.insert, values);
      return true;
    } catch (err) {
      if (!isDuplicateKey(err)) throw err;
    }
    // The key is taken. Only an expired leftover may give way; if another create wins the race
    // between the two statements, the second insert fails on the key again and answers false.
    if ((await this.#write(this.#sql.purge, [key, now])) === 0) return false;
    try {
      await this.#write(this.#sql.insert, values);
      return true;
    } catch (err) {
      if (isDuplicateKey(err)) return false;
      throw err;
    }
  }

  async #run({ sql, values }: Composed): Promise<ResultSetHeader> {
    const [result] = await this.#pool.execute<ResultSetHeader>(sql, values as (string | number)[]);
    return result;
  }

  protected async update(
    key: string,
    delta: SessionDelta,
    guard: CommitGuard | undefined,
    expiresAt: number,
    now: number,
  ): Promise<boolean> {
    const result = await this.#run(
      composeCommit(`\`${this.table}\``, dialect, key, delta, guard, expiresAt, now),
    );
    // affectedRows counts matched rows under CLIENT_FOUND_ROWS (mysql2's default) but changed rows
    // on a pool without it, where an identical write reports 0: the server's info has the match.
    const matched = ROWS_MATCHED.exec(result.info ?? '');
    if (matched) return Number(matched[1]) > 0;
    if (result.affectedRows > 0) return true;
    const row = await this.selectLive(key, now);
    const meta = row && decodeMeta(row.meta);
    return !!meta && guardHolds(meta, guard);
  }

  protected async deleteKey(key: string, guard?: CommitGuard): Promise<boolean> {
    return (await this.#run(composeDelete(`\`${this.table}\``, dialect, key, guard))).affectedRows > 0;
  }

  protected async selectByUser(userId: string, now: number): Promise<UserSessionRow[]> {
    const [rows] = await this.#pool.execute<RowDataPacket[]>(this.#sql.byUser, [userId, userId, now]);
    return rows as UserSessionRow[];
  }

  protected async deleteExpiredBatch(now: number, limit: number): Promise<number> {
    // LIMIT as a string: MySQL 8's prepared statements reject a DOUBLE there (mysql2 sends
    // numbers as DOUBLE); MariaDB accepts both.
    return this.#write(this.#sql.gc, [now, String(limit)]);
  }
}
