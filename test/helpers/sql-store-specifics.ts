/**
 * What the PostgreSQL, MySQL/MariaDB and SQLite suites share: the SM-64 conformance registration
 * and the SQL-specific tests (SM-63 injection, table names, expiry, the exported DDL) that differ
 * only in the engine. Each engine file supplies its connection, a few raw statements and the input
 * hostile to its dialect, and keeps its engine-only tests in its own file (passed as
 * `engineOnly`, so they stay in the same `<Store> specifics` suite).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import type { SqlSessionStore, SqlStoreOptions } from '../../src/stores/sql-common.js';
import type { StoredSession } from '../../src/stores/store.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';

export const HOUR = 3_600_000;
export const key = () => storageKey(newToken());
export const rec = (values: Record<string, string> = {}, userId?: string): StoredSession => ({
  meta: { createdAt: 1, lastSeenAt: 1, deadline: 9e15, ...(userId ? { userId } : {}) },
  values,
});
export const uniqueTable = () => `sf_test_${randomBytes(5).toString('hex')}`;

type Awaitable<T> = T | Promise<T>;

/** Builds a store of the engine on the suite's connection. */
export type SqlStoreFactory<C, S extends SqlSessionStore> = (conn: C, options: SqlStoreOptions) => S;

/** What differs between the SQL engines. */
export interface SqlEngineHooks<C, S extends SqlSessionStore = SqlSessionStore> {
  /** Why the suites are skipped (from `serverAvailable`), or false. */
  skip?: string | false;
  /** Opens what the stores of one suite share: a pool, a database handle. */
  connect(): Awaitable<C>;
  /** Ends what `connect` opened. */
  disconnect(conn: C): Awaitable<void>;
  /** The dialect's identifier quote. */
  quote: '"' | '`';
  /** Runs one statement without parameters (the exported DDL, DROP TABLE). */
  exec(conn: C, sql: string): Awaitable<unknown>;
  /** Rows in `table`, expired ones included: raw SQL, past the store. */
  countRows(conn: C, table: string): Awaitable<number>;
  /** Rows of `table` whose id is `id`, expired ones included. */
  countId(conn: C, table: string, id: string): Awaitable<number>;
  /** The exported DDL (`postgresSchema`, `mysqlSchema`, `sqliteSchema`). */
  schema(table: string): string;
  /** Keys that try to break out of this dialect's string literal, besides `' OR '1'='1`. */
  hostileKeys(table: string): string[];
  /** The end of the awkward-keys test name, and the field names it merges. */
  awkwardKeys: { title: string; keys: string[] };
  /** The driver's message for a table that does not exist. */
  missingTable: RegExp;
  /**
   * The migrate test's name and the migrations it runs at once. By default (the server engines):
   * four instances migrate a fresh table together.
   */
  migrate?: { title: string; concurrently(suite: SqlSuite<C, S>): Promise<unknown> };
  /** Which operations the engine sends in batches under load (none: SQLite, whose reads cost no round trip). */
  batches?: { loads: boolean; commits: boolean; creates: boolean };
}

/** The state of one `<Store> specifics` suite, for the engine-only tests. */
export interface SqlSuite<C, S extends SqlSessionStore> {
  /** What `connect` opened (set before the tests run). */
  readonly conn: C;
  /** A migrated store on `table`, on the suite's clock (set before the tests run). */
  readonly store: S;
  readonly table: string;
  /** The clock of `store`, in milliseconds; tests move it forward. */
  clock: number;
  /** Rows in `table` (default: the suite's table), expired ones included. */
  rows(table?: string): Promise<number>;
  /** A further table of one test, dropped after the suite even if that test fails. */
  scratchTable(name?: string): string;
}

const dropTable = <C>(engine: Pick<SqlEngineHooks<C>, 'exec' | 'quote'>, conn: C, table: string) =>
  engine.exec(conn, `DROP TABLE IF EXISTS ${engine.quote}${table}${engine.quote}`);

/** The SM-64 conformance suite on a fresh table of the engine. */
export function describeSqlStoreConformance<C, S extends SqlSessionStore>(
  name: string,
  factory: SqlStoreFactory<C, S>,
  engine: SqlEngineHooks<C, S>,
): void {
  describeStoreConformance(
    name,
    async () => {
      const conn = await engine.connect();
      const table = uniqueTable();
      const store = factory(conn, { table });
      await store.migrate();
      return {
        store,
        cleanup: async () => {
          await dropTable(engine, conn, table);
          await engine.disconnect(conn);
        },
      };
    },
    { skip: engine.skip, runner: { describe, it, beforeAll, afterAll } },
  );
}

