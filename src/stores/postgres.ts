import { createHash } from 'node:crypto';
import type { Pool, PoolClient, QueryResult, QueryResultRow } from 'pg';
import {
  type Budget,
  type CommitDialect,
  type Composed,
  checkTable,
  composeCommit,
  composeDelete,
  DEFAULT_TABLE,
  indexName,
  portableStatements,
  type SessionRow,
  SqlSessionStore,
  type SqlStoreOptions,
  type StatementName,
  splitMeta,
  type UserSessionRow,
  withDeadline,
} from './sql-common.js';
import type { CommitGuard, SessionDelta, StoredSession } from './store.js';

/**
 * Options of {@link PostgresStore}: the shared SQL store options.
 *
 * @interface
 */
export type PostgresStoreOptions = SqlStoreOptions;

/**
 * The condition every write carries: it sets `lock_timeout` for its own transaction (the one
 * implicit transaction of the statement) before it reaches a row, so the server stops waiting for
 * a row another transaction holds when the request stops waiting, and nothing is written late.
 * An uncorrelated subquery in WHERE is evaluated once, before the scan; `is_local` ends the
 * setting with the statement, so the application's connections keep their own.
 */
const lockBound = (n: number) => `(SELECT set_config('lock_timeout', $${n}, true)) IS NOT NULL`;

function schemaStatements(table: string): string[] {
  const t = checkTable(table);
  return [
    `CREATE TABLE IF NOT EXISTS "${t}" (
  id text PRIMARY KEY,
  meta jsonb NOT NULL,
  data jsonb NOT NULL,
  user_id text GENERATED ALWAYS AS (meta ->> 'userId') STORED,
  expires_at bigint NOT NULL
)`,
    // Partial: anonymous sessions (most of them) do not bloat the user index.
    `CREATE INDEX IF NOT EXISTS "${indexName(t, 'user_id_idx')}" ON "${t}" (user_id) WHERE user_id IS NOT NULL`,
    `CREATE INDEX IF NOT EXISTS "${indexName(t, 'expires_at_idx')}" ON "${t}" (expires_at)`,
  ];
}

/** A 64-bit advisory lock id per table, derived here rather than with the undocumented hashtext(). */
function lockId(table: string): string {
  return createHash('sha256').update(`sessionflow:${table}`).digest().readBigInt64BE(0).toString();
}

/**
 * How a commit reads in PostgreSQL: jsonb operators, keys as parameters (a jsonb object, text
 * arrays), never as JSON paths. Order as in `applyDelta`: retain, unset, then set.
 */
const dialect: CommitDialect = {
  numbered: true,
  data(delta, bind) {
    const kept = delta.retain
      ? `(data - ARRAY(SELECT k FROM jsonb_object_keys(data) AS k WHERE k <> ALL(${bind.add(delta.retain)}::text[])))`
      : 'data';
    return `(${kept} - ${bind.add(delta.unset)}::text[]) || ${bind.add(JSON.stringify(delta.set))}::jsonb`;
  },
  meta(meta, bind) {
    const m = splitMeta(meta);
    return `(meta - ${bind.add(m.unset)}::text[]) || ${bind.add(m.set)}::jsonb`;
  },
  handleIs: (handle, bind) => `meta ->> 'h' = ${bind.add(handle)}`,
  userIs: (userId, bind) => `user_id = ${bind.add(userId)}`,
};

/**
 * The PostgreSQL DDL of the session table, for users who run migrations themselves.
 *
 * @example
 * await pool.query(postgresSchema('sessions'));
 */
export function postgresSchema(table: string = DEFAULT_TABLE): string {
  return `${schemaStatements(table).join(';\n\n')};\n`;
}

/**
 * Sessions in PostgreSQL through the application's own `pg` Pool.
 *
 * - A commit is one `UPDATE ... WHERE id = $key AND expires_at > $now [AND meta->>'h' = $handle]
 *   [AND user_id = $user | IS NULL]` that merges the delta with jsonb operators
 *   (`((data - <not retained>) - $unset) || $set`). PostgreSQL locks the row and, under concurrent
 *   updates, re-evaluates the predicate (guard included) and the merge on the newest version, so
 *   parallel requests setting different keys all survive, of two ID changes from one handle only
 *   the first matches, and a row deleted meanwhile matches nothing: 'gone', never an insert, so a
 *   logout cannot be undone. Only when nothing matched does a second read tell 'conflict' from 'gone'.
 * - `create` is `INSERT ... ON CONFLICT (id) DO UPDATE ... WHERE <existing row expired>`: a live
 *   row is never overwritten (0 rows: false), an expired leftover with the same key is replaced
 *   in the same atomic statement (a plain `ON CONFLICT DO NOTHING` would refuse the key forever
 *   until gc ran).
 * - `user_id` is a generated column over `meta->>'userId'`, so the user index can never disagree
 *   with the metadata.
 * - Every operation is bounded by `timeoutMs` (an option of {@link PostgresStoreOptions}): the wait
 *   for a pooled connection, the server's `lock_timeout` for that statement, and the answer. A
 *   connection whose answer did not come in time is discarded, not returned to the pool.
 * - The store listens for the pool's `'error'` event (an idle connection whose server went away),
 *   which would otherwise end the process.
 *
 * @example
 * const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, connectionTimeoutMillis: 1000 });
 * const store = new PostgresStore(pool);
 * await store.migrate();
 * const sessions = new SessionManager({ store, secret });
 */
export class PostgresStore extends SqlSessionStore {
  readonly #pool: Pool;
  readonly #sql: Readonly<Record<StatementName, string>>;

