import { randomBytes } from 'node:crypto';
import mysql, { type Pool, type RowDataPacket } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { MySqlStore, mysqlSchema } from '../../src/stores/mysql.js';
import type { StoredSession } from '../../src/stores/store.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';
import { serverAvailable } from '../helpers/servers.js';

const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';

const skip = await serverAvailable('MySQL/MariaDB', async () => {
  const connection = await mysql.createConnection({ uri: MYSQL_URL, connectTimeout: 3_000 });
  await connection.end();
});

const uniqueTable = () => `sf_test_${randomBytes(5).toString('hex')}`;
const dropTable = (pool: Pool, table: string) => pool.query(`DROP TABLE IF EXISTS \`${table}\``);

describeStoreConformance(
  'MySqlStore',
  async () => {
    const pool = mysql.createPool(MYSQL_URL);
    const table = uniqueTable();
    const store = new MySqlStore(pool, { table });
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
class BatchCountingStore extends MySqlStore {
  readonly batches: number[] = [];
  protected override async deleteExpiredBatch(now: number, limit: number): Promise<number> {
    const n = await super.deleteExpiredBatch(now, limit);
    this.batches.push(n);
    return n;
  }
}

describe.skipIf(skip)(`MySqlStore specifics${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const table = uniqueTable();
  const scratch: string[] = [];
  /** A further table of one test, dropped after the suite even if that test fails. */
  const scratchTable = (name = uniqueTable()) => {
    scratch.push(name);
    return name;
  };
  let clock = Date.now();
  let pool: Pool;
  let store: MySqlStore;
  const rows = async (t = table) => {
    const [result] = await pool.query<RowDataPacket[]>(`SELECT count(*) AS n FROM \`${t}\``);
    return Number(result[0]!.n);
  };

  beforeAll(async () => {
    pool = mysql.createPool(MYSQL_URL);
    store = new MySqlStore(pool, { table, now: () => clock });
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
    await store.destroy(`x'; DROP TABLE \`${table}\`; -- `);
    await store.destroy('\\');
    expect(await rows()).toBe(before);
    // Stored as a key of its own, it round-trips like any other key.
    expect(await store.create(injection, rec({ 'v:a': 'inj' }), HOUR)).toBe(true);
    expect((await store.load(injection))?.values['v:a']).toBe('inj');
    await store.destroy(injection);
    expect(await rows()).toBe(before);
  });

  it('SM-13: a key stays plain data, compared byte for byte: keys differing only in case are two sessions', async () => {
    const upper = `A${key().slice(1)}`;
    const lower = `a${upper.slice(1)}`;
    expect(await store.create(upper, rec({ 'v:a': 'upper' }), HOUR)).toBe(true);
    expect(await store.create(lower, rec({ 'v:a': 'lower' }), HOUR)).toBe(true);
    expect((await store.load(upper))?.values['v:a']).toBe('upper');
    expect((await store.load(lower))?.values['v:a']).toBe('lower');
    expect(await store.load('żółw')).toBeNull(); // a non-ASCII key is data too, not a collation error
  });

  it('SM-63: the table name is validated, since identifiers cannot be parameters', () => {
    for (const bad of ['x`; DROP TABLE y; --', 'a b', '1abc', 'a'.repeat(64), '']) {
      expect(() => new MySqlStore(pool, { table: bad })).toThrow(
        expect.objectContaining({ code: 'INVALID_OPTION' }),
      );
      expect(() => mysqlSchema(bad)).toThrow(/table name/);
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
    const [found] = await pool.execute<RowDataPacket[]>(`SELECT 1 FROM \`${table}\` WHERE id = ?`, [k]);
    expect(found).toHaveLength(0);
  });

  it('a pool without CLIENT_FOUND_ROWS still tells an unchanged live row from a gone one', async () => {
    const changedRowsPool = mysql.createPool({ uri: MYSQL_URL, flags: ['-FOUND_ROWS'] });
    try {
      const frozen = new MySqlStore(changedRowsPool, { table, now: () => clock });
      const k = key();
      await frozen.create(k, rec({ 'v:a': '1' }), HOUR);
      // Same clock, same metadata: the UPDATE matches the row but changes nothing.
      expect(await frozen.touch(k, { lastSeenAt: 1 }, HOUR)).toBe('ok');
      expect(await frozen.touch(k, { lastSeenAt: 1 }, HOUR)).toBe('ok');
      await frozen.destroy(k);
      expect(await frozen.touch(k, { lastSeenAt: 1 }, HOUR)).toBe('gone');
    } finally {
      await changedRowsPool.end();
    }
  });

  it('SM-63: gc removes only expired rows in bounded batches until none is left', async () => {
    const gcTable = scratchTable();
    const counting = new BatchCountingStore(pool, { table: gcTable, now: () => clock, gcBatchSize: 100 });
    await counting.migrate();
    const live = [key(), key()];
    for (const k of live) await counting.create(k, rec({ 'v:live': '1' }), HOUR);
    const expired = Array.from({ length: 250 }, () => [key(), '{}', '{}', clock + 1_000]);
    await pool.query(`INSERT INTO \`${gcTable}\` (id, meta, data, expires_at) VALUES ?`, [expired]);
    expect(await counting.gc(clock + 1_001)).toBe(250);
    expect(counting.batches).toEqual([100, 100, 50]);
    expect(await rows(gcTable)).toBe(2);
    for (const k of live) expect((await counting.load(k))?.values['v:live']).toBe('1');
  });

  it('SM-37: user_id and expires_at are indexed, and the primary key is the session key', async () => {
    const [indexes] = await pool.query<RowDataPacket[]>(
      `SELECT index_name AS name, column_name AS col FROM information_schema.statistics
       WHERE table_schema = DATABASE() AND table_name = ?`,
      [table],
    );
    const byColumn = new Map(indexes.map((i) => [String(i.col), String(i.name)]));
    expect(byColumn.get('id')).toBe('PRIMARY');
    expect(byColumn.has('user_id')).toBe(true);
    expect(byColumn.has('expires_at')).toBe(true);
  });

  it('merges awkward keys and user ids exactly: quotes, backslashes, dots, paths, unicode', async () => {
    const k = key();
    const odd = ['we"ird\\key', 'a.b', '$[0]', '$.x', '*', 'é🍪', 'tab\tnl\n', '\u0001', '\u2028', ' ', ''];
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
    const instances = Array.from({ length: 4 }, () => new MySqlStore(pool, { table: fresh }));
    await Promise.all(instances.map((s) => s.migrate()));
    const own = scratchTable();
    await pool.query(mysqlSchema(own));
    await pool.query(mysqlSchema(own));
    const mine = new MySqlStore(pool, { table: own });
    const k = key();
    expect(await mine.create(k, rec({ 'v:a': '1' }), HOUR)).toBe(true);
    expect((await mine.load(k))?.values['v:a']).toBe('1');
  });

  it('a driver error is thrown, never taken for a missing session', async () => {
    const missing = new MySqlStore(pool, { table: uniqueTable() });
    await expect(missing.load(key())).rejects.toThrow(/doesn't exist/);
    await expect(missing.commit(key(), { set: {}, unset: [] }, HOUR)).rejects.toThrow(/doesn't exist/);
  });
});
