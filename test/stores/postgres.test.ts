import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { PostgresStore, postgresSchema } from '../../src/stores/postgres.js';
import type { StoredSession } from '../../src/stores/store.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';
import { serverAvailable } from '../helpers/servers.js';

const PG_URL = process.env.PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

const skip = await serverAvailable('PostgreSQL', async () => {
  const client = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 3_000 });
  await client.connect();
  await client.end();
});

const uniqueTable = () => `sf_test_${randomBytes(5).toString('hex')}`;
const dropTable = (pool: pg.Pool, table: string) => pool.query(`DROP TABLE IF EXISTS "${table}"`);

describeStoreConformance(
  'PostgresStore',
  async () => {
    const pool = new pg.Pool({ connectionString: PG_URL });
    const table = uniqueTable();
    const store = new PostgresStore(pool, { table });
    await store.migrate();
    return {
      store,
      cleanup: async () => {
        await dropTable(pool, table);
        await pool.end();
      },
    };
  },
  { skip },
);

const HOUR = 3_600_000;
const key = () => storageKey(newToken());
const rec = (values: Record<string, string> = {}, userId?: string): StoredSession => ({
  meta: { createdAt: 1, lastSeenAt: 1, deadline: 9e15, ...(userId ? { userId } : {}) },
  values,
});

/** Records the size of every gc batch, through the store's own statement. */
class BatchCountingStore extends PostgresStore {
  readonly batches: number[] = [];
  protected override async deleteExpiredBatch(now: number, limit: number): Promise<number> {
    const n = await super.deleteExpiredBatch(now, limit);
    this.batches.push(n);
    return n;
  }
}