  constructor(pool: Pool, options: PostgresStoreOptions = {}) {
    super('PostgresStore', options);
    this.#pool = pool;
    this.clientErrors.watch(pool);
    const t = `"${this.table}"`;
    const p = (n: number) => `$${n}`;
    const portable = portableStatements(t, p);
    this.#sql = {
      ...portable,
      purge: `${portable.purge} AND ${lockBound(3)}`,
      // INSERT ... SELECT, so that the lock bound is set before a conflicting row is waited for.
      insert: `INSERT INTO ${t} AS s (id, meta, data, expires_at)
        SELECT $1, $2::jsonb, $3::jsonb, $4 FROM (SELECT set_config('lock_timeout', $6, true)) AS bound
        ON CONFLICT (id) DO UPDATE SET meta = excluded.meta, data = excluded.data, expires_at = excluded.expires_at
        WHERE s.expires_at <= $5`,
      // SKIP LOCKED lets several instances collect at once; the outer predicate is re-checked on
      // the row version a concurrent create may just have written.
      gc: `DELETE FROM ${t} WHERE id IN (
        SELECT id FROM ${t} WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED
      ) AND expires_at <= $1`,
    };
  }

  /** Creates the table and indexes if missing; concurrent callers queue on an advisory lock. */
  async migrate(): Promise<void> {
    const client = await this.#pool.connect();
    let failure: Error | undefined;
    try {
      await client.query('BEGIN');
      // CREATE ... IF NOT EXISTS is not safe against itself (two instances starting together can
      // both miss the table and collide in pg_type), so migrations take turns.
      await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [lockId(this.table)]);
      for (const statement of schemaStatements(this.table)) await client.query(statement);
      await client.query('COMMIT');
    } catch (err) {
      failure = err as Error;
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      // A client that failed mid-transaction is discarded rather than returned to the pool.
      client.release(failure);
    }
  }

  /**
   * One statement on a pooled connection, within `budget`. A connection that arrives after the
   * budget is handed straight back; one whose answer does not come in time is discarded (its
   * socket may be stalled), so the pool opens a fresh one. While the store holds a connection it
   * listens for its `'error'` event, which the pool does not do for a checked-out connection.
   */
  async #query<R extends QueryResultRow = QueryResultRow>(
    sql: string,
    values: unknown[],
    budget: Budget = this.budget('query'),
    lockBounded = false,
  ): Promise<QueryResult<R>> {
    const client: PoolClient = await withDeadline(
      this.#pool.connect(),
      budget.remaining(),
      () => budget.error(),
      (late) => late.release(),
    );
    if (budget.remaining() === 0) {
      client.release();
      throw budget.error();
    }
    let broken: Error | undefined;
    const onError = (err: Error) => {
      broken = err;
    };
    client.on('error', onError);
    try {
      // The lock bound is what is left once the connection is there: both ends give up together.
      const params = lockBounded ? [...values, String(Math.max(1, budget.remaining()))] : values;
      return await withDeadline(client.query<R>(sql, params), budget.remaining(), () => {
        broken = budget.error();
        return broken;
      });
    } catch (err) {
      // lock_not_available: the server gave up on the row lock, as asked.
      if ((err as { code?: unknown }).code === '55P03') throw budget.error(err);
      throw err;
    } finally {
      client.removeListener('error', onError);
      client.release(broken);
    }
  }

  /** A composed write with the lock bound appended to its WHERE clause. */
  #write(sql: string, values: unknown[], budget?: Budget): Promise<QueryResult> {
    return this.#query(`${sql} AND ${lockBound(values.length + 1)}`, values, budget, true);
  }

  protected async selectLive(key: string, now: number, budget?: Budget): Promise<SessionRow | undefined> {
    return (await this.#query<SessionRow>(this.#sql.select, [key, now], budget)).rows[0];
  }

  protected async deleteIfExpired(key: string, now: number, budget?: Budget): Promise<void> {
    await this.#query(this.#sql.purge, [key, now], budget, true);
  }

  protected async insert(
    key: string,
    record: StoredSession,
    expiresAt: number,
    now: number,
    budget?: Budget,
  ): Promise<boolean> {
    const values = [key, JSON.stringify(record.meta), JSON.stringify(record.values), expiresAt, now];
    return (await this.#query(this.#sql.insert, values, budget, true)).rowCount === 1;
  }

  async #run({ sql, values }: Composed, budget?: Budget): Promise<number> {
    return (await this.#write(sql, values, budget)).rowCount ?? 0;
  }

  protected async update(
    key: string,
    delta: SessionDelta,
    guard: CommitGuard | undefined,
    expiresAt: number,
    now: number,
    budget?: Budget,
  ): Promise<boolean> {
    return (
      (await this.#run(
        composeCommit(`"${this.table}"`, dialect, key, delta, guard, expiresAt, now),
        budget,
      )) === 1
    );
  }

  protected async deleteKey(key: string, guard?: CommitGuard, budget?: Budget): Promise<boolean> {
    return (await this.#run(composeDelete(`"${this.table}"`, dialect, key, guard), budget)) > 0;
  }

  protected async selectByUser(userId: string, now: number, budget?: Budget): Promise<UserSessionRow[]> {
    return (await this.#query<UserSessionRow>(this.#sql.byUser, [userId, now], budget)).rows;
  }

  protected async deleteExpiredBatch(now: number, limit: number, budget?: Budget): Promise<number> {
    return (await this.#query(this.#sql.gc, [now, limit], budget)).rowCount ?? 0;
  }
}
