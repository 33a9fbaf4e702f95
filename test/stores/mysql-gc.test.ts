import mysql, { type Pool, type PoolConnection, type RowDataPacket } from 'mysql2/promise';
import { afterAll, describe, expect, it } from 'vitest';
import { MySqlStore, type MySqlStoreOptions } from '../../src/stores/mysql.js';
import { serverAvailable } from '../helpers/servers.js';
import { countGcBatches, HOUR, key, rec, uniqueTable } from '../helpers/sql-store-specifics.js';
import { TcpProxy } from '../helpers/tcp-proxy.js';

// gc on InnoDB walks the table in key order once enough of it has expired (MySqlStore's
// `sweepsInKeyOrder`): these tests check that it removes exactly what the expires_at path would,
// and that what the application does meanwhile survives it.

const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';
const skip = await serverAvailable('MySQL/MariaDB', async () => {
  const connection = await mysql.createConnection({ uri: MYSQL_URL, connectTimeout: 3_000 });
  await connection.end();
});

const NOW = 1_700_000_000_000;
const pools: Pool[] = [];
const tables: string[] = [];
afterAll(async () => {
  const pool = pools[0];
  for (const t of tables) await pool?.query(`DROP TABLE IF EXISTS \`${t}\``);
  await Promise.all(pools.map((p) => p.end()));
});
const newPool = () => {
  const pool = mysql.createPool({ uri: MYSQL_URL, connectionLimit: 10 });
  pools.push(pool);
  return pool;
};

/** The same store with a lower bar for the key-order walk, so that a test table can cross it. */
class LowBarStore extends MySqlStore {
  protected override readonly sweepMinExpired = 10;
}

/** How many times each gc path ran a batch. */
function countPaths(store: MySqlStore) {
  const paths = { sweep: 0, index: 0 };
  const target = store as unknown as {
    deleteExpiredAfter(...args: unknown[]): Promise<unknown>;
    deleteExpiredBatch(...args: unknown[]): Promise<number>;
  };
  const sweep = target.deleteExpiredAfter.bind(store);
  target.deleteExpiredAfter = (...args) => {
    paths.sweep++;
    return sweep(...args);
  };
  const index = target.deleteExpiredBatch.bind(store);
  target.deleteExpiredBatch = (...args) => {
    paths.index++;
    return index(...args);
  };
  return paths;
}

/**
 * Runs `hook` (with the statement's values) once, just before the first statement on `pool` whose
 * text matches `pattern` goes to the server: a deterministic point between two store statements.
 * Answers whether it ran.
 */
function beforeFirst(pool: Pool, pattern: RegExp, hook: (values: unknown[]) => Promise<void>): () => boolean {
  const getConnection = pool.getConnection.bind(pool);
  let held = false;
  pool.getConnection = async () => {
    const conn: PoolConnection = await getConnection();
    // The store sends each statement as an options object: { sql, values, ... }.
    type Statement = { sql: string; values: unknown[] };
    const execute = conn.execute.bind(conn) as (statement: Statement) => Promise<unknown>;
    (conn as unknown as { execute: typeof execute }).execute = async (statement) => {
      if (!held && pattern.test(statement.sql)) {
        held = true;
        await hook(statement.values);
      }
      return execute(statement);
    };
    return conn;
  };
  return () => held;
}

/** A table with `live` live sessions and `expired` expired rows (expiries spread up to `NOW`). */
async function table(
  pool: Pool,
  {
    live,
    expired,
    options = {},
    Store = MySqlStore,
  }: {
    live: number;
    expired: number;
    options?: MySqlStoreOptions;
    Store?: typeof MySqlStore;
  },
) {
  const name = uniqueTable();
  tables.push(name);
  const store = new Store(pool, { table: name, now: () => NOW, ...options });
  await store.migrate();
  const liveKeys = Array.from({ length: live }, () => key());
  const expiredKeys = Array.from({ length: expired }, () => key());
  const meta = JSON.stringify(rec().meta);
  const rows = [
    ...liveKeys.map((k) => [k, meta, '{"v:n":"\\"0\\""}', NOW + HOUR]),
    ...expiredKeys.map((k, i) => [k, meta, '{}', NOW - (i % 300) * 1_000]),
  ];
  for (let i = 0; i < rows.length; i += 5_000) {
    await pool.query(`INSERT INTO \`${name}\` (id, meta, data, expires_at) VALUES ?`, [
      rows.slice(i, i + 5_000),
    ]);
  }
  // The row count gc reads is the server's estimate: make it current.
  await pool.query(`ANALYZE TABLE \`${name}\``);
  const count = async (where = '1') => {
    const [r] = await pool.query<RowDataPacket[]>(`SELECT count(*) AS n FROM \`${name}\` WHERE ${where}`);
    return Number(r[0]!.n);
  };
  return { name, store, liveKeys, expiredKeys, count };
}

