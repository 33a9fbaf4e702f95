import type BetterSqlite3 from 'better-sqlite3';
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
  upsertUnlessLive,
} from './sql-common.js';
import type { SessionDelta, StoredSession } from './store.js';

/** Options of {@link SqliteStore}: the shared SQL store options. */
export type SqliteStoreOptions = SqlStoreOptions;

/**
 * The SQLite DDL of the session table (STRICT, SQLite 3.37+), for users who run migrations
 * themselves.
 */
export function sqliteSchema(table: string = DEFAULT_TABLE): string {
  const t = checkTable(table);
  return `CREATE TABLE IF NOT EXISTS "${t}" (
  id TEXT PRIMARY KEY NOT NULL,
  meta TEXT NOT NULL,
  data TEXT NOT NULL,
  user_id TEXT GENERATED ALWAYS AS (json_extract(meta, '$.userId')) VIRTUAL,
  expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS "${indexName(t, 'user_id_idx')}" ON "${t}" (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS "${indexName(t, 'expires_at_idx')}" ON "${t}" (expires_at);
`;
}

type Statement = BetterSqlite3.Statement<unknown[], unknown>;
type Statements = Record<StatementName, Statement>;

/**
 * Sessions in an SQLite database file through the application's own `better-sqlite3` handle: the
 * embedded alternative to the file store, with a user index and one file for all sessions.
 *
 * Atomic merge: one `UPDATE ... SET data = json_patch(data, ?)` statement (an RFC 7396 merge
 * patch, `null` removing a key). A single statement is atomic in SQLite, also between processes
 * sharing the file, and better-sqlite3 runs it synchronously, so no explicit `BEGIN IMMEDIATE`
 * transaction is needed. Open the database in WAL mode (`db.pragma('journal_mode = WAL')`) so
 * readers do not wait for writers.
 *
 * @example
 * const db = new Database('sessions.db');
 * db.pragma('journal_mode = WAL');
 * const store = new SqliteStore(db);
 * await store.migrate();
 * const sessions = new SessionManager({ store, secret });
 */
export class SqliteStore extends SqlSessionStore {
  readonly #db: BetterSqlite3.Database;
  #statements: Statements | undefined;

  constructor(db: BetterSqlite3.Database, options: SqliteStoreOptions = {}) {
    super(options);
    this.#db = db;
  }

  /** Creates the table and indexes if missing, in one transaction. */
  async migrate(): Promise<void> {
    this.#db.transaction(() => this.#db.exec(sqliteSchema(this.table)))();
  }

  /** Prepared on first use, since SQLite refuses to prepare a statement on a missing table. */
  get #sql(): Statements {
    if (this.#statements) return this.#statements;
    const t = `"${this.table}"`;
    const p = () => '?';
    const text: Record<StatementName, string> = {
      ...portableStatements(t, p),
      insert: upsertUnlessLive(t, p, p),
      update: `UPDATE ${t} SET data = json_patch(data, ?), meta = json_patch(meta, ?), expires_at = ?
        WHERE id = ? AND expires_at > ?`,
      touch: `UPDATE ${t} SET meta = json_patch(meta, ?), expires_at = ? WHERE id = ? AND expires_at > ?`,
      gc: `DELETE FROM ${t} WHERE rowid IN (SELECT rowid FROM ${t} WHERE expires_at <= ? LIMIT ?)`,
    };
    const prepared = {} as Statements;
    for (const [name, sql] of Object.entries(text) as [StatementName, string][]) {
      prepared[name] = this.#db.prepare<unknown[], unknown>(sql);
    }
    this.#statements = prepared;
    return prepared;
  }

  protected selectLive(key: string, now: number): SessionRow | undefined {
    return this.#sql.select.get(key, now) as SessionRow | undefined;
  }

  protected deleteIfExpired(key: string, now: number): void {
    this.#sql.purge.run(key, now);
  }

  protected insert(key: string, record: StoredSession, expiresAt: number, now: number): boolean {
    const values = [key, JSON.stringify(record.meta), JSON.stringify(record.values), expiresAt, now];
    return this.#sql.insert.run(...values).changes === 1;
  }

  protected update(key: string, delta: SessionDelta, expiresAt: number, now: number): boolean {
    const patch = patchDelta(delta);
    const result =
      patch.data === null
        ? this.#sql.touch.run(patch.meta, expiresAt, key, now)
        : this.#sql.update.run(patch.data, patch.meta, expiresAt, key, now);
    return result.changes === 1;
  }

  protected deleteKey(key: string): void {
    this.#sql.remove.run(key);
  }

  protected selectByUser(userId: string, now: number): UserSessionRow[] {
    return this.#sql.byUser.all(userId, now) as UserSessionRow[];
  }

  protected deleteExpiredBatch(now: number, limit: number): number {
    return this.#sql.gc.run(now, limit).changes;
  }
}
