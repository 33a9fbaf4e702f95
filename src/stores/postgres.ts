import { createHash } from 'node:crypto';
import type { Connection, Pool, PoolClient, QueryResult, QueryResultRow, Submittable } from 'pg';
import { SessionError } from '../errors.js';
import {
  type Budget,
  bindValues,
  type CommitDialect,
  type CommitInput,
  CommitStatements,
  type Compiled,
  changesValues,
  checkTable,
  DEFAULT_TABLE,
  deleteInput,
  deleteShape,
  type InsertItem,
  indexName,
  isStatementError,
  portableStatements,
  type SessionRow,
  Shape,
  type Slot,
  SqlSessionStore,
  type SqlStoreOptions,
  type StatementName,
  type UserSessionRow,
  waitWithin,
} from './sql-common.js';
import type { CommitGuard, StoredSession } from './store.js';

/** Options of {@link PostgresStore}: the shared SQL store options, and how statements are sent. */
export interface PostgresStoreOptions extends SqlStoreOptions {
  /**
   * Send every statement as a named prepared statement, parsed once per connection. Off by
   * default: PostgreSQL may then plan it once for all parameters (a "generic plan", chosen after
   * five executions), and a plan made while the table was small is a sequential scan that it
   * keeps as the table grows, until the table is next ANALYZEd (measured: 5.7 ms per load at
   * 90,000 sessions instead of 0.03 ms). Unnamed statements are planned with their parameters
   * every time; the store still builds each statement's text once, so only parameters are made
   * per request. Turn it on for a table that is already large and analyzed, or with
   * `plan_cache_mode = force_custom_plan` set for the store's role; never behind a pooler that
   * cannot keep prepared statements across transactions (PgBouncer in transaction mode before
   * 1.21, or without `max_prepared_statements`).
   * @default false
   */
  prepare?: boolean;
}

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
 * arrays), never as JSON paths. Order as in `applyDelta`: retain, unset, then set. Each part is
 * there only when the commit's shape has it (a write without removals has no `- $n::text[]`).
 */
const dialect: CommitDialect = {
  numbered: true,
  data(shape, bind) {
    let data = 'data';
    if (shape & Shape.retain) {
      const retain = bind.add((c) => c.delta.retain);
      data = `(data - ARRAY(SELECT k FROM jsonb_object_keys(data) AS k WHERE k <> ALL(${retain}::text[])))`;
    }
    if (shape & Shape.unset) data = `(${data} - ${bind.add((c) => c.delta.unset)}::text[])`;
    if (shape & Shape.set) data = `${data} || ${bind.add((c) => JSON.stringify(c.delta.set))}::jsonb`;
    return data;
  },
  meta(shape, bind) {
    let meta = 'meta';
    if (shape & Shape.metaUnset) meta = `(meta - ${bind.add((c) => c.metaUnset)}::text[])`;
    if (shape & Shape.metaSet) meta = `${meta} || ${bind.add((c) => JSON.stringify(c.metaSet))}::jsonb`;
    return meta;
  },
  handleIs: (bind) => `meta ->> 'h' = ${bind.add((c) => c.guard!.handle)}`,
  userIs: (bind) => `user_id = ${bind.add((c) => c.guard!.userId)}`,
};

/** A read's rows as PostgreSQL sent them: each column's text, in the statement's order. */
type TextRows = (string | null)[][];

/** The type id of jsonb, whose binary form is a version byte (1) before its text. */
const JSONB_OID = 3802;

/**
 * Every column as its text: the store parses the two JSON columns itself (`decodeRow`). A client
 * in pg's binary mode gets a read's columns (text and jsonb) in their binary form: the same
 * UTF-8, after a version byte for jsonb; pg hands them over as strings or as bytes.
 */
const AS_TEXT = {
  getTypeParser: (oid: number, format?: string) =>
    format === 'binary'
      ? (value: string | Buffer) => {
          const text = typeof value === 'string' ? value : value.toString('utf8');
          return oid === JSONB_OID ? text.slice(1) : text;
        }
      : (text: string) => text,
};

