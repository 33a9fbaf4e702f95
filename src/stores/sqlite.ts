import type BetterSqlite3 from 'better-sqlite3';
import {
  type Budget,
  bindValues,
  type CommitDialect,
  type CommitInput,
  CommitStatements,
  checkTable,
  DEFAULT_TABLE,
  deleteInput,
  deleteShape,
  indexName,
  metaPatch,
  portableStatements,
  type SessionRow,
  Shape,
  type Slot,
  SqlSessionStore,
  type SqlStoreOptions,
  type StatementName,
  type UserSessionRow,
  upsertUnlessLive,
  valuesPatch,
} from './sql-common.js';
import type { CommitGuard, StoredSession } from './store.js';

/**
 * Options of {@link SqliteStore}: the shared SQL store options.
 *
 * @interface
 */
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

/**
 * How a commit reads in SQLite: json_patch merge patches, never JSON paths. `retain` first
 * patches in an object, built from the row's own members (json_each), that maps every field not
 * retained to null. SQLite compares text byte for byte (BINARY), so every guard is exact.
 */
const dialect: CommitDialect = {
  numbered: false,
  data(shape, bind) {
    const kept =
      shape & Shape.retain
        ? `json_patch(data, (SELECT json_group_object(key, NULL) FROM json_each(data)
          WHERE key NOT IN (SELECT value FROM json_each(${bind.add((c) => JSON.stringify(c.delta.retain))}))))`
        : 'data';
    return shape & (Shape.set | Shape.unset)
      ? `json_patch(${kept}, ${bind.add((c) => valuesPatch(c.delta))})`
      : kept;
  },
  meta: (_shape, bind) => `json_patch(meta, ${bind.add(metaPatch)})`,
  handleIs: (bind) => `json_extract(meta, '$.h') = ${bind.add((c) => c.guard!.handle)}`,
  userIs: (bind) => `user_id = ${bind.add((c) => c.guard!.userId)}`,
};

/**
 * The longest one gc batch may block the event loop, in milliseconds: better-sqlite3 runs every
 * statement synchronously, so the next batch is sized to fit (see `gcBatchMs`).
 */
const GC_BATCH_MS = 8;

/**
 * While a gc batch runs on a WAL database, the automatic checkpoint starts at this many WAL pages
 * (SQLite's default is 1000). A checkpoint runs inside the commit that crosses the threshold and
 * costs about 40 µs a page on the event loop, and it has no bound of its own: a lower threshold is
 * what keeps each one (and so the batch that runs it) short. 100 pages against 250: the event
 * loop's p99 delay during a gc of 1M rows 12-14 ms instead of 20-21 ms, for about 13 % more time in
 * all (more, smaller checkpoints; bench/README.md, twentieth pass).
 */
const GC_CHECKPOINT_PAGES = 100;

type Statement = BetterSqlite3.Statement<unknown[], unknown>;
/** The pragmas the store lowers for one of its own statements (see `SqliteStore#atMost`). */
type LoweredPragma = 'busy_timeout' | 'synchronous' | 'wal_autocheckpoint';
type Statements = Record<StatementName, Statement>;

