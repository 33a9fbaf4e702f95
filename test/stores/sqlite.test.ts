import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { SqliteStore, sqliteSchema } from '../../src/stores/sqlite.js';
import type { StoredSession } from '../../src/stores/store.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';

const dir = await mkdtemp(join(tmpdir(), 'sessionflow-sqlite-'));
const db = new Database(join(dir, 'sessions.db'));
db.pragma('journal_mode = WAL');
afterAll(async () => {
  db.close();
  await rm(dir, { recursive: true, force: true });
});

const uniqueTable = () => `sf_test_${randomBytes(5).toString('hex')}`;
const dropTable = (table: string) => db.exec(`DROP TABLE IF EXISTS "${table}"`);

describeStoreConformance('SqliteStore', async () => {
  const table = uniqueTable();
  const store = new SqliteStore(db, { table });
  await store.migrate();
  return {
    store,
    cleanup: async () => {
      dropTable(table);
    },
  };
});

const HOUR = 3_600_000;
const key = () => storageKey(newToken());
const rec = (values: Record<string, string> = {}, userId?: string): StoredSession => ({
  meta: { createdAt: 1, lastSeenAt: 1, deadline: 9e15, ...(userId ? { userId } : {}) },
  values,
});

/** Records the size of every gc batch, through the store's own statement. */
class BatchCountingStore extends SqliteStore {
  readonly batches: number[] = [];
  protected override deleteExpiredBatch(now: number, limit: number): number {
    const n = super.deleteExpiredBatch(now, limit);
    this.batches.push(n);
    return n;
  }
}

describe('SqliteStore specifics', () => {
  const table = uniqueTable();
  let clock = Date.now();
  const store = new SqliteStore(db, { table, now: () => clock });
  const rows = () => (db.prepare(`SELECT count(*) AS n FROM "${table}"`).get() as { n: number }).n;

  beforeAll(() => store.migrate());
  afterAll(() => dropTable(table));

  it('SM-63, SM-13: a key carrying SQL is only data: load null, commit gone, nothing deleted', async () => {
    await store.create(key(), rec({ 'v:a': '1' }), HOUR);
    await store.create(key(), rec({ 'v:a': '2' }), HOUR);
    const before = rows();
    const injection = "' OR '1'='1";
    expect(await store.load(injection)).toBeNull();
    expect(await store.commit(injection, { set: { 'v:x': '1' }, unset: [] }, HOUR)).toBe('gone');
    await store.destroy(injection);
    await store.destroy(`x" OR 1=1; DROP TABLE "${table}"; --`);
    expect(rows()).toBe(before);
    // Stored as a key of its own, it round-trips like any other key.
    expect(await store.create(injection, rec({ 'v:a': 'inj' }), HOUR)).toBe(true);
    expect((await store.load(injection))?.values['v:a']).toBe('inj');
    await store.destroy(injection);
    expect(rows()).toBe(before);
  });

  it('SM-63: the table name is validated, since identifiers cannot be parameters', () => {
    for (const bad of ['x"; DROP TABLE y; --', 'a b', '1abc', 'a'.repeat(64), '']) {
      expect(() => new SqliteStore(db, { table: bad })).toThrow(
        expect.objectContaining({ code: 'INVALID_OPTION' }),
      );
      expect(() => sqliteSchema(bad)).toThrow(/table name/);
    }
  });

  it('SM-28: an expired row is never returned, even before gc removes it', async () => {
    const k = key();
    await store.create(k, rec({ 'v:a': '1' }, 'u-expiry'), 1_000);
    clock += 1_001;
    const before = rows();
    expect(await store.sessionsOf('u-expiry')).toEqual([]);
    expect(rows()).toBe(before); // still on disk: the read predicate alone hid it
    expect(await store.load(k)).toBeNull();
    expect(rows()).toBe(before - 1); // and a load that meets it removes it
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
    const before = rows();
    expect(await store.commit(k, { set: { 'v:a': '2' }, unset: [] }, HOUR)).toBe('gone');
    expect(await store.touch(k, { lastSeenAt: clock }, HOUR)).toBe('gone');
    expect(rows()).toBe(before);
    expect(db.prepare(`SELECT 1 FROM "${table}" WHERE id = ?`).get(k)).toBeUndefined();
  });

  it('SM-63: gc removes only expired rows, 500 per statement, until none is left', async () => {
    const gcTable = uniqueTable();
    const counting = new BatchCountingStore(db, { table: gcTable, now: () => clock });
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
    expect(counting.batches).toEqual([500, 500, 200]);
    for (const k of live) expect((await counting.load(k))?.values['v:live']).toBe('1');
    expect(await counting.gc(clock + 1_001)).toBe(0);
    dropTable(gcTable);
  });

  it('SM-37: user_id is indexed (partial, anonymous rows left out) and the lookup uses it', async () => {
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

  it('merges awkward keys and user ids exactly: quotes, backslashes, dots, unicode, control characters', async () => {
    const k = key();
    const odd = ['we"ird\\key', 'a.b', '$[0]', '*', 'é🍪', 'tab\tnl\n', '\u2028', ' ', ''];
    await store.create(
      k,
      rec({ keep: '1', ...Object.fromEntries(odd.map((o) => [o, 'v'])) }, 'u"é\\🍪'),
      HOUR,
    );
    expect(await store.commit(k, { set: { [odd[0]!]: 'changed' }, unset: odd.slice(1) }, HOUR)).toBe('ok');
    expect({ ...(await store.load(k))?.values }).toEqual({ keep: '1', [odd[0]!]: 'changed' });
    expect((await store.sessionsOf('u"é\\🍪')).map((s) => s.key)).toEqual([k]);
  });

  it('migrate is idempotent, and the exported DDL serves users who run migrations themselves', async () => {
    await store.migrate();
    await Promise.all([store.migrate(), store.migrate()]);
    const own = uniqueTable();
    db.exec(sqliteSchema(own));
    db.exec(sqliteSchema(own));
    const mine = new SqliteStore(db, { table: own });
    const k = key();
    expect(await mine.create(k, rec({ 'v:a': '1' }), HOUR)).toBe(true);
    expect((await mine.load(k))?.values['v:a']).toBe('1');
    dropTable(own);
  });

  it('a driver error is thrown, never taken for a missing session', async () => {
    const missing = new SqliteStore(db, { table: uniqueTable() });
    await expect(missing.load(key())).rejects.toThrow(/no such table/);
    await expect(missing.commit(key(), { set: {}, unset: [] }, HOUR)).rejects.toThrow(/no such table/);
  });
});
