import { statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/stores/sqlite.js';
import { HOUR, key, rec, uniqueTable } from '../helpers/sql-store-specifics.js';

const dir = await mkdtemp(join(tmpdir(), 'sessionflow-sqlite-gc-'));
const db = new Database(join(dir, 'sessions.db'));
db.pragma('journal_mode = WAL');
afterAll(async () => {
  db.close();
  await rm(dir, { recursive: true, force: true });
});

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('SqliteStore gc while the application keeps writing (WAL file)', () => {
  it('removes exactly the expired rows; commits, creates and re-creates of expired keys made between batches all survive', async () => {
    const now = 1_700_000_000_000;
    const table = uniqueTable();
    const store = new SqliteStore(db, { table, now: () => now, gcBatchSize: 25 });
    await store.migrate();

    const live = Array.from({ length: 40 }, () => key());
    for (const k of live) expect(await store.create(k, rec({ 'v:n': '0' }), HOUR)).toBe(true);
    const expired = Array.from({ length: 600 }, () => key());
    const insert = db.prepare(`INSERT INTO "${table}" (id, meta, data, expires_at) VALUES (?, ?, '{}', ?)`);
    db.transaction(() => {
      // Expiries spread over the past hour, up to and including `now` itself (expired at `now`).
      for (const [i, k] of expired.entries())
        insert.run(k, JSON.stringify(rec().meta), now - (i % 300) * 1_000);
    })();

    // The application's writes, one per turn of the event loop, while gc deletes batch by batch.
    let gcDone = false;
    let roundsDuringGc = 0;
    const expected = new Map<string, string>(live.map((k) => [k, '0']));
    const recreated: string[] = [];
    const gc = store.gc().finally(() => {
      gcDone = true;
    });
    for (let round = 1; !gcDone; round++) {
      const k = live[round % live.length]!;
      expect(await store.commit(k, { set: { 'v:n': String(round) }, unset: [] }, HOUR)).toBe('ok');
      expected.set(k, String(round));
      const fresh = key();
      expect(await store.create(fresh, rec({ 'v:n': `new${round}` }), HOUR)).toBe(true);
      expected.set(fresh, `new${round}`);
      if (round % 3 === 0 && recreated.length < 100) {
        // A create over an expired row that gc may or may not have reached yet.
        const old = expired[recreated.length * 5]!;
        expect(await store.create(old, rec({ 'v:n': `again${round}` }), HOUR)).toBe(true);
        expected.set(old, `again${round}`);
        recreated.push(old);
      }
      if (!gcDone) roundsDuringGc++;
      await nextTurn();
    }
    const removed = await gc;

    // The writes really interleaved with gc's batches (600 rows, 25 a batch).
    expect(roundsDuringGc).toBeGreaterThan(5);
    expect(recreated.length).toBeGreaterThan(0);
    // Every expired row went, once: by gc, or replaced by a create that came first.
    expect(removed).toBeLessThanOrEqual(expired.length);
    expect(removed).toBeGreaterThanOrEqual(expired.length - recreated.length);
    const left = db.prepare(`SELECT count(*) AS n FROM "${table}" WHERE expires_at <= ?`).get(now) as {
      n: number;
    };
    expect(left.n).toBe(0);
    // Nothing live was lost: every session holds its last committed value.
    const rows = db.prepare(`SELECT count(*) AS n FROM "${table}"`).get() as { n: number };
    expect(rows.n).toBe(expected.size);
    for (const [k, value] of expected) expect((await store.load(k))?.values['v:n']).toBe(value);
    expect(await store.gc()).toBe(0);
  });
});

/** A WAL file is a 32-byte header, then frames of a 24-byte header and one page (sqlite.org/fileformat2). */
const WAL_HEADER_BYTES = 32;
const WAL_FRAME_HEADER_BYTES = 24;

describe('SqliteStore gc and the settings of the application handle', () => {
  /** A fresh WAL database with `expired` expired rows of random keys, and its store. */
  async function backlog(expired: number, gcBatchSize: number) {
    const file = join(dir, `${uniqueTable()}.db`);
    const own = new Database(file);
    own.pragma('journal_mode = WAL');
    const now = 1_700_000_000_000;
    const table = uniqueTable();
    const store = new SqliteStore(own, { table, now: () => now, gcBatchSize });
    await store.migrate();
    const insert = own.prepare(`INSERT INTO "${table}" (id, meta, data, expires_at) VALUES (?, ?, '{}', ?)`);
    const meta = JSON.stringify(rec().meta);
    own.transaction(() => {
      for (let i = 0; i < expired; i++) insert.run(key(), meta, now - 1 - (i % 5_000) * 1_000);
    })();
    own.pragma('wal_checkpoint(TRUNCATE)');
    return { own, file, store, table };
  }
  const settings = (own: InstanceType<typeof Database>) => ({
    synchronous: own.pragma('synchronous', { simple: true }),
    walAutocheckpoint: own.pragma('wal_autocheckpoint', { simple: true }),
    busyTimeout: own.pragma('busy_timeout', { simple: true }),
  });

  it('a large gc checkpoints every hundred WAL pages, so the WAL file stays small (the handle keeps the default 1000)', async () => {
    const { own, file, store } = await backlog(20_000, 50);
    try {
      const before = settings(own);
      expect(before.walAutocheckpoint).toBe(1000);
      expect(await store.gc()).toBe(20_000);
      // Every deleted row rewrites a page of the random-key index: 20,000 rows are thousands of
      // pages. The WAL file keeps its longest length: the threshold's pages plus those of the
      // batch that crossed it (a 50-row batch dirties about 60, at most about 110). A threshold
      // of N pages makes the WAL hold at least N frames before the first checkpoint, so it must
      // stay under 250 frames here (measured: about 160 at 100 pages, 300 at 250, over 1000 at
      // SQLite's default).
      const pageSize = own.pragma('page_size', { simple: true }) as number;
      const frames = (statSync(`${file}-wal`).size - WAL_HEADER_BYTES) / (WAL_FRAME_HEADER_BYTES + pageSize);
      expect(frames).toBeGreaterThan(0);
      expect(frames).toBeLessThan(250);
      // Nothing of what gc did to its own commits is left on the handle.
      expect(settings(own)).toEqual(before);
    } finally {
      own.close();
    }
  });

  it("the handle's own settings are as the application set them after gc, also after a batch that failed, and an automatic checkpoint turned off stays off", async () => {
    const { own, store, table } = await backlog(2_000, 100);
    try {
      own.pragma('synchronous = EXTRA');
      own.pragma('wal_autocheckpoint = 777');
      own.pragma('busy_timeout = 1234');
      expect(await store.gc()).toBe(2_000);
      expect(settings(own)).toEqual({ synchronous: 3, walAutocheckpoint: 777, busyTimeout: 1234 });

      // The application checkpoints by itself: gc never turns the automatic checkpoint on.
      own.pragma('wal_autocheckpoint = 0');
      own.pragma('wal_checkpoint(TRUNCATE)');
      const insert = own.prepare(
        `INSERT INTO "${table}" (id, meta, data, expires_at) VALUES (?, ?, '{}', 1)`,
      );
      own.transaction(() => {
        for (let i = 0; i < 3_000; i++) insert.run(key(), JSON.stringify(rec().meta));
      })();
      const before = own.pragma('wal_checkpoint(PASSIVE)', { simple: false }) as { log: number }[];
      expect(await store.gc()).toBe(3_000);
      expect(settings(own)).toEqual({ synchronous: 3, walAutocheckpoint: 0, busyTimeout: 1234 });
      expect(before[0]!.log).toBeGreaterThan(0);

      // A batch that fails (its table is gone) still puts every setting back.
      own.exec(`DROP TABLE "${table}"`);
      await expect(store.gc()).rejects.toThrow(/no such table/);
      expect(settings(own)).toEqual({ synchronous: 3, walAutocheckpoint: 0, busyTimeout: 1234 });
    } finally {
      own.close();
    }
  });
});