/**
 * The `<name> specifics` suite: the tests every SQL engine shares, then `engineOnly`, all against
 * one migrated table whose store runs on a clock the tests move.
 */
export function describeSqlStoreSpecifics<C, S extends SqlSessionStore>(
  name: string,
  factory: SqlStoreFactory<C, S>,
  engine: SqlEngineHooks<C, S>,
  engineOnly: (suite: SqlSuite<C, S>) => void = () => {},
): void {
  const skip = engine.skip ?? false;
  describe.skipIf(skip)(`${name} specifics${skip ? ` (skipped: ${skip})` : ''}`, () => {
    const table = uniqueTable();
    const scratch: string[] = [];
    let conn: C;
    let store: S;
    const suite: SqlSuite<C, S> = {
      get conn() {
        return conn;
      },
      get store() {
        return store;
      },
      table,
      clock: Date.now(),
      rows: async (t = table) => engine.countRows(conn, t),
      scratchTable: (t = uniqueTable()) => {
        scratch.push(t);
        return t;
      },
    };
    const { rows, scratchTable } = suite;
    const migrate = engine.migrate ?? {
      title: 'migrate is idempotent, also when several instances start at once, and the DDL is exported',
      concurrently: async () => {
        const fresh = scratchTable();
        const instances = Array.from({ length: 4 }, () => factory(conn, { table: fresh }));
        await Promise.all(instances.map((s) => s.migrate()));
      },
    };

    beforeAll(async () => {
      conn = await engine.connect();
      store = factory(conn, { table, now: () => suite.clock });
      await store.migrate();
    });
    afterAll(async () => {
      for (const t of [table, ...scratch]) await dropTable(engine, conn, t);
      await engine.disconnect(conn);
    });

    it('SM-63, SM-13: a key that is not a storage key is refused (INVALID_KEY) before any I/O', async () => {
      const invalid = expect.objectContaining({ code: 'INVALID_KEY' });
      const bad = ["' OR '1'='1", ...engine.hostileKeys(table), 'żółw', '', ' ', `${key()} `, 'a'.repeat(15)];
      // On a table that does not exist: any query would fail with the driver's error instead.
      const missing = factory(conn, { table: uniqueTable() });
      for (const k of [...bad, 42 as unknown as string]) {
        await expect(missing.load(k)).rejects.toThrow(invalid);
        await expect(missing.create(k, rec(), HOUR)).rejects.toThrow(invalid);
        await expect(missing.commit(k, { set: { 'v:x': '1' }, unset: [] }, HOUR)).rejects.toThrow(invalid);
        await expect(missing.commit(k, { set: {}, unset: [] }, 0, { handle: 'h' })).rejects.toThrow(invalid);
        await expect(missing.touch(k, { lastSeenAt: 1 }, HOUR)).rejects.toThrow(invalid);
        await expect(missing.destroy(k)).rejects.toThrow(invalid);
      }
    });

    it('SM-63: SQL in a user id, a field name or a handle is only data: nothing matched, nothing deleted', async () => {
      const k = key();
      await store.create(k, rec({ 'v:a': '1' }, 'u-sql'), HOUR);
      await store.create(key(), rec({ 'v:a': '2' }), HOUR);
      const before = await rows();
      for (const hostile of ["' OR '1'='1", ...engine.hostileKeys(table)]) {
        expect(await store.sessionsOf(hostile)).toEqual([]);
        expect(await store.commit(k, { set: {}, unset: [] }, HOUR, { handle: hostile })).toBe('conflict');
        expect(await store.commit(k, { set: {}, unset: [] }, HOUR, { userId: hostile })).toBe('conflict');
        expect(await store.commit(k, { set: {}, unset: [] }, 0, { userId: hostile })).toBe('conflict');
        expect(await store.commit(k, { set: { [hostile]: hostile }, unset: [] }, HOUR)).toBe('ok');
      }
      expect(await rows()).toBe(before);
      const hostile = engine.hostileKeys(table)[0]!;
      expect((await store.load(k))?.values[hostile]).toBe(hostile);
      expect((await store.sessionsOf('u-sql')).map((s) => s.key)).toEqual([k]);
    });

    it('user ids are compared exactly, in sessionsOf and in the guard: trailing spaces and case count', async () => {
      const alice = `alice-${randomBytes(4).toString('hex')}`;
      const a = key();
      const b = key();
      await store.create(a, rec({}, alice), HOUR);
      await store.create(b, rec({}, alice), HOUR);
      const padded = key();
      await store.create(padded, rec({}, `${alice} `), HOUR);
      expect((await store.sessionsOf(alice)).map((s) => s.key).sort()).toEqual([a, b].sort());
      expect((await store.sessionsOf(`${alice} `)).map((s) => s.key)).toEqual([padded]);
      expect(await store.sessionsOf(`${alice}   `)).toEqual([]);
      expect(await store.sessionsOf(alice.toUpperCase())).toEqual([]);
      const write = { set: { 'v:x': '1' }, unset: [] };
      expect(await store.commit(a, write, HOUR, { userId: `${alice} ` })).toBe('conflict');
      expect(await store.commit(a, write, HOUR, { userId: `${alice}   ` })).toBe('conflict');
      expect(await store.commit(padded, write, HOUR, { userId: alice })).toBe('conflict');
      expect(await store.commit(a, write, HOUR, { userId: alice.toUpperCase() })).toBe('conflict');
      expect((await store.load(a))?.values['v:x']).toBeUndefined();
      expect(await store.commit(a, write, HOUR, { userId: alice })).toBe('ok');
      expect(await store.commit(padded, write, HOUR, { userId: `${alice} ` })).toBe('ok');
    });

    it('the handle guard is exact (case, trailing spaces) and a guarded commit with TTL <= 0 deletes only if it holds', async () => {
      const k = key();
      await store.create(k, { ...rec({ 'v:a': '1' }), meta: { ...rec().meta, h: 'AbC' } }, HOUR);
      const rotate = { set: {}, unset: [], meta: { h: 'next' } };
      for (const wrong of ['abc', 'ABC', 'AbC ', ' AbC', 'AbC\t', 'A']) {
        expect(await store.commit(k, rotate, HOUR, { handle: wrong })).toBe('conflict');
      }
      expect(await store.commit(k, rotate, 0, { handle: 'abc' })).toBe('conflict');
      expect((await store.load(k))?.meta.h).toBe('AbC');
      expect(await store.commit(k, rotate, 0, { handle: 'AbC' })).toBe('gone');
      expect(await engine.countId(conn, table, k)).toBe(0);
      expect(await store.commit(k, rotate, 0, { handle: 'AbC' })).toBe('gone');
    });

    it('retain keeps awkward field names exactly, and drops look-alikes (trailing space, case)', async () => {
      const k = key();
      const odd = engine.awkwardKeys.keys;
      const values = Object.fromEntries(odd.map((o) => [o, 'v']));
      await store.create(k, rec({ ...values, 'v:keep ': 'pad', 'V:KEEP': 'case', 'v:keep': 'kept' }), HOUR);
      const delta = { set: { 'v:new': '1' }, unset: [], retain: [...odd, 'v:keep'] };
      expect(await store.commit(k, delta, HOUR)).toBe('ok');
      expect({ ...(await store.load(k))?.values }).toEqual({ ...values, 'v:keep': 'kept', 'v:new': '1' });
      expect(await store.commit(k, { set: {}, unset: [], retain: [] }, HOUR)).toBe('ok');
      expect({ ...(await store.load(k))?.values }).toEqual({});
    });

    it('a corrupt row is treated as absent and reported, never thrown (onCorrupt, else setWarn)', async () => {
      const q = engine.quote;
      const live = suite.clock + HOUR;
      const good = JSON.stringify(rec().meta);
      const user = `u-corrupt-${randomBytes(4).toString('hex')}`;
      const corrupt: [string, string][] = [
        ['[]', '{}'],
        ['"text"', '{}'],
        ['{"createdAt":"1","lastSeenAt":1,"deadline":9}', '{}'],
        [JSON.stringify({ userId: user }), '{}'],
        [good, '{"v:a":1}'],
        [good, '{"v:a":{"nested":"x"}}'],
        [good, '["v:a"]'],
        [good, 'null'],
      ];
      const keys = corrupt.map(() => key());
      for (const [i, [meta, data]] of corrupt.entries()) {
        await engine.exec(
          conn,
          `INSERT INTO ${q}${table}${q} (id, meta, data, expires_at) VALUES ('${keys[i]}', '${meta}', '${data}', ${live})`,
        );
      }
      const reported: [string, string][] = [];
      const watched = factory(conn, {
        table,
        now: () => suite.clock,
        onCorrupt: (where, reason) => reported.push([where, reason]),
      });
      for (const k of keys) expect(await watched.load(k)).toBeNull();
      expect(await watched.sessionsOf(user)).toEqual([]);
      expect(reported).toHaveLength(keys.length + 1);
      for (const [i, k] of keys.entries()) expect(reported[i]?.[0]).toContain(k);
      expect(reported.at(-1)?.[0]).toContain(keys[3]!);
      expect(reported.every(([where, reason]) => !where.includes('{') && !reason.includes('nested'))).toBe(
        true,
      );
      // Without onCorrupt, the manager's warn gets the report once attached.
      const warned: string[] = [];
      const plain = factory(conn, { table, now: () => suite.clock });
      plain.setWarn((message) => warned.push(message));
      expect(await plain.load(keys[4]!)).toBeNull();
      expect(warned).toHaveLength(1);
      expect(warned[0]).toMatch(/Store: corrupt session record at .*treated as absent/);
      expect(warned[0]).toContain(keys[4]!);
      // The rows are left for inspection; the store answers as if they were not there.
      expect(await engine.countId(conn, table, keys[0]!)).toBe(1);
    });

    it('SM-63: the table name is validated, since identifiers cannot be parameters', () => {
      for (const bad of [`x${engine.quote}; DROP TABLE y; --`, 'a b', '1abc', 'a'.repeat(64), '']) {
        expect(() => factory(conn, { table: bad })).toThrow(
          expect.objectContaining({ code: 'INVALID_OPTION' }),
        );
        expect(() => engine.schema(bad)).toThrow(/table name/);
      }
    });

    it('SM-28: an expired row is never returned, even before gc removes it', async () => {
      const k = key();
      await store.create(k, rec({ 'v:a': '1' }, 'u-expiry'), 1_000);
      suite.clock += 1_001;
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
      suite.clock += 1_001;
      expect(await store.create(k, rec({ 'v:a': 'new' }), HOUR)).toBe(true);
      expect({ ...(await store.load(k))?.values }).toEqual({ 'v:a': 'new' });
    });

    it('SM-35: commit and touch after destroy answer gone and write no row', async () => {
      const k = key();
      await store.create(k, rec({ 'v:a': '1' }), HOUR);
      await store.destroy(k);
      const before = await rows();
      expect(await store.commit(k, { set: { 'v:a': '2' }, unset: [] }, HOUR)).toBe('gone');
      expect(await store.touch(k, { lastSeenAt: suite.clock }, HOUR)).toBe('gone');
      expect(await rows()).toBe(before);
      expect(await engine.countId(conn, table, k)).toBe(0);
    });

    it(`merges awkward keys and user ids exactly: ${engine.awkwardKeys.title}`, async () => {
      const k = key();
      const odd = engine.awkwardKeys.keys;
      await store.create(
        k,
        rec({ keep: '1', ...Object.fromEntries(odd.map((o) => [o, 'v'])) }, 'u"é\\🍪'),
        HOUR,
      );
      expect(await store.commit(k, { set: { [odd[0]!]: 'changed' }, unset: odd.slice(1) }, HOUR)).toBe('ok');
      expect({ ...(await store.load(k))?.values }).toEqual({ keep: '1', [odd[0]!]: 'changed' });
      expect((await store.sessionsOf('u"é\\🍪')).map((s) => s.key)).toEqual([k]);
    });

    it(migrate.title, async () => {
      await store.migrate();
      await migrate.concurrently(suite);
      const own = scratchTable();
      await engine.exec(conn, engine.schema(own));
      await engine.exec(conn, engine.schema(own));
      const mine = factory(conn, { table: own });
      const k = key();
      expect(await mine.create(k, rec({ 'v:a': '1' }), HOUR)).toBe(true);
      expect((await mine.load(k))?.values['v:a']).toBe('1');
    });

    it('a driver error is thrown, never taken for a missing session', async () => {
      const missing = factory(conn, { table: uniqueTable() });
      await expect(missing.load(key())).rejects.toThrow(engine.missingTable);
      await expect(missing.commit(key(), { set: {}, unset: [] }, HOUR)).rejects.toThrow(engine.missingTable);
      // Also when the operations go out in batches.
      const many = Array.from({ length: 8 }, key);
      for (const outcome of await Promise.allSettled([
        ...many.map((k) => missing.load(k)),
        ...many.map((k) => missing.commit(k, { set: { 'v:a': '1' }, unset: [] }, HOUR)),
        ...many.map((k) => missing.create(k, rec(), HOUR)),
      ])) {
        expect(outcome).toMatchObject({ status: 'rejected', reason: expect.objectContaining({}) });
        expect(String((outcome as PromiseRejectedResult).reason)).toMatch(engine.missingTable);
      }
    });

    it('many operations at once (batched under load where the engine batches) each answer as if alone', async () => {
      const n = 40;
      const user = (i: number) => (i % 3 === 0 ? `u-batch-${i}` : undefined);
      const recordOf = (i: number) => {
        const r = rec({ 'v:i': String(i) }, user(i));
        r.meta.h = `h-${i}`;
        return r;
      };
      const taken = key();
      await store.create(taken, rec({ 'v:a': 'live' }), HOUR);
      const leftover = key();
      const expired = key();
      await store.create(leftover, rec({ 'v:a': 'old' }), 1_000);
      await store.create(expired, rec({ 'v:a': 'old' }), 1_000);
      suite.clock += 1_001;

      // Creates: fresh keys, a live key (refused), an expired leftover (replaced).
      const fresh = Array.from({ length: n }, key);
      const created = await Promise.all([
        ...fresh.map((k, i) => store.create(k, recordOf(i), HOUR)),
        store.create(taken, rec({ 'v:a': 'other' }), HOUR),
        store.create(leftover, rec({ 'v:a': 'new' }), HOUR),
      ]);
      expect(created).toEqual([...fresh.map(() => true), false, true]);

      // Loads: every fresh one, the same key twice, an unknown key, an expired row (removed).
      const unknown = key();
      const loaded = await Promise.all([
        ...fresh.map((k) => store.load(k)),
        store.load(fresh[0]!),
        store.load(unknown),
        store.load(expired),
        store.load(taken),
        store.load(leftover),
      ]);
      expect(loaded.slice(0, n).map((r) => r?.values['v:i'])).toEqual(fresh.map((_, i) => String(i)));
      expect(loaded.slice(0, n).map((r) => r?.meta.userId)).toEqual(fresh.map((_, i) => user(i)));
      expect(loaded[n]).toEqual(loaded[0]);
      expect(loaded[n]).not.toBe(loaded[0]);
      expect(loaded.slice(n + 1, n + 3)).toEqual([null, null]);
      expect(loaded[n + 3]?.values['v:a']).toBe('live');
      expect(loaded[n + 4]?.values['v:a']).toBe('new');
      expect(await engine.countId(conn, table, expired)).toBe(0);

      // Commits of every shape and guard, at once: applied, refused by the guard, gone.
      const write = (k: string, i: number) => {
        const userId = user(i) ?? null;
        switch (i % 10) {
          case 0:
          case 5:
            return store.commit(k, { set: { 'v:w': 'x' }, unset: [], meta: { lastSeenAt: 7 } }, HOUR, {
              userId,
            });
          case 1:
          case 6:
            return store.commit(k, { set: { 'v:w': 'x' }, unset: [] }, HOUR, { userId: 'someone-else' });
          case 2:
          case 7:
            return store.commit(k, { set: {}, unset: [], meta: { lastSeenAt: 9 } }, HOUR);
          case 3:
          case 8:
            return store.commit(k, { set: { 'v:w': 'y' }, unset: ['v:i'] }, HOUR, { userId });
          case 4:
            return store.commit(k, { set: {}, unset: [], meta: { h: 'next' } }, HOUR, { handle: 'h-wrong' });
          default:
            return store.commit(k, { set: { 'v:w': 'z' }, unset: [], meta: { h: 'next' } }, HOUR, {
              handle: `h-${i}`,
              userId,
            });
        }
      };
      const expected = ['ok', 'conflict', 'ok', 'ok', 'conflict', 'ok', 'conflict', 'ok', 'ok', 'ok'];
      const committed = await Promise.all([
        ...fresh.map(write),
        store.commit(unknown, { set: { 'v:a': '1' }, unset: [] }, HOUR),
        store.commit(unknown, { set: { 'v:a': '1' }, unset: [] }, HOUR, { userId: null }),
        store.commit(expired, { set: {}, unset: [], meta: { lastSeenAt: 1 } }, HOUR),
      ]);
      expect(committed).toEqual([...fresh.map((_, i) => expected[i % 10]), 'gone', 'gone', 'gone']);
      const after = await Promise.all(fresh.map((k) => store.load(k)));
      for (const [i, r] of after.entries()) {
        const values = { ...r?.values };
        const meta = r?.meta;
        switch (i % 10) {
          case 0:
          case 5:
            expect([values, meta?.lastSeenAt]).toEqual([{ 'v:i': String(i), 'v:w': 'x' }, 7]);
            break;
          case 2:
          case 7:
            expect([values, meta?.lastSeenAt]).toEqual([{ 'v:i': String(i) }, 9]);
            break;
          case 3:
          case 8:
            expect(values).toEqual({ 'v:w': 'y' });
            break;
          case 9:
            expect([values, meta?.h]).toEqual([{ 'v:i': String(i), 'v:w': 'z' }, 'next']);
            break;
          default:
            expect([values, meta?.h, meta?.lastSeenAt]).toEqual([{ 'v:i': String(i) }, `h-${i}`, 1]);
        }
      }
      expect(await engine.countId(conn, table, unknown)).toBe(0);
    });

    // Only for engines that batch loads (SQLite answers each at once: nothing to batch).
    (engine.batches?.loads ? it : () => undefined)(
      '50 loads at once go out as a handful of statements, not 50',
      async () => {
        const keys = Array.from({ length: 50 }, key);
        await Promise.all(keys.map((k, i) => store.create(k, rec({ 'v:i': String(i) }), HOUR)));
        const statements = countStatements(store, ['selectLive', 'selectLiveMany']);
        const loaded = await Promise.all(keys.map((k) => store.load(k)));
        expect(loaded.map((r) => r?.values['v:i'])).toEqual(keys.map((_, i) => String(i)));
        // Two go out at once; the other 48 wait for the first to come back and go out together.
        expect(statements.selectLive! + statements.selectLiveMany!).toBeLessThanOrEqual(3);
        if (engine.batches?.commits) {
          const writes = countStatements(store, ['update', 'updateMany']);
          const results = await Promise.all(
            keys.map((k) => store.commit(k, { set: { 'v:w': '1' }, unset: [] }, HOUR)),
          );
          expect(results.every((r) => r === 'ok')).toBe(true);
          expect(writes.update).toBe(0);
          expect(writes.updateMany).toBeLessThanOrEqual(3);
        }
        if (engine.batches?.creates) {
          const inserts = countStatements(store, ['insert', 'insertMany']);
          const more = Array.from({ length: 50 }, key);
          expect(await Promise.all(more.map((k) => store.create(k, rec(), HOUR)))).toEqual(
            more.map(() => true),
          );
          expect(inserts.insert).toBe(0);
          expect(inserts.insertMany).toBeLessThanOrEqual(3);
        }
      },
    );

    engineOnly(suite);
  });
}

/**
 * Records the size of every gc batch, through the store's own statement: `gc` loops over the
 * protected `deleteExpiredBatch`, which this wraps on the one instance.
 */
export function countGcBatches(store: SqlSessionStore): number[] {
  const batches: number[] = [];
  const target = store as unknown as {
    deleteExpiredBatch(now: number, limit: number): Awaitable<number>;
  };
  const statement = target.deleteExpiredBatch.bind(store);
  target.deleteExpiredBatch = async (now, limit) => {
    const n = await statement(now, limit);
    batches.push(n);
    return n;
  };
  return batches;
}

/**
 * Counts the calls of some of the store's own statement methods (protected), wrapped on the one
 * instance: how many statements a burst of operations sent.
 */
export function countStatements(store: SqlSessionStore, names: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  const target = store as unknown as Record<string, (...args: unknown[]) => unknown>;
  for (const name of names) {
    counts[name] = 0;
    const statement = target[name]!.bind(store);
    target[name] = (...args: unknown[]) => {
      counts[name]!++;
      return statement(...args);
    };
  }
  return counts;
}