describe.skipIf(skip)('MySqlStore gc in key order', () => {
  it('SM-63: a backlog of most of a 16,000-row table is walked in key order; every expired row goes, every live one stays', async () => {
    const pool = newPool();
    // The walk needs the server's row estimate at 10,000 or more. ANALYZE samples pages, and its
    // estimate of a 12,000-row table came out from 10,927 to 12,530 in eight tries here (and
    // once under 10,000 in CI): 16,000 rows keep a margin of more than a third.
    const t = await table(pool, { live: 1_000, expired: 15_000, options: { gcBatchSize: 2_000 } });
    const paths = countPaths(t.store);
    expect(await t.store.gc()).toBe(15_000);
    // 2,000 a batch at most: at least eight batches, and the expires_at path never ran.
    expect(paths.sweep).toBeGreaterThanOrEqual(8);
    expect(paths.index).toBe(0);
    expect(await t.count()).toBe(1_000);
    for (const k of t.liveKeys.slice(0, 50)) expect((await t.store.load(k))?.values['v:n']).toBe('"0"');
    expect(await t.store.gc()).toBe(0);
  });

  it('SM-63: a backlog under a tenth of the table, or under the bar, goes through the expires_at index', async () => {
    const pool = newPool();
    // 60 expired of 1,060 rows: above the bar (10), under a tenth.
    const few = await table(pool, { live: 1_000, expired: 60, Store: LowBarStore });
    const fewPaths = countPaths(few.store);
    expect(await few.store.gc()).toBe(60);
    expect(fewPaths).toEqual({ sweep: 0, index: 1 });
    // 150 of 1,150: over a tenth, walked in key order.
    const many = await table(pool, { live: 1_000, expired: 150, Store: LowBarStore });
    const manyPaths = countPaths(many.store);
    expect(await many.store.gc()).toBe(150);
    expect(manyPaths).toEqual({ sweep: 1, index: 0 });
    // The real bar is 10,000: 300 expired of 310 stay on the index path.
    const small = await table(pool, { live: 10, expired: 300, options: { gcBatchSize: 100 } });
    const batches = countGcBatches(small.store);
    expect(await small.store.gc()).toBe(300);
    expect(batches).toEqual([100, 100, 100, 0]);
    for (const t of [few, many, small]) expect(await t.count(`expires_at <= ${NOW}`)).toBe(0);
  });

  it('between a batch finding its expired keys and deleting them, a re-created key and a destroyed one are left as the application made them', async () => {
    const pool = newPool();
    const t = await table(pool, {
      live: 100,
      expired: 200,
      Store: LowBarStore,
      options: { gcBatchSize: 50 },
    });
    const recreated = t.expiredKeys.slice(0, 200).sort()[10]!;
    const destroyed = t.expiredKeys.slice(0, 200).sort()[20]!;
    // Hold the first DELETE of the walk: the SELECT before it has named the first 50 expired
    // keys (in key order, so both keys above are among them).
    const held = beforeFirst(pool, /DELETE FROM .* WHERE id IN/, async (values) => {
      expect(values).toContain(recreated);
      expect(values).toContain(destroyed);
      // A visitor's create takes the expired key over; another row is removed by its owner.
      const other = new MySqlStore(newPool(), { table: t.name, now: () => NOW });
      expect(await other.create(recreated, rec({ 'v:n': 'fresh' }), HOUR)).toBe(true);
      await other.destroy(destroyed);
    });
    const removed = await t.store.gc();
    expect(held()).toBe(true);
    // 198 by gc: the destroyed row was already gone, the re-created one is live.
    expect(removed).toBe(198);
    expect((await t.store.load(recreated))?.values['v:n']).toBe('fresh');
    expect(await t.count()).toBe(101);
  });

  it('a create over an expired leftover that gc removes between its failed insert and its purge still makes the session', async () => {
    const pool = newPool();
    const t = await table(pool, { live: 0, expired: 1 });
    const leftover = t.expiredKeys[0]!;
    const held = beforeFirst(pool, /DELETE FROM .* WHERE id = \? AND expires_at <= \?/, async () => {
      // The insert failed on the key; gc takes the expired row before the purge comes.
      const [rows] = await newPool().query<RowDataPacket[]>(
        `SELECT count(*) AS n FROM \`${t.name}\` WHERE id = ?`,
        [leftover],
      );
      expect(Number(rows[0]!.n)).toBe(1);
      expect(await new MySqlStore(newPool(), { table: t.name, now: () => NOW }).gc()).toBe(1);
    });
    expect(await t.store.create(leftover, rec({ 'v:n': 'mine' }), HOUR)).toBe(true);
    expect(held()).toBe(true);
    expect((await t.store.load(leftover))?.values['v:n']).toBe('mine');
  });

  it('the server going away in the middle of the walk: gc fails at once with the connection error, and the next gc finishes the job', async () => {
    const url = new URL(MYSQL_URL);
    const proxy = await TcpProxy.start({ host: url.hostname, port: Number(url.port || 3306) });
    try {
      url.port = String(proxy.port);
      const pool = mysql.createPool({ uri: url.toString(), connectTimeout: 1_000 });
      pools.push(pool);
      const t = await table(pool, {
        live: 50,
        expired: 400,
        Store: LowBarStore,
        options: { gcBatchSize: 20, timeoutMs: 1_500 },
      });
      // The server goes away while the third batch of the walk is being collected.
      const target = t.store as unknown as { deleteExpiredAfter(...args: unknown[]): Promise<unknown> };
      const step = target.deleteExpiredAfter.bind(t.store);
      let batches = 0;
      target.deleteExpiredAfter = async (...args) => {
        if (++batches === 3) await proxy.down();
        return step(...args);
      };
      // As every SQL store operation: the driver's error, or STORE_UNAVAILABLE once timeoutMs is spent.
      const failure = await t.store.gc().then(
        () => null,
        (err: { code?: string }) => err,
      );
      expect(['ECONNRESET', 'ECONNREFUSED', 'PROTOCOL_CONNECTION_LOST', 'STORE_UNAVAILABLE']).toContain(
        failure?.code,
      );
      await proxy.up();
      target.deleteExpiredAfter = step;
      // Two batches (40 rows) went before the outage; the next gc takes the rest.
      expect(await t.store.gc()).toBe(360);
      expect(await t.count()).toBe(50);
      for (const k of t.liveKeys) expect((await t.store.load(k))?.values['v:n']).toBe('"0"');
    } finally {
      await proxy.close();
    }
  });

  it('a randomized race: creates, re-creates of expired keys, commits and destroys run while gc walks; nothing live is lost', async () => {
    const pool = newPool();
    for (let trial = 0; trial < 8; trial++) {
      const t = await table(pool, {
        live: 30,
        expired: 300,
        Store: LowBarStore,
        options: { gcBatchSize: 20 },
      });
      const paths = countPaths(t.store);
      const expected = new Map<string, string>(t.liveKeys.map((k) => [k, '"0"']));
      const gone = new Set<string>();
      const taken = new Set<string>();
      let recreated = 0;
      let gcDone = false;
      const gc = t.store.gc().finally(() => {
        gcDone = true;
      });
      // Each worker writes its own live sessions, one request after another on each.
      const worker = async (w: number) => {
        const mine = t.liveKeys.filter((_, i) => i % 3 === w - 1);
        for (let round = 0; !gcDone || round < 3; round++) {
          const roll = Math.random();
          if (roll < 0.3) {
            const k = mine[Math.floor(Math.random() * mine.length)]!;
            if (gone.has(k)) continue;
            const value = `${w}-${round}`;
            const result = await t.store.commit(k, { set: { 'v:n': value }, unset: [] }, HOUR);
            expect(result).toBe('ok');
            expected.set(k, value);
          } else if (roll < 0.6) {
            const k = t.expiredKeys[Math.floor(Math.random() * t.expiredKeys.length)]!;
            if (taken.has(k)) continue;
            taken.add(k);
            recreated++;
            // Whether gc reached the row first or not, the key is free for a new session.
            expect(await t.store.create(k, rec({ 'v:n': `again${w}` }), HOUR)).toBe(true);
            expected.set(k, `again${w}`);
          } else if (roll < 0.8) {
            const k = key();
            expect(await t.store.create(k, rec({ 'v:n': 'new' }), HOUR)).toBe(true);
            expected.set(k, 'new');
          } else {
            const k = mine[Math.floor(Math.random() * mine.length)]!;
            gone.add(k);
            expected.delete(k);
            await t.store.destroy(k);
          }
          await new Promise<void>((resolve) => setImmediate(resolve));
        }
      };
      await Promise.all([gc, worker(1), worker(2), worker(3)]);
      const removed = await gc;
      expect(paths.sweep).toBeGreaterThan(1);
      expect(paths.index).toBe(0);
      // Each expired row went once: by gc, or by a create that took its key over first.
      expect(removed).toBeLessThanOrEqual(300);
      expect(removed).toBeGreaterThanOrEqual(300 - recreated);
      expect(await t.count(`expires_at <= ${NOW}`)).toBe(0);
      expect(await t.count()).toBe(expected.size);
      for (const [k, value] of expected) expect((await t.store.load(k))?.values['v:n'], k).toBe(value);
    }
  });
});
