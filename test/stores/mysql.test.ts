import mysqlCallbacks from 'mysql2';
import mysql, { type Pool, type RowDataPacket } from 'mysql2/promise';
import { expect, it } from 'vitest';
import { MySqlStore, mysqlSchema } from '../../src/stores/mysql.js';
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
} from '../helpers/sql-store-specifics.js';

const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';

const skip = await serverAvailable('MySQL/MariaDB', async () => {
  const connection = await mysql.createConnection({ uri: MYSQL_URL, connectTimeout: 3_000 });
  await connection.end();
});

const mariadb: SqlEngineHooks<Pool, MySqlStore> = {
  skip,
  connect: () => mysql.createPool(MYSQL_URL),
  disconnect: (pool) => pool.end(),
  quote: '`',
  exec: (pool, sql) => pool.query(sql),
  countRows: async (pool, t) => {
    const [result] = await pool.query<RowDataPacket[]>(`SELECT count(*) AS n FROM \`${t}\``);
    return Number(result[0]!.n);
  },
  countId: async (pool, t, id) => {
    const [found] = await pool.execute<RowDataPacket[]>(`SELECT 1 FROM \`${t}\` WHERE id = ?`, [id]);
    return found.length;
  },
  schema: mysqlSchema,
  hostileKeys: (t) => [`x'; DROP TABLE \`${t}\`; -- `, '\\'],
  awkwardKeys: {
    title: 'quotes, backslashes, dots, paths, unicode',
    keys: ['we"ird\\key', 'a.b', '$[0]', '$.x', '*', 'é🍪', 'tab\tnl\n', '\u0001', '\u2028', ' ', ''],
  },
  batches: { loads: true, commits: false, creates: false },
  missingTable: /doesn't exist/,
};
const factory: SqlStoreFactory<Pool, MySqlStore> = (pool, options) => new MySqlStore(pool, options);

describeSqlStoreConformance('MySqlStore', factory, mariadb);