/** What a {@link TextRead} needs of pg's connection; pg's own Query uses the same calls. */
type Wire = Connection & {
  stream: { cork?: () => void; uncork?: () => void };
  parsedStatements?: Record<string, string>;
  submittedNamedStatements?: Record<string, string>;
};

/** The callback of a read that nothing waits on through pg (see {@link TextRead.callback}). */
function ignore(): void {}

/**
 * A read (`select`, `selectMany`) handed to pg's client as a `Submittable`, pg's extension point
 * for query objects of one's own (pg-cursor and pg-query-stream are two). It goes out much as pg's
 * Query would send it: Parse (skipped for a named statement the connection has parsed), Bind,
 * Execute and Sync, corked into one write, but without the Describe that makes the server send a
 * RowDescription. Its answer is kept as text: pg's Query would make a Result, look up a type
 * parser for each column, build an object for each row and emit an event for it, where the store
 * needs two or three columns it parses itself. The client calls the
 * `handle*` methods below with the server's messages, in order, and `handleError` for an error
 * of the statement, a broken connection or a query timeout; the read settles once.
 */
class TextRead implements Submittable {
  readonly #rows: TextRows = [];
  readonly answer: Promise<TextRows>;
  #resolve!: (rows: TextRows) => void;
  #reject!: (err: unknown) => void;
  #settled = false;

  /**
   * Called once, when the read settles. pg's client wraps it when a `query_timeout` is set (on the
   * pool or its clients): the wrapper stops that timeout's timer. Without it the timer would
   * outlive every read by `query_timeout` (and keep the process from exiting), and pg before
   * 8.12 would call the missing callback when it fired: a TypeError thrown from a timer, which
   * ends the process.
   */
  callback: (err: Error | null) => void = ignore;

  /** `name` and `text` are read by pg's client too, to keep its list of parsed statements. */
  constructor(
    readonly text: string,
    readonly name: string | undefined,
    readonly values: string[],
  ) {
    this.answer = new Promise<TextRows>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
  }

  submit(connection: Connection): void {
    const wire = connection as Wire;
    const name = this.name ?? '';
    wire.stream.cork?.();
    try {
      const parsed =
        this.name !== undefined &&
        (wire.parsedStatements?.[name] !== undefined || wire.submittedNamedStatements?.[name] !== undefined);
      if (!parsed) {
        wire.parse({ text: this.text, name, types: [] }, true);
        if (this.name !== undefined && wire.submittedNamedStatements)
          wire.submittedNamedStatements[name] = this.text;
      }
      wire.bind({ statement: name, values: this.values }, true);
      // No Describe: the store knows its columns, so the server's RowDescription (and pg's
      // parsing of it, a Field object per column) would be thrown away. Without it the rows
      // still come, as text, the format Bind asks for by default.
      wire.execute({}, true);
      wire.sync();
    } finally {
      wire.stream.uncork?.();
    }
  }

  /** Never called now that no Describe is sent; kept so that pg finds every handler it may call. */
  handleRowDescription(): void {}

  handleDataRow(message: { fields: (string | null)[] }): void {
    this.#rows.push(message.fields);
  }

  handleCommandComplete(): void {}
  handleEmptyQuery(): void {}
  handlePortalSuspended(): void {}

