import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, expect, it } from 'vitest';
import { SqliteStore, sqliteSchema } from '../../src/stores/sqlite.js';
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

const dir = await mkdtemp(join(tmpdir(), 'sessionflow-sqlite-'));
const db = new Database(join(dir, 'sessions.db'));
db.pragma('journal_mode = WAL');
afterAll(async () => {
  db.close();
  await rm(dir, { recursive: true, force: true });
});

type Db = Database.Database;

/** Every suite shares the one database file, closed after the whole file. */
const sqlite: SqlEngineHooks<Db, SqliteStore> = {
  connect: () => db,
  disconnect: () => {},
  quote: '"',
  exec: (conn, sql) => conn.exec(sql),
  countRows: (conn, t) => (conn.prepare(`SELECT count(*) AS n FROM "${t}"`).get() as { n: number }).n,
  countId: (conn, t, id) => conn.prepare(`SELECT 1 FROM "${t}" WHERE id = ?`).all(id).length,
  schema: sqliteSchema,
  hostileKeys: (t) => [`x" OR 1=1; DROP TABLE "${t}"; --`],
  awkwardKeys: {
    title: 'quotes, backslashes, dots, unicode, control characters',
    keys: ['we"ird\\key', 'a.b', '$[0]', '*', 'é🍪', 'tab\tnl\n', '\u2028', ' ', ''],
  },
  missingTable: /no such table/,
  migrate: {
    title: 'migrate is idempotent, and the exported DDL serves users who run migrations themselves',
    concurrently: ({ store }) => Promise.all([store.migrate(), store.migrate()]),
  },
};
const factory: SqlStoreFactory<Db, SqliteStore> = (conn, options) => new SqliteStore(conn, options);

describeSqlStoreConformance('SqliteStore', factory, sqlite);

describeSqlStoreSpecifics('SqliteStore', factory, sqlite, (suite) => {
  it('SM-63: gc removes only expired rows, 500 per statement, until none is left', async () => {
    const { clock } = suite;
    const gcTable = suite.scratchTable();
    // Batches are also sized by time (8 ms each on SQLite; sqlite-gc.test.ts tests that). Here the
    // time budget is lifted, so a busy machine cannot shrink them and the count cap is what shows.
    class Untimed extends SqliteStore {
      protected override gcBatchMs = Number.POSITIVE_INFINITY;
    }
    const counting = new Untimed(db, { table: gcTable, now: () => suite.clock });
    const batches = countGcBatches(counting);
    await counting.migrate();
    const live = [key(), key()];
    for (const k of live) await counting.create(k, rec({ 'v:live': '1' }), HOUR);
    const insert = db.prepare(
      `INSERT INTO "${gcTable}" (id, meta, data, expires_at) VALUES (?, '{}', '{}', ?)`,
    );
    db.transaction(() => {
      for (let i = 0; i < 1_200; i++) insert.run(key(), clock + 1_000);
    })();
    expect(await counting.gc(clock + 1_001)).toBe(1_200);
    expect(batches).toEqual([500, 500, 200]);
    for (const k of live) expect((await counting.load(k))?.values['v:live']).toBe('1');
    expect(await counting.gc(clock + 1_001)).toBe(0);
  });

  it('a data column that is not JSON at all (STRICT TEXT takes it) is corrupt, not an error', async () => {
    // meta cannot be malformed: the generated user_id column reads it on every write.
    const k = key();
    const meta = JSON.stringify(rec().meta);
    db.prepare(`INSERT INTO "${suite.table}" (id, meta, data, expires_at) VALUES (?, ?, 'not json', ?)`).run(
      k,
      meta,
      suite.clock + HOUR,
    );
    const reasons: string[] = [];
    const watched = new SqliteStore(db, {
      table: suite.table,
      now: () => suite.clock,
      onCorrupt: (_where, reason) => reasons.push(reason),
    });
    expect(await watched.load(k)).toBeNull();
    expect(reasons).toEqual([expect.stringContaining('data')]);
  });

  it('SM-37: user_id is indexed (partial, anonymous rows left out) and the lookup uses it', async () => {
    const { table } = suite;
    const indexes = db.prepare(`PRAGMA index_list("${table}")`).all() as { name: string; partial: number }[];
    const columns = (name: string) =>
      (db.prepare(`PRAGMA index_info("${name}")`).all() as { name: string }[]).map((c) => c.name);
    const userIndex = indexes.find((i) => columns(i.name).join() === 'user_id');
    expect(userIndex?.partial).toBe(1);
    expect(indexes.some((i) => columns(i.name).join() === 'expires_at')).toBe(true);
    const plan = db
      .prepare(`EXPLAIN QUERY PLAN SELECT id, meta FROM "${table}" WHERE user_id = ? AND expires_at > ?`)
      .all('u', 1) as { detail: string }[];
    expect(plan.map((p) => p.detail).join()).toContain(userIndex!.name);
  });
});
