import pg from 'pg';
// pg 8.11, an older line users still run (installed under this alias, see package.json).
import pgBefore812 from 'pg-8-11';
import { expect, it } from 'vitest';
import { PostgresStore, postgresSchema } from '../../src/stores/postgres.js';
import { serverAvailable } from '../helpers/servers.js';
import {
  countGcBatches,
  describeSqlStoreConformance,
  describeSqlStoreSpecifics,
  HOUR,
  key,
  rec,
  type SqlEngineHooks,
  type SqlStoreFactory,
  uniqueTable,
} from '../helpers/sql-store-specifics.js';

const PG_URL = process.env.PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

const skip = await serverAvailable('PostgreSQL', async () => {
  const client = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 3_000 });
  await client.connect();
  await client.end();
});

const postgres: SqlEngineHooks<pg.Pool, PostgresStore> = {
  skip,
  connect: () => new pg.Pool({ connectionString: PG_URL }),
  disconnect: (pool) => pool.end(),
  quote: '"',
  exec: (pool, sql) => pool.query(sql),
  countRows: async (pool, t) =>
    (await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM "${t}"`)).rows[0]!.n,
  countId: async (pool, t, id) => (await pool.query(`SELECT 1 FROM "${t}" WHERE id = $1`, [id])).rows.length,
  schema: postgresSchema,
  hostileKeys: (t) => [`x'; DROP TABLE "${t}"; --`],
  awkwardKeys: {
    title: 'quotes, backslashes, dots, braces, unicode',
    keys: ['we"ird\\key', 'a.b', '{a,b}', 'NULL', '$[0]', 'é🍪', 'tab\tnl\n', '\u2028', ' ', ''],
  },
  batches: { loads: true, commits: true, creates: true },
  missingTable: /does not exist/,
};
const factory: SqlStoreFactory<pg.Pool, PostgresStore> = (pool, options) => new PostgresStore(pool, options);

describeSqlStoreConformance('PostgresStore', factory, postgres);

describeSqlStoreSpecifics('PostgresStore', factory, postgres, (suite) => {
  it('SM-63: gc removes only expired rows in bounded batches, and two collectors share the work', async () => {
    const { conn: pool } = suite;
    const gcTable = suite.scratchTable();
    const options = { table: gcTable, now: () => suite.clock, gcBatchSize: 100 };
    const a = new PostgresStore(pool, options);
    const b = new PostgresStore(pool, options);
    const batches = [countGcBatches(a), countGcBatches(b)];
    await a.migrate();
    const live = [key(), key()];
    for (const k of live) await a.create(k, rec({ 'v:live': '1' }), HOUR);
    await pool.query(
      `INSERT INTO "${gcTable}" (id, meta, data, expires_at)
       SELECT k, '{}', '{}', $2 FROM unnest($1::text[]) AS k`,
      [Array.from({ length: 450 }, key), suite.clock + 1_000],
    );
    const [ra, rb] = await Promise.all([a.gc(suite.clock + 1_001), b.gc(suite.clock + 1_001)]);
    expect(ra + rb).toBe(450);
    expect(batches.flat().every((n) => n <= 100)).toBe(true);
    expect(await suite.rows(gcTable)).toBe(2);
    for (const k of live) expect((await a.load(k))?.values['v:live']).toBe('1');
  });

  it('a batched commit never waits for a row another transaction holds: the others land at once, that one alone after', async () => {
    const { conn: pool } = suite;
    // A long budget: the held commit waits for the lock until the others have all landed.
    const store = new PostgresStore(pool, { table: suite.table, now: () => suite.clock, timeoutMs: 10_000 });
    const keys = Array.from({ length: 12 }, key);
    await Promise.all(keys.map((k) => store.create(k, rec({ 'v:a': '0' }), HOUR)));
    const held = keys[5]!;
    const other = await pool.connect();
    try {
      await other.query('BEGIN');
      await other.query(`SELECT 1 FROM "${suite.table}" WHERE id = $1 FOR UPDATE`, [held]);
      const settled = new Set<string>();
      const commits = keys.map((k) =>
        store.commit(k, { set: { 'v:a': '1' }, unset: [] }, HOUR, { userId: null }).then((r) => {
          settled.add(k);
          return r;
        }),
      );
      for (let waited = 0; settled.size < keys.length - 1 && waited < 5_000; waited += 20) {
        await new Promise((r) => setTimeout(r, 20));
      }
      expect([...settled].sort()).toEqual(keys.filter((k) => k !== held).sort());
      await other.query('COMMIT');
      expect(await Promise.all(commits)).toEqual(keys.map(() => 'ok'));
    } finally {
      other.release();
    }
    for (const r of await Promise.all(keys.map((k) => store.load(k)))) expect(r?.values['v:a']).toBe('1');
  });

  it('a batch the server refuses (a field name jsonb cannot hold) fails only the operation at fault', async () => {
    const { store } = suite;
    const keys = Array.from({ length: 10 }, key);
    const bad = 'v:nul\u0000name';
    const created = await Promise.allSettled(
      keys.map((k, i) => store.create(k, rec(i === 3 ? { [bad]: '1' } : { 'v:a': '0' }), HOUR)),
    );
    expect(created.map((c) => c.status)).toEqual(keys.map((_, i) => (i === 3 ? 'rejected' : 'fulfilled')));
    const live = keys.filter((_, i) => i !== 3);
    const committed = await Promise.allSettled(
      live.map((k, i) =>
        store.commit(k, { set: i === 4 ? { [bad]: '1' } : { 'v:a': '1' }, unset: [] }, HOUR),
      ),
    );
    expect(committed.map((c) => (c.status === 'fulfilled' ? c.value : 'rejected'))).toEqual(
      live.map((_, i) => (i === 4 ? 'rejected' : 'ok')),
    );
    const values = await Promise.all(live.map(async (k) => (await store.load(k))?.values['v:a']));
    expect(values).toEqual(live.map((_, i) => (i === 4 ? '0' : '1')));
  });

  it('SM-37: user_id is indexed (partial, anonymous rows left out), expires_at too', async () => {
    const { rows: defs } = await suite.conn.query<{ indexdef: string }>(
      'SELECT indexdef FROM pg_indexes WHERE tablename = $1',
      [suite.table],
    );
    const all = defs.map((d) => d.indexdef);
    expect(all.some((d) => /\(user_id\) WHERE \(user_id IS NOT NULL\)/.test(d))).toBe(true);
    expect(all.some((d) => d.includes('(expires_at)'))).toBe(true);
    expect(all.some((d) => /UNIQUE INDEX .*\(id\)/.test(d))).toBe(true);
  });

  it('a load stays an index lookup as a young table grows (no generic plan from its empty days)', async () => {
    // One connection, so the plan the loads run with is the one this connection cached.
    const pool = new pg.Pool({ connectionString: PG_URL, max: 1 });
    const seqScans = async (table: string) => {
      await pool.query('SELECT pg_stat_force_next_flush()');
      const { rows } = await pool.query<{ n: string }>(
        'SELECT seq_scan::text AS n FROM pg_stat_user_tables WHERE relname = $1',
        [table],
      );
      return Number(rows[0]?.n ?? 0);
    };
    try {
      const scansAfterGrowth = async (prepare: boolean) => {
        const table = suite.scratchTable();
        const store = new PostgresStore(pool, { table, now: () => suite.clock, prepare });
        await store.migrate();
        const keys = Array.from({ length: 50 }, () => key());
        for (const k of keys) await store.create(k, rec({ 'v:a': '1' }), HOUR);
        await pool.query(`ANALYZE "${table}"`); // what autovacuum does once a new table has 50 rows
        // Loads under load go out batched (id = ANY(...)): the statement a generic plan hurts.
        const burst = async () => {
          const found = await Promise.all(keys.slice(0, 8).map((k) => store.load(k)));
          expect(found.every((r) => r !== null)).toBe(true);
        };
        for (let i = 0; i < 10; i++) await burst(); // planned while the table is tiny
        await pool.query(
          `INSERT INTO "${table}" (id, meta, data, expires_at)
           SELECT 'filler' || g, '{}', '{}', $1 FROM generate_series(1, 20000) AS g`,
          [suite.clock + HOUR],
        );
        const before = await seqScans(table);
        for (let i = 0; i < 5; i++) await burst();
        return (await seqScans(table)) - before;
      };
      expect(await scansAfterGrowth(false)).toBe(0);
      // What the default avoids: a prepared statement keeps the sequential scan it got when tiny.
      expect(await scansAfterGrowth(true)).toBeGreaterThan(0);
    } finally {
      await pool.end();
    }
  });

  /**
   * Twelve sessions made through `pool`, then loaded: one alone, then all at once (two go out
   * alone, the rest together as one statement, id = ANY(...)), and a key that was never made.
   */
  const loadsAloneAndBatched = async (pool: pg.Pool, prepare?: boolean) => {
    const store = new PostgresStore(pool, {
      table: suite.scratchTable(),
      now: () => suite.clock,
      ...(prepare === undefined ? {} : { prepare }),
    });
    await store.migrate();
    const keys = Array.from({ length: 12 }, () => key());
    // The first three are signed in as one user: sessionsOf reads their metadata.
    for (const [i, k] of keys.entries()) {
      await store.create(k, rec({ 'v:n': String(i) }, i < 3 ? 'u-text' : undefined), HOUR);
    }
    expect((await store.load(keys[3]!))?.values['v:n']).toBe('3');
    const found = await Promise.all(keys.map((k) => store.load(k)));
    expect(found.map((r) => r?.values['v:n'])).toEqual(keys.map((_, i) => String(i)));
    expect(await store.load(key())).toBeNull();
    const mine = await store.sessionsOf('u-text');
    expect(mine.map((s) => s.key).sort()).toEqual(keys.slice(0, 3).sort());
    expect(mine.every((s) => s.meta.userId === 'u-text' && s.meta.deadline === 9e15)).toBe(true);
  };

  // Reads come back as text the store parses itself (src/stores/postgres.ts, TextRead): the
  // jsonb parser a pool's clients use has no say in what a load finds.
  it("loads and sessionsOf find their sessions whatever jsonb parser the pool's clients use", async () => {
    const JSONB = 3802;
    const hijacked = new pg.Pool({
      connectionString: PG_URL,
      types: {
        getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
          oid === JSONB
            ? (text: string) => ({ notTheRecord: text })
            : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
      },
    });
    try {
      await loadsAloneAndBatched(hijacked);
    } finally {
      await hijacked.end();
    }
  });

  // pg's binary mode asks for results in binary: jsonb then comes as a version byte and text.
  it("loads and sessionsOf work on a pool in pg's binary mode, alone and batched", async () => {
    const binary = new pg.Pool({ connectionString: PG_URL, binary: true } as pg.PoolConfig);
    try {
      await loadsAloneAndBatched(binary);
    } finally {
      await binary.end();
    }
  });

  // pg's pipeline mode refuses query objects of one's own; the store then sends a plain query.
  it("loads work on a pool whose clients run in pg's pipeline mode (binary too), alone and batched", async () => {
    const pipelined = new pg.Pool({ connectionString: PG_URL, pipeline: true } as pg.PoolConfig);
    try {
      await loadsAloneAndBatched(pipelined);
    } finally {
      await pipelined.end();
    }
    const both = new pg.Pool({ connectionString: PG_URL, pipeline: true, binary: true } as pg.PoolConfig);
    try {
      await loadsAloneAndBatched(both);
    } finally {
      await both.end();
    }
  });

  // Reads speak pg's protocol through the connection's own methods: the older pg line too.
  it('loads work on a pg 8.11 pool, with statements prepared and not, alone and batched', async () => {
    const older = new pgBefore812.Pool({ connectionString: PG_URL });
    try {
      await loadsAloneAndBatched(older, false);
      await loadsAloneAndBatched(older, true);
    } finally {
      await older.end();
    }
  });

  // pg's client arms a timer per query when a query_timeout is set, and stops it through the
  // query's callback. A read that never called it left its timer running for query_timeout after
  // the read (the process unable to exit), and on pg before 8.12 the timer then called the missing
  // callback: a TypeError thrown from a timer, which ended the process. Hence the older pg too.
  for (const [version, driver] of [
    ['pg', pg],
    ['pg 8.11', pgBefore812],
  ] as const) {
    it(`loads on a ${version} pool with query_timeout leave no timer running behind them`, async () => {
      const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
      // idleTimeoutMillis 0: no idle timer per pooled client, so every Timeout counted is a query's.
      const timed = new driver.Pool({
        connectionString: PG_URL,
        query_timeout: 600_000,
        idleTimeoutMillis: 0,
      });
      try {
        const store = new PostgresStore(timed, { table: suite.scratchTable(), now: () => suite.clock });
        await store.migrate();
        const keys = Array.from({ length: 12 }, () => key());
        for (const k of keys) await store.create(k, rec({ 'v:a': '1' }), HOUR);
        const before = timers();
        expect((await store.load(keys[0]!))?.values['v:a']).toBe('1');
        const found = await Promise.all(keys.map((k) => store.load(k)));
        expect(found.every((r) => r?.values['v:a'] === '1')).toBe(true);
        expect(await store.load(key())).toBeNull();
        expect(timers()).toBeLessThanOrEqual(before);
      } finally {
        await timed.end();
      }
    });
  }

  // pg gives up on a statement at query_timeout but leaves it running on the connection: one
  // handed back to the pool would make the next statement sent on it wait behind the stuck one.
  it("a read pg's query_timeout gave up on takes its connection out of the pool", async () => {
    const pool = new pg.Pool({ connectionString: PG_URL, query_timeout: 300, max: 1 });
    const locker = new pg.Client({ connectionString: PG_URL });
    try {
      const options = { now: () => suite.clock, timeoutMs: 10_000 };
      const stuck = new PostgresStore(pool, { ...options, table: suite.scratchTable() });
      const other = new PostgresStore(pool, { ...options, table: suite.scratchTable() });
      await stuck.migrate();
      await other.migrate();
      const [a, b] = [key(), key()];
      await stuck.create(a, rec({ 'v:a': '1' }), HOUR);
      await other.create(b, rec({ 'v:b': '2' }), HOUR);
      await locker.connect();
      await locker.query('BEGIN');
      await locker.query(`LOCK TABLE "${stuck.table}" IN ACCESS EXCLUSIVE MODE`);
      await expect(stuck.load(a)).rejects.toThrow(/read timeout/);
      // The pool's one connection: a fresh one, not the one still waiting for the lock.
      expect((await other.load(b))?.values).toEqual({ 'v:b': '2' });
    } finally {
      await locker.query('ROLLBACK').catch(() => undefined);
      await locker.end();
      await pool.end();
    }
  });

  it('a single pg.Client is refused at construction, saying to pass a Pool', async () => {
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    try {
      expect(() => new PostgresStore(client as unknown as pg.Pool)).toThrow(
        expect.objectContaining({
          code: 'INVALID_OPTION',
          message: expect.stringMatching(/needs a pg Pool/),
        }),
      );
    } finally {
      await client.end();
    }
    expect(() => new PostgresStore(undefined as unknown as pg.Pool)).toThrow(/needs a pg Pool/);
  });

  it('a 63-character table name still gets two distinct indexes (PostgreSQL truncates identifiers)', async () => {
    const long = suite.scratchTable(`${uniqueTable()}_`.padEnd(63, 'x'));
    await new PostgresStore(suite.conn, { table: long }).migrate();
    const { rows: indexes } = await suite.conn.query(
      'SELECT indexname FROM pg_indexes WHERE tablename = $1',
      [long],
    );
    expect(indexes).toHaveLength(3);
  });
});