  handleError(err: Error): void {
    if (this.#settled) return;
    this.#settled = true;
    this.callback(err);
    this.#reject(err);
  }

  handleReadyForQuery(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.callback(null);
    this.#resolve(this.#rows);
  }
}

/**
 * True when `client` is pg's JavaScript client outside pipeline mode, which takes a
 * {@link TextRead}. A client in pipeline mode refuses query objects of one's own, and one without
 * pg's JavaScript connection (pg-native) cannot run them: those get pg's own query instead.
 */
function takesTextRead(client: PoolClient): boolean {
  const c = client as PoolClient & { pipeline?: unknown };
  return !c.pipeline && typeof (c.connection as Partial<Wire> | undefined)?.bind === 'function';
}

/**
 * Refuses anything but a pg Pool, at construction, with what to pass: a single `pg.Client` would
 * otherwise fail at its first statement ("Client has already been connected"), and so every
 * request after it, with a 503.
 */
function checkPool(pool: unknown): void {
  const p = pool as { connect?: unknown } | null;
  if (typeof p?.connect === 'function' && 'totalCount' in p) return;
  throw new SessionError(
    'INVALID_OPTION',
    'PostgresStore needs a pg Pool (new pg.Pool(...)), not a single pg.Client or anything else: the store checks a connection out for each statement, so that requests of different sessions run side by side and a broken connection is replaced.',
  );
}

/**
 * A statement as the store sends it: its text, the name it is prepared under, and whether its
 * last parameter is the lock bound (the time left, appended when it is sent).
 */
interface Statement {
  text: string;
  name: string | undefined;
  lockBounded: boolean;
  /** Where each parameter of a commit statement comes from. */
  slots: readonly Slot[];
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
 * - Statement texts are built once (named prepared statements with option `prepare`), and under load loads, commits
 *   and creates go out in batches, one statement for many (see `SqlSessionStore` and
 *   docs/stores-sql.md): a batched commit skips rows other transactions hold (`FOR UPDATE SKIP
 *   LOCKED`) and sends those commits alone, so nothing of the above changes.
 *
 * @example
 * const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, connectionTimeoutMillis: 1000 });
 * const store = new PostgresStore(pool);
 * await store.migrate();
 * const sessions = new SessionManager({ store, secret });
 */
export class PostgresStore extends SqlSessionStore {
  readonly #pool: Pool;
  readonly #prepare: boolean;
  readonly #sql: Readonly<Record<StatementName | 'selectMany' | 'updateMany' | 'insertMany', Statement>>;
  readonly #commits: CommitStatements<Statement>;