/**
 * Sessions in an SQLite database file through the application's own `better-sqlite3` handle: the
 * embedded alternative to the file store, with a user index and one file for all sessions.
 *
 * Atomic merge: one `UPDATE ... SET data = json_patch(data, ?) ... WHERE id = ? AND expires_at > ?
 * [AND <guard>]` statement (an RFC 7396 merge patch, `null` removing a key; the guard on
 * `json_extract(meta, '$.h')` and `user_id`). A single statement is atomic in SQLite, also between
 * processes sharing the file, and better-sqlite3 runs it synchronously, so no explicit `BEGIN IMMEDIATE`
 * transaction is needed. Open the database in WAL mode (`db.pragma('journal_mode = WAL')`) so
 * readers do not wait for writers.
 *
 * Time bound: better-sqlite3 waits for another process's write lock synchronously (its `timeout`
 * option, 5 s by default), which blocks the whole event loop. The store lowers that wait to
 * `timeoutMs` for its own writes (and restores the handle's value after each one); a write that
 * still finds the database locked fails with SQLITE_BUSY, which the manager answers with 503.
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
  /** Commit statements by shape, prepared once each (prepared lazily: the table may not exist yet). */
  readonly #commits: CommitStatements<{ statement: Statement; slots: readonly Slot[] }>;

  constructor(db: BetterSqlite3.Database, options: SqliteStoreOptions = {}) {
    super('SqliteStore', options);
    this.#db = db;
    this.gcBatchMs = Math.min(GC_BATCH_MS, this.timeoutMs);
    this.#commits = new CommitStatements(`"${this.table}"`, dialect, ({ sql, slots }) => ({
      statement: this.#db.prepare<unknown[], unknown>(sql),
      slots,
    }));
  }

  // Statements run synchronously, so there is no wait on the event loop to bound with a timer,
  // and nothing can interleave between two writes to one key.
  protected override within<T>(operation: string, fn: (budget: Budget) => T | Promise<T>): Promise<T> {
    try {
      return Promise.resolve(fn(this.budget(operation)));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  protected override serial<T>(_key: string, _budget: Budget, fn: () => T | Promise<T>): T | Promise<T> {
    return fn();
  }

  /** Runs a write with the handle's busy timeout lowered to `timeoutMs` if it is longer. */
  #bounded<T>(write: () => T): T {
    return this.#atMost('busy_timeout', this.timeoutMs, write);
  }

  /**
   * Runs `fn` with the handle's `pragma` lowered to `max` if it is higher, then puts the handle's
   * own value back. Synchronous, so no other statement ever sees the lowered value.
   *
   * Each read and each change is a statement prepared afresh (`db.pragma`): SQLite applies a
   * PRAGMA assignment when it compiles it, and a prepared one that is run again may or may not be
   * compiled again, so a kept statement would lower or restore only some of the time.
   */
  #atMost<T>(pragma: LoweredPragma, max: number, fn: () => T): T {
    const db = this.#db;
    const previous = Number(db.pragma(pragma, { simple: true }));
    if (!(previous > max)) return fn();
    db.pragma(`${pragma} = ${max}`);
    try {
      return fn();
    } finally {
      // An integer read from SQLite itself: the only text of these pragmas.
      db.pragma(`${pragma} = ${Math.floor(previous)}`);
    }
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
      // Oldest expiry first, through the expires_at index (the ORDER BY keeps it so whatever the
      // planner's statistics say), as on the server engines.
      gc: `DELETE FROM ${t} WHERE rowid IN (SELECT rowid FROM ${t} WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)`,
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
    this.#bounded(() => this.#sql.purge.run(key, now));
  }

  protected insert(key: string, record: StoredSession, expiresAt: number, now: number): boolean {
    const values = [key, JSON.stringify(record.meta), JSON.stringify(record.values), expiresAt, now];
    return this.#bounded(() => this.#sql.insert.run(...values)).changes === 1;
  }

  protected update(input: CommitInput, shape: number): boolean {
    const { statement, slots } = this.#commits.commit(shape);
    const values = bindValues(slots, input);
    return this.#bounded(() => statement.run(...values)).changes === 1;
  }

  protected deleteKey(key: string, guard?: CommitGuard): boolean {
    const { statement, slots } = this.#commits.delete(deleteShape(guard));
    const values = bindValues(slots, deleteInput(key, guard));
    return this.#bounded(() => statement.run(...values)).changes > 0;
  }

  protected selectByUser(userId: string, now: number): UserSessionRow[] {
    return this.#sql.byUser.all(userId, now) as UserSessionRow[];
  }

  protected deleteExpiredBatch(now: number, limit: number): number {
    return this.#collecting(() => this.#bounded(() => this.#sql.gc.run(now, limit)).changes);
  }

  /**
   * Runs one gc batch with two of the handle's settings lowered for its commit alone, then puts
   * the handle's own values back (synchronously, so no other statement ever sees them). Only on a
   * WAL database, outside a transaction:
   * - `synchronous` FULL or EXTRA becomes NORMAL: the batch's commit is not fsynced on its own.
   *   In WAL mode that can never corrupt the database; a power cut can only undo the last
   *   batches, which brings back rows that are expired anyway (loads never return them) for the
   *   next gc. The next commit made with FULL syncs them along with its own.
   * - `wal_autocheckpoint` above {@link GC_CHECKPOINT_PAGES} is lowered to it, so each
   *   checkpoint that a batch's commit runs copies a hundred pages or so, not a thousand or more. A
   *   handle whose automatic checkpoint is off (0) keeps it off.
   */
  #collecting<T>(batch: () => T): T {
    if (
      this.#db.inTransaction ||
      String(this.#db.pragma('journal_mode', { simple: true })).toLowerCase() !== 'wal'
    )
      return batch();
    // synchronous: 1 is NORMAL (2 FULL, 3 EXTRA); 0 for the automatic checkpoint is "off", never raised.
    return this.#atMost('synchronous', 1, () =>
      this.#atMost('wal_autocheckpoint', GC_CHECKPOINT_PAGES, batch),
    );
  }
}
