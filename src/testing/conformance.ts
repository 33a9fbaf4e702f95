import assert from 'node:assert/strict';
import { newToken, storageKey } from '../crypto/ids.js';
import type { SessionMeta, SessionStore, StoredSession } from '../stores/store.js';
import { assertEntries, assertIncludes, defineSuite, type TestRunner } from './runner.js';

/** What the suite needs to test a store: a fresh instance, and a way to dispose of it. */
export interface StoreUnderTest {
  store: SessionStore;
  /** Called once after the suite (close clients, drop tables, remove directories). */
  cleanup?: () => Promise<void>;
}

export interface ConformanceOptions {
  /**
   * Your test runner's `describe`, `it` and once-per-suite hooks (see {@link TestRunner}).
   * Needed unless the runner puts them on `globalThis` (jest, mocha, vitest with `globals: true`).
   */
  runner?: TestRunner;
  /** Skip the whole suite with this message (e.g. the server is not reachable on a laptop). */
  skip?: string | false;
  /** Extra milliseconds to wait for backend expiry (memcached has 1-second TTL granularity). */
  expiryGraceMs?: number;
}

const key = () => storageKey(newToken());
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const HOUR = 3_600_000;

function meta(extra: Partial<SessionMeta> = {}): SessionMeta {
  const now = Date.now();
  return { createdAt: now, lastSeenAt: now, deadline: now + HOUR, ...extra };
}

function record(values: Record<string, string>, extra: Partial<SessionMeta> = {}): StoredSession {
  return { meta: meta(extra), values };
}

/**
 * The store contract as tests: every store of sessionflow passes it against its real backend,
 * and a custom store can be checked with one call. It imports no test runner: it registers its
 * cases with the functions you pass in `options.runner`, and checks with `node:assert`.
 *
 * @example vitest
 * import { afterAll, beforeAll, describe, it } from 'vitest';
 * import { describeStoreConformance } from 'sessionflow/testing';
 *
 * describeStoreConformance('MyStore', async () => ({ store: new MyStore(client) }), {
 *   runner: { describe, it, beforeAll, afterAll },
 * });
 *
 * @example node:test (`node --test`)
 * import { after, before, describe, it } from 'node:test';
 * import { describeStoreConformance } from 'sessionflow/testing';
 *
 * describeStoreConformance('MyStore', async () => ({ store: new MyStore(client) }), {
 *   runner: { describe, it, before, after },
 * });
 */