  constructor(pool: Pool, options: PostgresStoreOptions = {}) {
    super('PostgresStore', options);
    checkPool(pool);
    this.#pool = pool;
    this.#prepare = options.prepare ?? false;
    this.clientErrors.watch(pool);
    const t = `"${this.table}"`;
    const p = (n: number) => `$${n}`;
    const portable = portableStatements(t, p);
    // A statement that may wait for a row another transaction holds carries the lock bound.
    const lockFree = (text: string) => this.#statement(text, false);
    const lockBounded = (text: string) => this.#statement(text, true);
    this.#sql = {
      select: lockFree(portable.select),
      selectMany: lockFree(`SELECT id, meta, data FROM ${t} WHERE id = ANY($1::text[]) AND expires_at > $2`),
      byUser: lockFree(portable.byUser),
      // Several commits, each with its own delta, expiry and guard, as one jsonb parameter. Rows
      // another transaction holds are skipped, never waited for (those commits go out alone).
      updateMany: lockFree(`UPDATE ${t} AS t SET
          data = CASE WHEN v.s IS NULL THEN t.data ELSE t.data || v.s END,
          meta = t.meta || v.m,
          expires_at = v.e
        FROM jsonb_to_recordset($1::jsonb) AS v(id text, s jsonb, m jsonb, e bigint, n bigint, h text, um int, u text)
        WHERE t.id = v.id
          AND t.id IN (SELECT l.id FROM ${t} AS l WHERE l.id = ANY($2::text[]) FOR UPDATE SKIP LOCKED)
          AND t.expires_at > v.n
          AND (v.h IS NULL OR t.meta ->> 'h' = v.h)
          AND CASE v.um WHEN 1 THEN t.user_id IS NULL WHEN 2 THEN t.user_id = v.u ELSE true END
        RETURNING t.id`),
      purge: lockBounded(`${portable.purge} AND ${lockBound(3)}`),
      // INSERT ... SELECT, so that the lock bound is set before a conflicting row is waited for.
      insert: lockBounded(`INSERT INTO ${t} AS s (id, meta, data, expires_at)
        SELECT $1, $2::jsonb, $3::jsonb, $4 FROM (SELECT set_config('lock_timeout', $6, true)) AS bound
        ON CONFLICT (id) DO UPDATE SET meta = excluded.meta, data = excluded.data, expires_at = excluded.expires_at
        WHERE s.expires_at <= $5`),
      // Several creates as one jsonb parameter. A taken key is left alone (that create goes out
      // alone, and replaces the row only if it has expired); the lock bound covers the wait for a
      // create of the same key in flight elsewhere.
      insertMany: lockBounded(`INSERT INTO ${t} (id, meta, data, expires_at)
        SELECT v.id, v.m, v.d, v.e
        FROM jsonb_to_recordset($1::jsonb) AS v(id text, m jsonb, d jsonb, e bigint),
          (SELECT set_config('lock_timeout', $2, true)) AS bound
        ON CONFLICT (id) DO NOTHING
        RETURNING id`),
      // Oldest expiry first: the ORDER BY makes the expires_at index find the batch whatever the
      // plan (a prepared statement may get a generic one) and the share of expired rows, so the
      // cost follows the expired rows, not the live ones. Rows are then deleted by their physical
      // address (ctid), not looked up again through the primary key. SKIP LOCKED lets several
      // instances collect at once; the outer predicate is re-checked on the row version a
      // concurrent create may just have written.
      gc: lockFree(`DELETE FROM ${t} WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM ${t} WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
      )) AND expires_at <= $1`),
    };
    // Composed once per shape; the lock bound is the last parameter of each.
    this.#commits = new CommitStatements(t, dialect, ({ sql, slots }: Compiled) => ({
      ...this.#statement(`${sql} AND ${lockBound(slots.length + 1)}`, true),
      slots,
    }));
  }

  #statement(text: string, lockBounded: boolean): Statement {
    // The name follows from the text: stores on other tables never share one, and one text is
    // prepared once per connection whichever store instance sends it.
    const name = this.#prepare
      ? `sessionflow_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`
      : undefined;
    return { text, name, lockBounded, slots: [] };
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
   * budget is handed straight back; one whose answer does not come in time is discarded when the
   * budget runs out (its socket may be stalled), so the pool opens a fresh one. While the store
   * holds a connection it listens for its `'error'` event, which the pool does not do for a
   * checked-out connection. No timer of its own: every wait is on the operation's budget.
   */
  #query<R extends QueryResultRow = QueryResultRow>(
    statement: Statement,
    values: unknown[],
    budget: Budget = this.budget('query'),
  ): Promise<QueryResult<R>> {
    return this.#on(statement, values, budget, (client) =>
      client.query<R>({ name: statement.name, text: statement.text, values }),
    );
  }

  /**
   * A read whose columns come back as text (see {@link TextRead}), on a pooled connection as
   * {@link #query} sends a statement. `values` are already the text PostgreSQL is sent.
   */
  #read(statement: Statement, values: string[], budget: Budget = this.budget('query')): Promise<TextRows> {
    return this.#on(statement, values, budget, (client) => {
      if (takesTextRead(client)) {
        const read = new TextRead(statement.text, statement.name, values);
        client.query(read);
        return read.answer;
      }
      // The same answer through pg's own query: rows as arrays, every column as its text.
      return client
        .query<unknown[]>({
          name: statement.name,
          text: statement.text,
          values,
          rowMode: 'array',
          types: AS_TEXT,
        })
        .then((result) => result.rows as TextRows);
    });
  }

  async #on<T>(
    statement: Statement,
    values: unknown[],
    budget: Budget,
    send: (client: PoolClient) => Promise<T>,
  ): Promise<T> {
    // A connection that comes after the deadline is handed straight back.
    const client: PoolClient = await waitWithin(this.#pool.connect(), budget, (late) => late.release());
    if (budget.remaining() === 0) {
      client.release();
      throw budget.error();
    }
    let broken: Error | undefined;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      client.release(broken);
    };
    const onError = (err: Error) => {
      broken = err;
    };
    client.on('error', onError);
    const stop = budget.onExpire(() => {
      broken ??= budget.error();
      release();
    });
    try {
      // The lock bound is what is left once the connection is there: both ends give up together.
      if (statement.lockBounded) values.push(String(Math.max(1, budget.remaining())));
      return await waitWithin(send(client), budget);
    } catch (err) {
      // lock_not_available: the server gave up on the row lock, as asked.
      if ((err as { code?: unknown }).code === '55P03') throw budget.error(err);
      // Not the server's answer to the statement (pg's query_timeout, a broken connection): the
      // connection may still be busy with it, so it leaves the pool instead of making the next
      // statement sent on it wait behind this one.
      if (!isStatementError(err)) broken ??= err as Error;
      throw err;
    } finally {
      stop();
      client.removeListener('error', onError);
      release();
    }
  }

  protected async selectLive(key: string, now: number, budget?: Budget): Promise<SessionRow | undefined> {
    const row = (await this.#read(this.#sql.select, [key, String(now)], budget))[0];
    return row && { meta: row[0], data: row[1] };
  }

  protected override async selectLiveMany(
    keys: string[],
    now: number,
    budget?: Budget,
  ): Promise<Map<string, SessionRow>> {
    // A text[] literal: storage keys are base64url (checked by `load`), nothing in them to escape.
    const list = `{${keys.map((key) => `"${key}"`).join(',')}}`;
    const rows = await this.#read(this.#sql.selectMany, [list, String(now)], budget);
    const byKey = new Map<string, SessionRow>();
    for (const row of rows) byKey.set(row[0]!, { meta: row[1], data: row[2] });
    return byKey;
  }

  protected async deleteIfExpired(key: string, now: number, budget?: Budget): Promise<void> {
    await this.#query(this.#sql.purge, [key, now], budget);
  }

  protected async insert(
    key: string,
    record: StoredSession,
    expiresAt: number,
    now: number,
    budget?: Budget,
  ): Promise<boolean> {
    const values = [key, JSON.stringify(record.meta), JSON.stringify(record.values), expiresAt, now];
    return (await this.#query(this.#sql.insert, values, budget)).rowCount === 1;
  }

  protected async update(input: CommitInput, shape: number, budget?: Budget): Promise<boolean> {
    const statement = this.#commits.commit(shape);
    return (await this.#query(statement, bindValues(statement.slots, input), budget)).rowCount === 1;
  }

  protected override async insertMany(items: readonly InsertItem[], budget?: Budget): Promise<boolean[]> {
    const rows = items.map((c) => ({ id: c.key, m: c.record.meta, d: c.record.values, e: c.expiresAt }));
    const { rows: inserted } = await this.#query<{ id: string }>(
      this.#sql.insertMany,
      [JSON.stringify(rows)],
      budget,
    );
    if (inserted.length === items.length) return items.map(() => true);
    const done = new Set(inserted.map((row) => row.id));
    return items.map((c) => done.has(c.key));
  }

  protected override async updateMany(items: readonly CommitInput[], budget?: Budget): Promise<boolean[]> {
    const rows = items.map((c) => ({
      id: c.key,
      // No value changed: data is left as it is (not rewritten).
      s: changesValues(c.delta) ? c.delta.set : null,
      m: c.metaSet,
      e: c.expiresAt,
      n: c.now,
      h: c.guard?.handle,
      um: c.guard?.userId === null ? 1 : c.guard?.userId === undefined ? 0 : 2,
      u: c.guard?.userId ?? undefined,
    }));
    const keys = items.map((c) => c.key);
    const { rows: applied } = await this.#query<{ id: string }>(
      this.#sql.updateMany,
      [JSON.stringify(rows), keys],
      budget,
    );
    if (applied.length === items.length) return items.map(() => true);
    const done = new Set(applied.map((row) => row.id));
    return keys.map((key) => done.has(key));
  }

  protected async deleteKey(key: string, guard?: CommitGuard, budget?: Budget): Promise<boolean> {
    const statement = this.#commits.delete(deleteShape(guard));
    const values = bindValues(statement.slots, deleteInput(key, guard));
    return ((await this.#query(statement, values, budget)).rowCount ?? 0) > 0;
  }

  protected async selectByUser(userId: string, now: number, budget?: Budget): Promise<UserSessionRow[]> {
    // As text too: what a pool's type parsers or binary mode would make of jsonb is not asked.
    const rows = await this.#read(this.#sql.byUser, [userId, String(now)], budget);
    return rows.map((row) => ({ id: row[0]!, meta: row[1] }));
  }

  protected async deleteExpiredBatch(now: number, limit: number, budget?: Budget): Promise<number> {
    return (await this.#query(this.#sql.gc, [now, limit], budget)).rowCount ?? 0;
  }
}
