import pg from 'pg';
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