describeSqlStoreSpecifics('MySqlStore', factory, mariadb, (suite) => {
  it('SM-13: a key stays plain data, compared byte for byte: keys differing only in case are two sessions', async () => {
    const { store } = suite;
    const upper = `A${key().slice(1)}`;
    const lower = `a${upper.slice(1)}`;
    expect(await store.create(upper, rec({ 'v:a': 'upper' }), HOUR)).toBe(true);
    expect(await store.create(lower, rec({ 'v:a': 'lower' }), HOUR)).toBe(true);
    expect((await store.load(upper))?.values['v:a']).toBe('upper');
    expect((await store.load(lower))?.values['v:a']).toBe('lower');
    // A non-ASCII key never reaches the database (a collation error there): it is refused first.
    await expect(store.load('żółw')).rejects.toThrow(expect.objectContaining({ code: 'INVALID_KEY' }));
  });

  it('a pool without CLIENT_FOUND_ROWS still tells an unchanged live row from a gone one', async () => {
    const changedRowsPool = mysql.createPool({ uri: MYSQL_URL, flags: ['-FOUND_ROWS'] });
    try {
      const frozen = new MySqlStore(changedRowsPool, { table: suite.table, now: () => suite.clock });
      const k = key();
      await frozen.create(k, rec({ 'v:a': '1' }), HOUR);
      // Same clock, same metadata: the UPDATE matches the row but changes nothing.
      expect(await frozen.touch(k, { lastSeenAt: 1 }, HOUR)).toBe('ok');
      expect(await frozen.touch(k, { lastSeenAt: 1 }, HOUR)).toBe('ok');
      // The guard too: an identical write that matched is 'ok', a failed guard 'conflict'.
      const same = { set: { 'v:a': '1' }, unset: [], meta: { lastSeenAt: 1 } };
      expect(await frozen.commit(k, same, HOUR, { userId: null })).toBe('ok');
      expect(await frozen.commit(k, same, HOUR, { userId: 'someone' })).toBe('conflict');
      await frozen.destroy(k);
      expect(await frozen.touch(k, { lastSeenAt: 1 }, HOUR)).toBe('gone');
      expect(await frozen.commit(k, same, HOUR, { userId: null })).toBe('gone');
    } finally {
      await changedRowsPool.end();
    }
  });

  it('SM-63: gc removes only expired rows in bounded batches until none is left', async () => {
    const { conn: pool, clock } = suite;
    const gcTable = suite.scratchTable();
    const counting = new MySqlStore(pool, { table: gcTable, now: () => suite.clock, gcBatchSize: 100 });
    const batches = countGcBatches(counting);
    await counting.migrate();
    const live = [key(), key()];
    for (const k of live) await counting.create(k, rec({ 'v:live': '1' }), HOUR);
    const expired = Array.from({ length: 250 }, () => [key(), '{}', '{}', clock + 1_000]);
    await pool.query(`INSERT INTO \`${gcTable}\` (id, meta, data, expires_at) VALUES ?`, [expired]);
    expect(await counting.gc(clock + 1_001)).toBe(250);
    expect(batches).toEqual([100, 100, 50]);
    expect(await suite.rows(gcTable)).toBe(2);
    for (const k of live) expect((await counting.load(k))?.values['v:live']).toBe('1');
  });

  // The application's pool options shape the rows mysql2 returns; the store's reads ask for
  // their own, so none of these makes a session read back as corrupt (which signs its user out).
  for (const [name, options] of [
    ['rowsAsArray', { rowsAsArray: true }],
    ['nestTables', { nestTables: true }],
    ['typeCast: false', { typeCast: false }],
    // Binary columns as bytes: MariaDB's JSON columns are LONGTEXT, which mysql2 types BLOB.
    [
      'a typeCast of its own',
      {
        typeCast: (field: { type: string; buffer(): Buffer | null }, next: () => unknown) =>
          field.type === 'BLOB' ? field.buffer() : next(),
      },
    ],
  ] as const) {
    it(`reads find their sessions on a pool made with ${name}, alone and batched`, async () => {
      const pool = mysql.createPool({ uri: MYSQL_URL, ...options } as mysql.PoolOptions);
      try {
        const store = new MySqlStore(pool, { table: suite.scratchTable(), now: () => suite.clock });
        await store.migrate();
        const keys = Array.from({ length: 12 }, () => key());
        for (const [i, k] of keys.entries()) {
          await store.create(k, rec({ 'v:n': String(i) }, i < 3 ? 'u-rows' : undefined), HOUR);
        }
        expect((await store.load(keys[3]!))?.values['v:n']).toBe('3');
        const found = await Promise.all(keys.map((k) => store.load(k)));
        expect(found.map((r) => r?.values['v:n'])).toEqual(keys.map((_, i) => String(i)));
        expect(await store.load(key())).toBeNull();
        expect(await store.commit(keys[0]!, { set: { 'v:m': '"x"' }, unset: [] }, HOUR)).toBe('ok');
        expect((await store.load(keys[0]!))?.values).toEqual({ 'v:n': '0', 'v:m': '"x"' });
        const mine = await store.sessionsOf('u-rows');
        expect(mine.map((s) => s.key).sort()).toEqual(keys.slice(0, 3).sort());
      } finally {
        await pool.end();
      }
    });
  }

  it("a pool of mysql2's callback API works as it is; a single connection is refused, saying to pass a pool", async () => {
    const callbackPool = mysqlCallbacks.createPool({ uri: MYSQL_URL });
    try {
      const store = new MySqlStore(callbackPool, {
        table: suite.scratchTable(),
        now: () => suite.clock,
      });
      await store.migrate();
      const k = key();
      expect(await store.create(k, rec({ 'v:a': '1' }), HOUR)).toBe(true);
      expect((await store.load(k))?.values).toEqual({ 'v:a': '1' });
    } finally {
      await new Promise((done) => callbackPool.end(done));
    }
    const single = await mysql.createConnection({ uri: MYSQL_URL });
    try {
      expect(() => new MySqlStore(single as unknown as Pool)).toThrow(
        expect.objectContaining({
          code: 'INVALID_OPTION',
          message: expect.stringMatching(/needs a mysql2 pool/),
        }),
      );
    } finally {
      await single.end();
    }
  });

  it('SM-37: user_id and expires_at are indexed, and the primary key is the session key', async () => {
    const [indexes] = await suite.conn.query<RowDataPacket[]>(
      `SELECT index_name AS name, column_name AS col FROM information_schema.statistics
       WHERE table_schema = DATABASE() AND table_name = ?`,
      [suite.table],
    );
    const byColumn = new Map(indexes.map((i) => [String(i.col), String(i.name)]));
    expect(byColumn.get('id')).toBe('PRIMARY');
    expect(byColumn.has('user_id')).toBe(true);
    expect(byColumn.has('expires_at')).toBe(true);
  });
});
