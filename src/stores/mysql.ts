import type { Pool, ResultSetHeader, RowDataPacket } from 'mysql2/promise';
import {
  checkTable,
  DEFAULT_TABLE,
  indexName,
  patchDelta,
  portableStatements,
  type SessionRow,
  SqlSessionStore,
  type SqlStoreOptions,
  type StatementName,
  type UserSessionRow,
} from './sql-common.js';
import type { SessionDelta, StoredSession } from './store.js';

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

const ER_DUP_ENTRY = 1062;

function isDuplicateKey(err: unknown): boolean {
  return (err as { errno?: unknown } | null)?.errno === ER_DUP_ENTRY;
}

/**
 * Sessions in MySQL 8 or MariaDB (tested on 10.11) through the application's own `mysql2/promise` pool.
 *
 * Atomic merge: one `UPDATE ... SET data = JSON_MERGE_PATCH(data, ?) ... WHERE id = ? AND
 * expires_at > ?`. The delta travels as a single RFC 7396 merge patch (unset keys as `null`;
 * values are always strings, so `null` is unambiguous). No JSON path is ever built from a session
 * key, which removes the path-quoting pitfall of JSON_SET/JSON_REMOVE altogether. InnoDB holds the
 * row lock for the statement and applies each patch to the latest committed version, so parallel
 * commits all survive; a deleted row matches nothing and the commit answers 'gone'. One round trip
 * and no explicit transaction, unlike `SELECT ... FOR UPDATE` + merge in JS + `UPDATE`, which
 * would pin a pooled connection and hold the row lock for four round trips.
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
    super(options);
    this.#pool = pool;
    const t = `\`${this.table}\``;
    this.#sql = {
      ...portableStatements(t, () => '?'),
      insert: `INSERT INTO ${t} (id, meta, data, expires_at) VALUES (?, ?, ?, ?)`,
      update: `UPDATE ${t} SET data = JSON_MERGE_PATCH(data, ?), meta = JSON_MERGE_PATCH(meta, ?), expires_at = ?
        WHERE id = ? AND expires_at > ?`,
      touch: `UPDATE ${t} SET meta = JSON_MERGE_PATCH(meta, ?), expires_at = ? WHERE id = ? AND expires_at > ?`,
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

  protected async update(key: string, delta: SessionDelta, expiresAt: number, now: number): Promise<boolean> {
    const patch = patchDelta(delta);
    const affected =
      patch.data === null
        ? await this.#write(this.#sql.touch, [patch.meta, expiresAt, key, now])
        : await this.#write(this.#sql.update, [patch.data, patch.meta, expiresAt, key, now]);
    if (affected > 0) return true;
    // mysql2 reports matched rows by default (CLIENT_FOUND_ROWS); a pool configured without it
    // reports changed rows, so 0 may also mean "matched but identical". Ask before saying 'gone'.
    return (await this.selectLive(key, now)) !== undefined;
  }

  protected async deleteKey(key: string): Promise<void> {
    await this.#write(this.#sql.remove, [key]);
  }

  protected async selectByUser(userId: string, now: number): Promise<UserSessionRow[]> {
    const [rows] = await this.#pool.execute<RowDataPacket[]>(this.#sql.byUser, [userId, now]);
    return rows as UserSessionRow[];
  }

  protected async deleteExpiredBatch(now: number, limit: number): Promise<number> {
    // LIMIT as a string: MySQL 8's prepared statements reject a DOUBLE there (mysql2 sends
    // numbers as DOUBLE); MariaDB accepts both.
    return this.#write(this.#sql.gc, [now, String(limit)]);
  }
}
