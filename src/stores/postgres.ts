import { createHash } from 'node:crypto';
import type { Pool } from 'pg';
import {
  checkTable,
  DEFAULT_TABLE,
  indexName,
  portableStatements,
  type SessionRow,
  SqlSessionStore,
  type SqlStoreOptions,
  type StatementName,
  splitDelta,
  type UserSessionRow,
  upsertUnlessLive,
} from './sql-common.js';
import type { SessionDelta, StoredSession } from './store.js';

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
 * - A commit is one `UPDATE ... WHERE id = $1 AND expires_at > $now` that merges the delta with
 *   jsonb operators (`(data || $set) - $unset`). PostgreSQL locks the row and, under concurrent
 *   updates, re-evaluates the predicate and the merge on the newest version, so parallel requests
 *   setting different keys all survive, and a row deleted meanwhile matches nothing: 'gone', never
 *   an insert, so a logout cannot be undone.
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
    super(options);
    this.#pool = pool;
    const t = `"${this.table}"`;
    const p = (n: number) => `$${n}`;
    this.#sql = {
      ...portableStatements(t, p),
      insert: upsertUnlessLive(t, p, (n) => `$${n}::jsonb`),
      update: `UPDATE ${t} SET data = (data || $2::jsonb) - $3::text[], meta = (meta || $4::jsonb) - $5::text[],
        expires_at = $6 WHERE id = $1 AND expires_at > $7`,
      // A touch leaves `data` alone: rewriting it would re-TOAST a large session on every read.
      touch: `UPDATE ${t} SET meta = (meta || $2::jsonb) - $3::text[], expires_at = $4
        WHERE id = $1 AND expires_at > $5`,
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

  protected async update(key: string, delta: SessionDelta, expiresAt: number, now: number): Promise<boolean> {
    const d = splitDelta(delta);
    const result = d.hasValues
      ? await this.#pool.query(this.#sql.update, [
          key,
          d.set,
          d.unset,
          d.metaSet,
          d.metaUnset,
          expiresAt,
          now,
        ])
      : await this.#pool.query(this.#sql.touch, [key, d.metaSet, d.metaUnset, expiresAt, now]);
    return result.rowCount === 1;
  }

  protected async deleteKey(key: string): Promise<void> {
    await this.#pool.query(this.#sql.remove, [key]);
  }

  protected async selectByUser(userId: string, now: number): Promise<UserSessionRow[]> {
    return (await this.#pool.query<UserSessionRow>(this.#sql.byUser, [userId, now])).rows;
  }

  protected async deleteExpiredBatch(now: number, limit: number): Promise<number> {
    return (await this.#pool.query(this.#sql.gc, [now, limit])).rowCount ?? 0;
  }
}
