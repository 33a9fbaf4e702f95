/**
 * What the standalone Redis and the Redis Cluster suites share: both client libraries, records,
 * unique key prefixes, and the SM-64 conformance and `RedisStore specifics` suites per client,
 * each file supplying how to connect to its deployment and how to clean up after it.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { type RedisClientLike, RedisStore } from '../../src/stores/redis.js';
import type { SessionMeta, StoredSession } from '../../src/stores/store.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';
import type { TcpProxy } from './tcp-proxy.js';

export const HOUR = 3_600_000;
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const newKey = () => storageKey(newToken());
export const uniquePrefix = (tag: string) => `sftest:${tag}:${randomBytes(6).toString('hex')}:`;

/**
 * Polls `check` every 100 ms until it returns true; fails with its last answer (a string saying
 * what is still missing, or the error it threw) after `timeoutMs`. Returns the ms it took.
 */
export async function waitFor(
  what: string,
  check: () => Promise<string | true>,
  timeoutMs: number,
): Promise<number> {
  const started = Date.now();
  let last: string | true = 'not checked';
  while (Date.now() - started < timeoutMs) {
    last = await check().catch((e: Error) => e.message);
    if (last === true) return Date.now() - started;
    await sleep(100);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}: ${last}`);
}

/** Polls `check` every 10 ms for up to 5 s, then expects it to hold. */
async function eventually(check: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 500 && !(await check()); i++) await sleep(10);
  expect(await check()).toBe(true);
}

/**
 * The offline-queue check of a node-redis store whose connections go through `proxy` (recording,
 * up): loads sent while the proxy is down answer 503 within `timeoutMs` (plus slack) and never
 * reach the server after the reconnect; a load before and after is served. `down()` and `up()`
 * tell when the store's connections have seen the proxy go down and come back.
 */
export async function expectOfflineLoadsDropped(
  store: RedisStore,
  proxy: TcpProxy,
  connections: { down: () => boolean | Promise<boolean>; up: () => boolean | Promise<boolean> },
): Promise<void> {
  const live = newKey();
  expect(await store.create(live, record({ 'v:a': '"1"' }), HOUR)).toBe(true);
  expect((await store.load(live))?.values).toEqual({ 'v:a': '"1"' });

  await proxy.down();
  await eventually(connections.down);
  const lost = Array.from({ length: 5 }, () => newKey());
  const started = performance.now();
  const answers = await Promise.allSettled(lost.map((k) => store.load(k)));
  const took = performance.now() - started;
  for (const answer of answers) {
    expect(answer).toMatchObject({ status: 'rejected', reason: { code: 'STORE_UNAVAILABLE' } });
  }
  expect(took).toBeLessThan(store.timeoutMs + 700);

  proxy.clearSent();
  await proxy.up();
  await eventually(connections.up);
  expect((await store.load(live))?.values).toEqual({ 'v:a': '"1"' });
  // The load after the reconnect went through the proxy; none of the five before it did.
  expect(proxy.sent).toContain(live);
  for (const k of lost) expect(proxy.sent).not.toContain(k);
}

export function record(values: Record<string, string>, extra: Partial<SessionMeta> = {}): StoredSession {
  const now = Date.now();
  return { meta: { createdAt: now, lastSeenAt: now, deadline: now + HOUR, ...extra }, values };
}

/** Every suite runs once per client library. */
/** The test Redis Cluster's nodes (scripts/redis-cluster.sh), or REDIS_CLUSTER_NODES. */
export const CLUSTER_NODES: { host: string; port: number }[] = (
  process.env.REDIS_CLUSTER_NODES ??
  '127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103,127.0.0.1:7104,127.0.0.1:7105,127.0.0.1:7106'
)
  .split(',')
  .map((entry) => {
    const [host = '', port = ''] = entry.trim().split(':');
    return { host, port: Number(port) };
  });

export const kinds = ['node-redis', 'ioredis'] as const;
export type Kind = (typeof kinds)[number];

export interface Connected {
  client: RedisClientLike;
  close: () => Promise<void>;
}

export type RedisStoreOptions = ConstructorParameters<typeof RedisStore>[0];

/** A Redis deployment under test. */
export interface RedisTarget {
  /** As the suite names show it: `standalone` or `Cluster`. */
  topology: string;
  /** Why the suites are skipped (from `serverAvailable`), or false. */
  skip: string | false;
  /** A connected client of `kind`. */
  connect(kind: Kind): Promise<Connected>;
  /** Deletes every key under `prefix`, through connections of its own. */
  deleteKeys(prefix: string): Promise<void>;
  /** The tag in the key prefixes of one client's stores (they are unique anyway; it says whose keys). */
  prefixTag(kind: Kind): string;
}

/** The SM-64 conformance suite, once per client. */
export function describeRedisConformance(target: RedisTarget): void {
  for (const kind of kinds) {
    describeStoreConformance(
      `RedisStore (${kind}, ${target.topology})`,
      async () => {
        const { client, close } = await target.connect(kind);
        const prefix = uniquePrefix(target.prefixTag(kind));
        return {
          store: new RedisStore({ client, prefix }),
          cleanup: async () => {
            await close();
            await target.deleteKeys(prefix);
          },
        };
      },
      { skip: target.skip, runner: { describe, it, beforeAll, afterAll } },
    );
  }
}

/** What the tests of one `RedisStore specifics` suite get. */
export interface RedisSpecifics {
  kind: Kind;
  /**
   * A store on the suite's client; its prefix (a unique one unless given) is cleaned up after
   * the suite. The client is connected in `beforeAll`, so call this from a hook or a test.
   */
  storeWith(options?: Partial<RedisStoreOptions>): RedisStore;
}

/** `RedisStore specifics (<kind>, <topology>)`, once per client, on one connected client each. */
export function describeRedisSpecifics(target: RedisTarget, tests: (suite: RedisSpecifics) => void): void {
  const suite = target.skip ? describe.skip : describe;
  for (const kind of kinds) {
    suite(`RedisStore specifics (${kind}, ${target.topology})${target.skip ? ` (skipped: ${target.skip})` : ''}`, () => {
      let conn: Connected;
      const prefixes: string[] = [];
      const storeWith = (options: Partial<RedisStoreOptions> = {}) => {
        const prefix = options.prefix ?? uniquePrefix(target.prefixTag(kind));
        prefixes.push(prefix);
        return new RedisStore({ client: conn.client, ...options, prefix });
      };

      beforeAll(async () => {
        conn = await target.connect(kind);
      });
      afterAll(async () => {
        await conn?.close();
        for (const p of prefixes) await target.deleteKeys(p);
      });

      tests({ kind, storeWith });
    });
  }
}

const user = (tag: string) => `${tag}-${randomBytes(4).toString('hex')}`;

/**
 * Guarded commits (ID change, login) as Redis runs them: guard, retain, unset, set and the
 * metadata patch in one script on the session's key, the user index kept right around it.
 * Shared by the standalone and Cluster suites, whose session key and user index lie in
 * different slots (usually on different masters).
 */
export function guardedCommitTests({ storeWith }: RedisSpecifics): void {
  it('login in one guarded commit: retain drops thousands of fields (chunked) and the index follows', async () => {
    const store = storeWith();
    const u = user('u-login');
    const k = newKey();
    const values: Record<string, string> = {};
    for (let i = 0; i < 2500; i++) values[`v:f${i}`] = String(i);
    expect(await store.create(k, record(values, { h: 'h0' }), HOUR)).toBe(true);
    const unset = Array.from({ length: 1200 }, (_, i) => `v:f${i * 2}`);
    const delta = {
      set: { 'v:new': '1', 'v:f9': 'nine' },
      unset,
      retain: ['v:f7', 'v:f8', 'v:absent'],
      meta: { h: 'h1', ph: 'h0', userId: u, authAt: 5 },
    };
    expect(await store.commit(k, delta, HOUR, { handle: 'h0', userId: null })).toBe('ok');
    const loaded = await store.load(k);
    // v:f8 is retained but also unset: unset wins, as in applyDelta.
    expect({ ...loaded?.values }).toEqual({ 'v:f7': '7', 'v:f9': 'nine', 'v:new': '1' });
    expect(loaded?.meta).toMatchObject({ h: 'h1', ph: 'h0', userId: u, authAt: 5 });
    expect((await store.sessionsOf(u)).map((s) => s.key)).toEqual([k]);
    // Another ID change under the old handle: the handle moved on, so it is a conflict and
    // writes nothing.
    const late = { ...delta, set: { 'v:late': '1' }, meta: { ...delta.meta, h: 'h2' } };
    expect(await store.commit(k, late, HOUR, { handle: 'h0' })).toBe('conflict');
    expect((await store.load(k))?.values['v:late']).toBeUndefined();
  });

  it('a login sent again after its reply was lost answers ok again and changes nothing more', async () => {
    // ioredis re-sends a command whose reply a broken connection lost; node-redis Sentinel
    // retries one on the new master. The login's new handle shows it already ran.
    const store = storeWith();
    const u = user('u-resent');
    const k = newKey();
    await store.create(k, record({ 'v:a': '1', 'v:old': 'x' }, { h: 'h0' }), HOUR);
    const login = {
      set: { 'v:b': '2' },
      unset: [],
      retain: ['v:a'],
      meta: { h: 'h1', ph: 'h0', userId: u },
    };
    expect(await store.commit(k, login, HOUR, { handle: 'h0', userId: null })).toBe('ok');
    // The next request of the logged-in user writes under the new handle.
    expect(await store.commit(k, { set: { 'v:c': '3' }, unset: [] }, HOUR, { handle: 'h1', userId: u })).toBe(
      'ok',
    );
    // The login again, as re-sent: ok, and its retain does not run again (v:c stays).
    expect(await store.commit(k, login, HOUR, { handle: 'h0', userId: null })).toBe('ok');
    const loaded = await store.load(k);
    expect({ ...loaded?.values }).toEqual({ 'v:a': '1', 'v:b': '2', 'v:c': '3' });
    expect(loaded?.meta).toMatchObject({ h: 'h1', userId: u });
    expect((await store.sessionsOf(u)).map((s) => s.key)).toEqual([k]);
    // Any other commit under the old handle is still refused, and writes nothing.
    const other = { set: { 'v:d': '4' }, unset: [], meta: { h: 'h2', ph: 'h0' } };
    expect(await store.commit(k, other, HOUR, { handle: 'h0' })).toBe('conflict');
    expect(await store.commit(k, { set: { 'v:d': '4' }, unset: [] }, HOUR, { handle: 'h0' })).toBe(
      'conflict',
    );
    expect((await store.load(k))?.values['v:d']).toBeUndefined();
  });

  it('a create sent again after its reply was lost answers true again; any other create of the key is refused', async () => {
    const store = storeWith();
    const u = user('u-created');
    const k = newKey();
    const created = record({ 'v:a': '1' }, { h: 'h-new', userId: u });
    expect(await store.create(k, created, HOUR)).toBe(true);
    // Re-sent: recognised by its handle; without it, the manager would take the key for a
    // collision and create another session, leaving this one listed for the user.
    expect(await store.create(k, created, HOUR)).toBe(true);
    expect(await store.create(k, record({ 'v:a': '2' }, { h: 'h-other', userId: u }), HOUR)).toBe(false);
    expect(await store.create(k, record({ 'v:a': '3' }), HOUR)).toBe(false);
    expect({ ...(await store.load(k))?.values }).toEqual({ 'v:a': '1' });
    expect((await store.sessionsOf(u)).map((s) => s.key)).toEqual([k]);
  });

  it('retain: [] keeps only what the commit sets', async () => {
    const store = storeWith();
    const k = newKey();
    await store.create(k, record({ 'v:a': '1', 's:b': '2' }, { h: 'h0' }), HOUR);
    expect(
      await store.commit(k, { set: { 'v:c': '3' }, unset: [], retain: [] }, HOUR, { handle: 'h0' }),
    ).toBe('ok');
    const loaded = await store.load(k);
    expect({ ...loaded?.values }).toEqual({ 'v:c': '3' });
    expect(loaded?.meta.h).toBe('h0');
  });

  it('two logins racing on one handle: one wins; the loser writes nothing and is not listed for its user', async () => {
    const store = storeWith();
    for (let trial = 0; trial < 10; trial++) {
      const k = newKey();
      const [u1, u2] = [user('u-a'), user('u-b')];
      await store.create(k, record({ 'v:a': '1' }, { h: 'h0' }), HOUR);
      const login = (u: string, h: string) =>
        store.commit(k, { set: { [`v:${h}`]: '1' }, unset: [], retain: [], meta: { h, userId: u } }, HOUR, {
          handle: 'h0',
          userId: null,
        });
      const results = await Promise.all([login(u1, 'h1'), login(u2, 'h2')]);
      expect([...results].sort()).toEqual(['conflict', 'ok']);
      const [winner, loser, h] = results[0] === 'ok' ? [u1, u2, 'h1'] : [u2, u1, 'h2'];
      const loaded = await store.load(k);
      expect(loaded?.meta).toMatchObject({ h, userId: winner });
      expect({ ...loaded?.values }).toEqual({ [`v:${h}`]: '1' });
      expect((await store.sessionsOf(winner)).map((s) => s.key)).toEqual([k]);
      expect(await store.sessionsOf(loser)).toEqual([]);
    }
  });

  it('a write from before a login (user guard null) cannot land on the logged-in session', async () => {
    const store = storeWith();
    const u = user('u-w');
    const k = newKey();
    await store.create(k, record({ 'v:cart': '1' }, { h: 'h0' }), HOUR);
    expect(
      await store.commit(k, { set: {}, unset: [], meta: { h: 'h1', userId: u } }, HOUR, { handle: 'h0' }),
    ).toBe('ok');
    expect(await store.commit(k, { set: { 'v:cart': '2' }, unset: [] }, HOUR, { userId: null })).toBe(
      'conflict',
    );
    expect(await store.touch(k, { lastSeenAt: 1 }, HOUR)).toBe('ok');
    expect((await store.load(k))?.values['v:cart']).toBe('1');
    expect(await store.commit(k, { set: { 'v:cart': '3' }, unset: [] }, HOUR, { userId: u })).toBe('ok');
    expect((await store.load(k))?.values['v:cart']).toBe('3');
  });

  it('a login racing a logout: the record is gone and no user index lists it', async () => {
    const store = storeWith();
    for (let trial = 0; trial < 10; trial++) {
      const u = user('u-x');
      const k = newKey();
      await store.create(k, record({}, { h: 'h0' }), HOUR);
      const [result] = await Promise.all([
        store.commit(k, { set: {}, unset: [], meta: { h: 'h1', userId: u } }, HOUR, { handle: 'h0' }),
        store.destroy(k),
      ]);
      expect(['ok', 'gone']).toContain(result);
      expect(await store.load(k)).toBeNull();
      expect(await store.sessionsOf(u)).toEqual([]);
    }
  });

  it('an empty handle is a handle like any other, not "no guard"', async () => {
    const store = storeWith();
    const k = newKey();
    await store.create(k, record({}, { h: 'h0' }), HOUR);
    expect(await store.commit(k, { set: { 'v:a': '1' }, unset: [] }, HOUR, { handle: '' })).toBe('conflict');
    expect(await store.commit(k, { set: {}, unset: [], meta: { h: '' } }, HOUR, { handle: 'h0' })).toBe('ok');
    expect(await store.commit(k, { set: { 'v:a': '1' }, unset: [] }, HOUR, { handle: '' })).toBe('ok');
  });
}