describe.skipIf(skip)(`PostgresStore specifics${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const table = uniqueTable();
  const scratch: string[] = [];
  /** A further table of one test, dropped after the suite even if that test fails. */
  const scratchTable = (name = uniqueTable()) => {
    scratch.push(name);
    return name;
  };
  let clock = Date.now();
  let pool: pg.Pool;
  let store: PostgresStore;
  const rows = async (t = table) =>
    (await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM "${t}"`)).rows[0]!.n;

  beforeAll(async () => {
    pool = new pg.Pool({ connectionString: PG_URL });
    store = new PostgresStore(pool, { table, now: () => clock });
    await store.migrate();
  });
  afterAll(async () => {
    for (const t of [table, ...scratch]) await dropTable(pool, t);
    await pool.end();
  });

  it('SM-63, SM-13: a key carrying SQL is only data: load null, commit gone, nothing deleted', async () => {
    await store.create(key(), rec({ 'v:a': '1' }), HOUR);
    await store.create(key(), rec({ 'v:a': '2' }), HOUR);
    const before = await rows();
    const injection = "' OR '1'='1";
    expect(await store.load(injection)).toBeNull();
    expect(await store.commit(injection, { set: { 'v:x': '1' }, unset: [] }, HOUR)).toBe('gone');
    await store.destroy(injection);
    await store.destroy(`x'; DROP TABLE "${table}"; --`);
    expect(await rows()).toBe(before);
    // Stored as a key of its own, it round-trips like any other key.
    expect(await store.create(injection, rec({ 'v:a': 'inj' }), HOUR)).toBe(true);
    expect((await store.load(injection))?.values['v:a']).toBe('inj');
    await store.destroy(injection);
    expect(await rows()).toBe(before);
  });

  it('SM-63: the table name is validated, since identifiers cannot be parameters', () => {
    for (const bad of ['x"; DROP TABLE y; --', 'a b', '1abc', 'a'.repeat(64), '']) {
      expect(() => new PostgresStore(pool, { table: bad })).toThrow(
        expect.objectContaining({ code: 'INVALID_OPTION' }),
      );
      expect(() => postgresSchema(bad)).toThrow(/table name/);
    }
  });

  it('SM-28: an expired row is never returned, even before gc removes it', async () => {
    const k = key();
    await store.create(k, rec({ 'v:a': '1' }, 'u-expiry'), 1_000);
    clock += 1_001;
    const before = await rows();
    expect(await store.sessionsOf('u-expiry')).toEqual([]);
    expect(await rows()).toBe(before); // still in the table: the read predicate alone hid it
    expect(await store.load(k)).toBeNull();
    expect(await rows()).toBe(before - 1); // and a load that meets it removes it
    expect(await store.commit(k, { set: { 'v:b': '1' }, unset: [] }, HOUR)).toBe('gone');
  });

  it('create replaces an expired leftover with the same key, never a live row', async () => {
    const k = key();
    await store.create(k, rec({ 'v:a': 'old' }), 1_000);
    expect(await store.create(k, rec({ 'v:a': 'other' }), HOUR)).toBe(false);
    clock += 1_001;
    expect(await store.create(k, rec({ 'v:a': 'new' }), HOUR)).toBe(true);
    expect({ ...(await store.load(k))?.values }).toEqual({ 'v:a': 'new' });
  });

  it('SM-35: commit and touch after destroy answer gone and write no row', async () => {
    const k = key();
    await store.create(k, rec({ 'v:a': '1' }), HOUR);
    await store.destroy(k);
    const before = await rows();
    expect(await store.commit(k, { set: { 'v:a': '2' }, unset: [] }, HOUR)).toBe('gone');
    expect(await store.touch(k, { lastSeenAt: clock }, HOUR)).toBe('gone');
    expect(await rows()).toBe(before);
    expect((await pool.query(`SELECT 1 FROM "${table}" WHERE id = $1`, [k])).rowCount).toBe(0);
  });

  it('SM-63: gc removes only expired rows in bounded batches, and two collectors share the work', async () => {
    const gcTable = scratchTable();
    const options = { table: gcTable, now: () => clock, gcBatchSize: 100 };
    const a = new BatchCountingStore(pool, options);
    const b = new BatchCountingStore(pool, options);
    await a.migrate();
    const live = [key(), key()];
    for (const k of live) await a.create(k, rec({ 'v:live': '1' }), HOUR);
    await pool.query(
      `INSERT INTO "${gcTable}" (id, meta, data, expires_at)
       SELECT k, '{}', '{}', $2 FROM unnest($1::text[]) AS k`,
      [Array.from({ length: 450 }, key), clock + 1_000],
    );
    const [ra, rb] = await Promise.all([a.gc(clock + 1_001), b.gc(clock + 1_001)]);
    expect(ra + rb).toBe(450);
    expect([...a.batches, ...b.batches].every((n) => n <= 100)).toBe(true);
    expect(await rows(gcTable)).toBe(2);
    for (const k of live) expect((await a.load(k))?.values['v:live']).toBe('1');
  });

  it('SM-37: user_id is indexed (partial, anonymous rows left out), expires_at too', async () => {
    const { rows: defs } = await pool.query<{ indexdef: string }>(
      'SELECT indexdef FROM pg_indexes WHERE tablename = $1',
      [table],
    );
    const all = defs.map((d) => d.indexdef);
    expect(all.some((d) => /\(user_id\) WHERE \(user_id IS NOT NULL\)/.test(d))).toBe(true);
    expect(all.some((d) => d.includes('(expires_at)'))).toBe(true);
    expect(all.some((d) => /UNIQUE INDEX .*\(id\)/.test(d))).toBe(true);
  });

  it('merges awkward keys and user ids exactly: quotes, backslashes, dots, braces, unicode', async () => {
    const k = key();
    const odd = ['we"ird\\key', 'a.b', '{a,b}', 'NULL', '$[0]', 'é🍪', 'tab\tnl\n', '\u2028', ' ', ''];
    await store.create(
      k,
      rec({ keep: '1', ...Object.fromEntries(odd.map((o) => [o, 'v'])) }, 'u"é\\🍪'),
      HOUR,
    );
    expect(await store.commit(k, { set: { [odd[0]!]: 'changed' }, unset: odd.slice(1) }, HOUR)).toBe('ok');
    expect({ ...(await store.load(k))?.values }).toEqual({ keep: '1', [odd[0]!]: 'changed' });
    expect((await store.sessionsOf('u"é\\🍪')).map((s) => s.key)).toEqual([k]);
  });

  it('migrate is idempotent, also when several instances start at once, and the DDL is exported', async () => {
    await store.migrate();
    const fresh = scratchTable();
    const instances = Array.from({ length: 4 }, () => new PostgresStore(pool, { table: fresh }));
    await Promise.all(instances.map((s) => s.migrate()));
    const own = scratchTable();
    await pool.query(postgresSchema(own));
    await pool.query(postgresSchema(own));
    const mine = new PostgresStore(pool, { table: own });
    const k = key();
    expect(await mine.create(k, rec({ 'v:a': '1' }), HOUR)).toBe(true);
    expect((await mine.load(k))?.values['v:a']).toBe('1');
  });

  it('a 63-character table name still gets two distinct indexes (PostgreSQL truncates identifiers)', async () => {
    const long = scratchTable(`${uniqueTable()}_`.padEnd(63, 'x'));
    await new PostgresStore(pool, { table: long }).migrate();
    const { rows: indexes } = await pool.query('SELECT indexname FROM pg_indexes WHERE tablename = $1', [
      long,
    ]);
    expect(indexes).toHaveLength(3);
  });

  it('a driver error is thrown, never taken for a missing session', async () => {
    const missing = new PostgresStore(pool, { table: uniqueTable() });
    await expect(missing.load(key())).rejects.toThrow(/does not exist/);
    await expect(missing.commit(key(), { set: {}, unset: [] }, HOUR)).rejects.toThrow(/does not exist/);
  });
});
