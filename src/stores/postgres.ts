import { createHash } from 'node:crypto';
import type { Pool } from 'pg';
import {
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
  upsertUnlessLive,
} from './sql-common.js';
import type { CommitGuard, SessionDelta, StoredSession } from './store.js';

/** Options of {@link PostgresStore}: the shared SQL store options. */
export type PostgresStoreOptions = SqlStoreOptions;

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
 *
 * @example
 * const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
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
    const t = `"${this.table}"`;
    const p = (n: number) => `$${n}`;
    this.#sql = {
      ...portableStatements(t, p),
      insert: upsertUnlessLive(t, p, (n) => `$${n}::jsonb`),
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

  protected async selectLive(key: string, now: number): Promise<SessionRow | undefined> {
    return (await this.#pool.query<SessionRow>(this.#sql.select, [key, now])).rows[0];
  }

  protected async deleteIfExpired(key: string, now: number): Promise<void> {
    await this.#pool.query(this.#sql.purge, [key, now]);
  }

  protected async insert(
    key: string,
    record: StoredSession,
    expiresAt: number,
    now: number,
  ): Promise<boolean> {
    const values = [key, JSON.stringify(record.meta), JSON.stringify(record.values), expiresAt, now];
    return (await this.#pool.query(this.#sql.insert, values)).rowCount === 1;
  }

  async #run({ sql, values }: Composed): Promise<number> {
    return (await this.#pool.query(sql, values)).rowCount ?? 0;
  }

  protected async update(
    key: string,
    delta: SessionDelta,
    guard: CommitGuard | undefined,
    expiresAt: number,
    now: number,
  ): Promise<boolean> {
    return (
      (await this.#run(composeCommit(`"${this.table}"`, dialect, key, delta, guard, expiresAt, now))) === 1
    );
  }

  protected async deleteKey(key: string, guard?: CommitGuard): Promise<boolean> {
    return (await this.#run(composeDelete(`"${this.table}"`, dialect, key, guard))) > 0;
  }

  protected async selectByUser(userId: string, now: number): Promise<UserSessionRow[]> {
    return (await this.#pool.query<UserSessionRow>(this.#sql.byUser, [userId, now])).rows;
  }

  protected async deleteExpiredBatch(now: number, limit: number): Promise<number> {
    return (await this.#pool.query(this.#sql.gc, [now, limit])).rowCount ?? 0;
  }
}