export function describeStoreConformance(
  name: string,
  factory: () => Promise<StoreUnderTest>,
  options: ConformanceOptions = {},
): void {
  const title = `SM-64 store conformance: ${name}`;
  defineSuite('describeStoreConformance', title, options, ({ it, beforeAll, afterAll }) => {
    let sut: StoreUnderTest | undefined;
    let store: SessionStore;
    const grace = options.expiryGraceMs ?? 0;

    beforeAll(async () => {
      sut = await factory();
      store = sut.store;
    });
    afterAll(async () => {
      await sut?.cleanup?.();
    });

    it('SM-12: loading an unknown key returns null and creates nothing', async () => {
      const k = key();
      assert.equal(await store.load(k), null);
      assert.equal(await store.commit(k, { set: { 'v:a': '1' }, unset: [] }, HOUR), 'gone');
      assert.equal(await store.load(k), null);
    });

    it('round-trips metadata and values exactly, including awkward field names and text', async () => {
      const k = key();
      const values = {
        'v:plain': '"hello"',
        'v:__proto__': '{"polluted":true}',
        'b:auth:constructor': '42',
        's:flash': '{"success":["Welcome back!"]}',
        'v:unicode': JSON.stringify('zażółć 🍪 \u2028 "quoted" \\ back'),
      };
      const rec = record(values, { userId: 'u-1', authAt: 123 });
      assert.equal(await store.create(k, rec, HOUR), true);
      const loaded = await store.load(k);
      assertEntries(loaded?.meta, rec.meta);
      assertEntries({ ...loaded?.values }, values);
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
    });

    it('create never overwrites an existing session', async () => {
      const k = key();
      assert.equal(await store.create(k, record({ 'v:a': '1' }), HOUR), true);
      assert.equal(await store.create(k, record({ 'v:a': '2' }), HOUR), false);
      assert.equal((await store.load(k))?.values['v:a'], '1');
    });

    it('commit merges set and unset key by key and updates metadata', async () => {
      const k = key();
      await store.create(k, record({ 'v:a': '1', 'v:b': '2', 'v:c': '3' }), HOUR);
      const result = await store.commit(
        k,
        { set: { 'v:b': '20', 'v:d': '4' }, unset: ['v:c'], meta: { lastSeenAt: 999, userId: 'u-2' } },
        HOUR,
      );
      assert.equal(result, 'ok');
      const loaded = await store.load(k);
      assertEntries({ ...loaded?.values }, { 'v:a': '1', 'v:b': '20', 'v:d': '4' });
      assert.equal(loaded?.meta.lastSeenAt, 999);
      assert.equal(loaded?.meta.userId, 'u-2');
    });

    it('touch updates metadata and keeps values; touching a missing session is "gone"', async () => {
      if (!store.touch) return;
      const k = key();
      await store.create(k, record({ 'v:a': '1' }), HOUR);
      assert.equal(await store.touch(k, { lastSeenAt: 4242 }, HOUR), 'ok');
      const loaded = await store.load(k);
      assert.equal(loaded?.meta.lastSeenAt, 4242);
      assert.equal(loaded?.values['v:a'], '1');
      assert.equal(await store.touch(key(), { lastSeenAt: 1 }, HOUR), 'gone');
    });

    it('SM-35: destroy wins; a commit after destroy writes nothing and does not resurrect', async () => {
      const k = key();
      await store.create(k, record({ 'v:a': '1' }), HOUR);
      const snapshot = await store.load(k);
      assert.notEqual(snapshot, null);
      await store.destroy(k);
      await store.destroy(k); // idempotent
      assert.equal(await store.commit(k, { set: { 'v:b': '2' }, unset: [] }, HOUR), 'gone');
      assert.equal(await store.commit(k, { set: {}, unset: [] }, HOUR, { handle: 'h0' }), 'gone');
      if (store.touch) assert.equal(await store.touch(k, { lastSeenAt: Date.now() }, HOUR), 'gone');
      assert.equal(await store.load(k), null);
    });

    it('SM-58: 20 parallel commits setting different keys all survive', async () => {
      const k = key();
      await store.create(k, record({ 'v:base': '0' }), HOUR);
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          store.commit(k, { set: { [`b:cart:item${i}`]: String(i) }, unset: [] }, HOUR),
        ),
      );
      assert.equal(
        results.every((r) => r === 'ok'),
        true,
      );
      const loaded = await store.load(k);
      for (let i = 0; i < 20; i++) assert.equal(loaded?.values[`b:cart:item${i}`], String(i));
      assert.equal(loaded?.values['v:base'], '0');
    });

    it('a key removed by one request stays removed while another request writes a different key', async () => {
      const k = key();
      await store.create(k, record({ 'v:gone': '1', 'v:kept': '1' }), HOUR);
      await Promise.all([
        store.commit(k, { set: {}, unset: ['v:gone'] }, HOUR),
        store.commit(k, { set: { 'v:new': '2' }, unset: [] }, HOUR),
      ]);
      const loaded = await store.load(k);
      assert.equal(loaded?.values['v:gone'], undefined);
      assert.equal(loaded?.values['v:new'], '2');
      assert.equal(loaded?.values['v:kept'], '1');
    });

    it('SM-35: logout racing a slow writer: the writer finds the session gone', async () => {
      const k = key();
      await store.create(k, record({ 'v:a': '1' }), HOUR);
      const slow = (async () => {
        await store.load(k);
        await sleep(30);
        return store.commit(k, { set: { 'v:late': 'x' }, unset: [] }, HOUR);
      })();
      await store.destroy(k);
      assert.equal(await slow, 'gone');
      assert.equal(await store.load(k), null);
    });

    it('ID change: a commit guarded by the current handle moves the record to a new handle', async () => {
      const k = key();
      await store.create(k, record({ 'v:a': '1' }, { h: 'h0', userId: 'u-g' }), HOUR);
      const rotate = { set: { 'v:b': '2' }, unset: [], meta: { h: 'h1', ph: 'h0', phUntil: 5, idAt: 7 } };
      assert.equal(await store.commit(k, rotate, HOUR, { handle: 'h0' }), 'ok');
      const loaded = await store.load(k);
      assertIncludes(loaded?.meta, { h: 'h1', ph: 'h0', phUntil: 5, idAt: 7, userId: 'u-g' });
      assertEntries({ ...loaded?.values }, { 'v:a': '1', 'v:b': '2' });
    });

    it('ID change: a guard that does not hold writes nothing and answers "conflict"', async () => {
      const k = key();
      await store.create(k, record({ 'v:a': '1' }, { h: 'h1', userId: 'u-g' }), HOUR);
      const delta = { set: { 'v:x': '9' }, unset: ['v:a'], meta: { h: 'h2', lastSeenAt: 1 } };
      assert.equal(await store.commit(k, delta, HOUR, { handle: 'h0' }), 'conflict');
      assert.equal(await store.commit(k, delta, HOUR, { userId: null }), 'conflict');
      assert.equal(await store.commit(k, delta, HOUR, { userId: 'u-other' }), 'conflict');
      const loaded = await store.load(k);
      assert.equal(loaded?.meta.h, 'h1');
      assert.notEqual(loaded?.meta.lastSeenAt, 1);
      assertEntries({ ...loaded?.values }, { 'v:a': '1' });
      assert.equal(await store.commit(k, { set: { 'v:y': '1' }, unset: [] }, HOUR, { userId: 'u-g' }), 'ok');
      const anon = key();
      await store.create(anon, record({}, { h: 'h0' }), HOUR);
      assert.equal(
        await store.commit(anon, { set: { 'v:y': '1' }, unset: [] }, HOUR, { userId: null }),
        'ok',
      );
      assert.equal(await store.commit(anon, { set: {}, unset: [] }, HOUR, { userId: 'u-g' }), 'conflict');
    });

    it('ID change: a guarded commit after destroy is "gone" and creates nothing', async () => {
      const k = key();
      await store.create(k, record({ 'v:a': '1' }, { h: 'h0' }), HOUR);
      await store.destroy(k);
      assert.equal(
        await store.commit(k, { set: { 'v:a': '2' }, unset: [], meta: { h: 'h1' } }, HOUR, { handle: 'h0' }),
        'gone',
      );
      assert.equal(await store.load(k), null);
    });

    it('retain: every value not retained or set is dropped in the same step (login)', async () => {
      const k = key();
      await store.create(
        k,
        record({ 'v:a': '1', 'v:keep': '2', 's:flash': '3', 'b:x:y': '4' }, { h: 'h0' }),
        HOUR,
      );
      const delta = {
        set: { 'v:new': '5', 's:csrf': '6' },
        unset: [],
        retain: ['v:keep', 's:flash', 'v:missing'],
        meta: { h: 'h1', userId: 'u-r', authAt: 11 },
      };
      assert.equal(await store.commit(k, delta, HOUR, { handle: 'h0' }), 'ok');
      const loaded = await store.load(k);
      assertEntries({ ...loaded?.values }, { 'v:keep': '2', 's:flash': '3', 'v:new': '5', 's:csrf': '6' });
      assertIncludes(loaded?.meta, { h: 'h1', userId: 'u-r', authAt: 11 });
      if (store.capabilities.listByUser && store.sessionsOf) {
        assert.deepEqual(
          (await store.sessionsOf('u-r')).map((s) => s.key),
          [k],
        );
      }
    });

    it('a metadata field set to undefined is removed', async () => {
      const k = key();
      await store.create(k, record({}, { h: 'h0', ph: 'old', phUntil: 3 }), HOUR);
      const delta = { set: {}, unset: [], meta: { h: 'h1', ph: 'h0', phUntil: undefined } };
      assert.equal(await store.commit(k, delta, HOUR, { handle: 'h0' }), 'ok');
      const meta = (await store.load(k))?.meta;
      assert.equal(meta?.h, 'h1');
      assert.equal(meta?.ph, 'h0');
      assert.equal(meta && 'phUntil' in meta, false);
    });

    it('ID change race: of 20 parallel changes from one handle exactly one wins, with every write kept', async () => {
      const k = key();
      await store.create(k, record({ 'v:base': '0' }, { h: 'h0' }), HOUR);
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          i % 2 === 0
            ? store.commit(k, { set: { [`v:r${i}`]: '1' }, unset: [], meta: { h: `h-${i}` } }, HOUR, {
                handle: 'h0',
              })
            : store.commit(k, { set: { [`v:w${i}`]: '1' }, unset: [] }, HOUR, { userId: null }),
        ),
      );
      const rotations = results.filter((_, i) => i % 2 === 0);
      assert.equal(rotations.filter((r) => r === 'ok').length, 1);
      assert.equal(rotations.filter((r) => r === 'conflict').length, 9);
      assert.equal(
        results.filter((_, i) => i % 2 === 1).every((r) => r === 'ok'),
        true,
      );
      const loaded = await store.load(k);
      const winner = rotations.indexOf('ok') * 2;
      assert.equal(loaded?.meta.h, `h-${winner}`);
      assert.equal(loaded?.values[`v:r${winner}`], '1');
      for (let i = 1; i < 20; i += 2) assert.equal(loaded?.values[`v:w${i}`], '1');
    });

    it('ID change racing destroy: afterwards the record is gone whatever the order', async () => {
      for (let trial = 0; trial < 20; trial++) {
        const k = key();
        await store.create(k, record({ 'v:a': '1' }, { h: 'h0' }), HOUR);
        const [result] = await Promise.all([
          store.commit(k, { set: { 'v:b': '1' }, unset: [], meta: { h: 'h1' } }, HOUR, { handle: 'h0' }),
          store.destroy(k),
        ]);
        assert.ok(['ok', 'gone'].includes(result), `commit answered ${result}, expected ok or gone`);
        assert.equal(await store.load(k), null);
      }
    });

    it("revokeUser (stores that cannot list): the user's sessions are dead, except the one kept", async () => {
      if (!store.revokeUser) return;
      const user = `u-${newToken().slice(0, 8)}`;
      const a = key();
      const b = key();
      const kept = key();
      const other = key();
      await store.create(a, record({}, { userId: user, authAt: 1 }), HOUR);
      await store.create(b, record({}, { userId: user, authAt: 2 }), HOUR);
      await store.create(kept, record({}, { userId: user, authAt: 3 }), HOUR);
      await store.create(other, record({}, { userId: `${user}-x`, authAt: 3 }), HOUR);
      await store.revokeUser(user, kept);
      assert.equal(await store.load(a), null);
      assert.equal(await store.load(b), null);
      assert.equal(await store.commit(b, { set: { 'v:z': '1' }, unset: [] }, HOUR), 'gone');
      assert.notEqual(await store.load(kept), null);
      assert.notEqual(await store.load(other), null);
      // A session that logs in as the user afterwards is alive.
      const later = key();
      await store.create(later, record({}, { h: 'h0' }), HOUR);
      assert.equal(
        await store.commit(later, { set: {}, unset: [], meta: { userId: user, authAt: 9 } }, HOUR),
        'ok',
      );
      assert.notEqual(await store.load(later), null);
      // A later revocation without an exception takes the kept one too.
      await store.revokeUser(user);
      assert.equal(await store.load(kept), null);
      assert.equal(await store.load(later), null);
    });

    it('SM-23: regenerate (create new + destroy old) leaves exactly one live record with the data', async () => {
      const oldKey = key();
      const newKey = key();
      await store.create(oldKey, record({ 'v:a': '1' }, { userId: 'u-regen' }), HOUR);
      const loaded = (await store.load(oldKey))!;
      assert.equal(
        await store.create(newKey, { meta: loaded.meta, values: { ...loaded.values, 'v:b': '2' } }, HOUR),
        true,
      );
      await store.destroy(oldKey);
      assert.equal(await store.load(oldKey), null);
      assertEntries({ ...(await store.load(newKey))?.values }, { 'v:a': '1', 'v:b': '2' });
      if (store.capabilities.listByUser && store.sessionsOf) {
        const listed = (await store.sessionsOf('u-regen')).map((s) => s.key);
        assert.deepEqual(listed, [newKey]);
      }
    });

    it('SM-28: an expired record is never returned, and cannot be committed to', async () => {
      const k = key();
      await store.create(k, record({ 'v:a': '1' }), 40);
      assert.notEqual(await store.load(k), null);
      await sleep(120 + grace);
      assert.equal(await store.load(k), null);
      assert.equal(await store.commit(k, { set: { 'v:b': '1' }, unset: [] }, HOUR), 'gone');
      assert.equal(await store.load(k), null);
    });

    it('SM-29: a non-positive TTL removes the session instead of keeping it alive', async () => {
      const k = key();
      await store.create(k, record({ 'v:a': '1' }), HOUR);
      assert.equal(await store.commit(k, { set: { 'v:b': '1' }, unset: [] }, 0), 'gone');
      assert.equal(await store.load(k), null);
      const k2 = key();
      await store.create(k2, record({ 'v:a': '1' }), HOUR);
      if (store.touch) assert.equal(await store.touch(k2, { lastSeenAt: 1 }, -5), 'gone');
      else assert.equal(await store.commit(k2, { set: {}, unset: [], meta: { lastSeenAt: 1 } }, -5), 'gone');
      assert.equal(await store.load(k2), null);
    });

    it('stores a 100 KB value intact', async () => {
      const k = key();
      const big = JSON.stringify('x'.repeat(100_000));
      await store.create(k, record({ 'v:big': big }), HOUR);
      assert.equal((await store.load(k))?.values['v:big'], big);
    });

    it('SM-37: lists sessions by user, following commits, destroy and expiry (if capable)', async () => {
      if (!store.capabilities.listByUser || !store.sessionsOf) {
        assert.equal(store.sessionsOf, undefined);
        return;
      }
      const user = `u-${newToken().slice(0, 8)}`;
      const a = key();
      const b = key();
      const c = key();
      await store.create(a, record({}, { userId: user }), HOUR);
      await store.create(b, record({}, { userId: user }), HOUR);
      await store.create(c, record({}), HOUR);
      assert.equal(await store.commit(c, { set: {}, unset: [], meta: { userId: user } }, HOUR), 'ok');
      assert.deepEqual((await store.sessionsOf(user)).map((s) => s.key).sort(), [a, b, c].sort());
      await store.destroy(b);
      const listed = await store.sessionsOf(user);
      assert.deepEqual(listed.map((s) => s.key).sort(), [a, c].sort());
      assert.equal(listed.find((s) => s.key === a)?.meta.userId, user);
      const d = key();
      await store.create(d, record({}, { userId: user }), 40);
      await sleep(120 + grace);
      assert.deepEqual((await store.sessionsOf(user)).map((s) => s.key).sort(), [a, c].sort());
    });

    it('gc removes expired sessions and keeps live ones (if capable)', async () => {
      if (!store.capabilities.gc || !store.gc) return;
      const expired = key();
      const live = key();
      await store.create(expired, record({ 'v:a': '1' }), 40);
      await store.create(live, record({ 'v:a': '2' }), HOUR);
      await sleep(120 + grace);
      const removed = await store.gc();
      const atLeast = store.capabilities.nativeTtl ? 0 : 1;
      assert.ok(removed >= atLeast, `gc() reported ${removed} removed, expected at least ${atLeast}`);
      assert.equal(await store.load(expired), null);
      assert.equal((await store.load(live))?.values['v:a'], '2');
    });

    it('gc racing the application: creates over expired keys, commits, new sessions and destroys made while it runs all hold (if capable)', async () => {
      if (!store.capabilities.gc || !store.gc) return;
      // Several trials, each a different interleaving of gc's steps with the writes.
      for (let trial = 0; trial < 4; trial++) {
        // Leftovers of earlier cases would count in gc's answer below.
        await store.gc();
        const expired = Array.from({ length: 40 }, () => key());
        const live = Array.from({ length: 12 }, () => key());
        for (const k of expired) await store.create(k, record({ 'v:n': 'old' }), 40);
        for (const k of live) await store.create(k, record({ 'v:n': '0' }), HOUR);
        await sleep(120 + grace);
        /** What each key must hold afterwards (a value, or null: no session). */
        const expected = new Map<string, string | null>(live.map((k) => [k, '0']));
        for (const k of expired) expected.set(k, null);
        const claimed = new Set<string>();
        const destroyed = new Set<string>();
        let gcDone = false;
        const gc = store.gc().finally(() => {
          gcDone = true;
        });
        // Each worker writes its own live sessions (one request after another on each), so
        // that the value a session must hold last is the one its worker wrote last.
        const worker = async (w: number) => {
          const mine = live.filter((_, i) => i % 3 === w - 1);
          for (let round = 0; !gcDone || round < 4; round++) {
            const roll = Math.random();
            if (roll < 0.35) {
              const k = mine[Math.floor(Math.random() * mine.length)]!;
              const value = `${w}.${round}`;
              if (destroyed.has(k)) continue;
              const result = await store.commit(k, { set: { 'v:n': value }, unset: [] }, HOUR);
              assert.equal(result, 'ok', 'a commit to a live session during gc');
              expected.set(k, value);
            } else if (roll < 0.65) {
              const k = expired[Math.floor(Math.random() * expired.length)]!;
              if (claimed.has(k)) continue;
              claimed.add(k);
              // A store may take the expired key over or refuse it; never half of either.
              if (await store.create(k, record({ 'v:n': `new${w}` }), HOUR)) expected.set(k, `new${w}`);
            } else if (roll < 0.85) {
              const k = key();
              assert.equal(await store.create(k, record({ 'v:n': 'fresh' }), HOUR), true);
              expected.set(k, 'fresh');
            } else {
              const k = mine[Math.floor(Math.random() * mine.length)]!;
              destroyed.add(k);
              expected.set(k, null);
              await store.destroy(k);
            }
            await new Promise<void>((resolve) => setImmediate(resolve));
          }
        };
        await Promise.all([gc, worker(1), worker(2), worker(3)]);
        const removed = await gc;
        assert.ok(removed <= expired.length, `gc() reported ${removed} removed of ${expired.length} expired`);
        for (const [k, value] of expected) {
          const loaded = await store.load(k);
          if (value === null) assert.equal(loaded, null, 'an expired or destroyed session came back');
          else assert.equal(loaded?.values['v:n'], value, 'a session written during gc lost its last write');
        }
      }
    });
  });
}
