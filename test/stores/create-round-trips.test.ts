/**
 * A signed-in `create` (a `create` whose record has a user id, e.g. `login()` on a request without
 * a stored session) costs one round trip on Redis (standalone and Cluster) and Memcached, as an
 * anonymous one does; and the races around it keep every revocation guarantee.
 *
 * Round trips are counted as waves: a request sent before any earlier request of the operation
 * has answered is in the same wave (they travel together); one sent after an answer arrived
 * starts the next wave. The clients are real, wrapped only to count and to hold one request.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Cluster, Redis } from 'ioredis';
import Memcached from 'memcached';
import { createClient, createCluster } from 'redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import {
  type MemcachedClient,
  MemcachedStore,
  recommendedMemcachedOptions,
} from '../../src/stores/memcached.js';
import { type RedisClientLike, RedisStore } from '../../src/stores/redis.js';
import type { SessionMeta, StoredSession } from '../../src/stores/store.js';
import { CLUSTER_NODES } from '../helpers/redis.js';
import { serverAvailable } from '../helpers/servers.js';

const HOUR = 3_600_000;
const newKey = () => storageKey(newToken());
const newUser = () => `u-${randomBytes(5).toString('hex')}`;
const record = (extra: Partial<SessionMeta> = {}): StoredSession => {
  const now = Date.now();
  return {
    meta: { createdAt: now, lastSeenAt: now, deadline: now + HOUR, ...extra },
    values: { 'v:a': '1' },
  };
};

/** Counts the waves of requests of one operation (reset before it). */
class Waves {
  #answered = 0;
  count = 0;
  /** The last wave whose answer has arrived: the round trips an operation waited for, once it returned. */
  get answered(): number {
    return this.#answered;
  }
  #epoch = 0;
  /** Starts counting a new operation; answers to requests sent before are ignored. */
  reset(): void {
    this.#epoch++;
    this.#answered = 0;
    this.count = 0;
  }
  /** Call when a request is sent; call the returned function when its answer arrives. */
  sent(): () => void {
    const wave = this.#answered + 1;
    const epoch = this.#epoch;
    this.count = Math.max(this.count, wave);
    return () => {
      if (epoch === this.#epoch) this.#answered = Math.max(this.#answered, wave);
    };
  }
  track<T>(p: Promise<T>, done: () => void): Promise<T> {
    return p.finally(done);
  }
}

/** A client object whose methods are the real ones, bound, except those in `override`. */
function wrap<T extends object>(target: T, override: Record<string, unknown>): T {
  return new Proxy(target, {
    get(t, prop) {
      if (typeof prop === 'string' && Object.hasOwn(override, prop)) return override[prop];
      const value = Reflect.get(t, prop, t);
      return typeof value === 'function' ? value.bind(t) : value;
    },
  });
}

// ---- Redis ------------------------------------------------------------------------------------

const REDIS = { host: '127.0.0.1', port: Number(process.env.REDIS_PORT ?? 6379) };

type Kind = 'node-redis' | 'ioredis';

/**
 * A hold on the next script run that names `key` (and whose words pass `match`): `reached` is
 * told when it is about to be sent, `before` delays sending it, `answered` is told when its
 * answer arrives, `after` delays handing that answer over, `fail` makes it fail unsent.
 */
interface RedisHold {
  key: string;
  match?: (words: string[]) => boolean;
  reached?: () => void;
  before?: () => Promise<void>;
  answered?: () => void;
  after?: () => Promise<void>;
  fail?: Error;
}

interface Counted {
  client: RedisClientLike;
  waves: Waves;
  holds: RedisHold[];
  close: () => Promise<void>;
}

/** The arguments of a command as strings, whatever the client's call shape. */
function words(args: unknown[]): string[] {
  return args.flat(2).map((a) => (Buffer.isBuffer(a) ? a.toString() : String(a)));
}

/** Sends through `send`, counting waves and applying the first hold on a key a store command names. */
function holding(waves: Waves, holds: RedisHold[], send: (...args: unknown[]) => Promise<unknown>) {
  return (...args: unknown[]) => {
    const w = words(args);
    // The store's scripts, and its reads (a plain HGETALL or HGET where the client sends them
    // to the master; a script elsewhere).
    const i = w.some((x) => /^(EVAL|EVALSHA|HGET|HGETALL)$/i.test(x))
      ? holds.findIndex((h) => w.includes(h.key) && (h.match?.(w) ?? true))
      : -1;
    const hold = i >= 0 ? holds.splice(i, 1)[0] : undefined;
    hold?.reached?.();
    if (hold?.fail) return Promise.reject(hold.fail);
    const go = () => {
      const answer = waves.track(send(...args), waves.sent());
      if (hold?.answered) void answer.then(hold.answered, hold.answered);
      const after = hold?.after;
      if (!after) return answer;
      return answer.then(
        (v) => after().then(() => v),
        (e) => after().then(() => Promise.reject(e)),
      );
    };
    return hold?.before ? hold.before().then(go) : go();
  };
}

async function redisClient(kind: Kind, cluster: boolean): Promise<Counted> {
  const waves = new Waves();
  const holds: RedisHold[] = [];
  if (kind === 'node-redis') {
    if (cluster) {
      const c = createCluster({ rootNodes: CLUSTER_NODES.map((n) => ({ socket: n })) });
      c.on('error', () => undefined);
      await c.connect();
      const send = c.sendCommand.bind(c) as (...args: unknown[]) => Promise<unknown>;
      const client = wrap(c, { sendCommand: holding(waves, holds, send) }) as unknown as RedisClientLike;
      return { client, waves, holds, close: () => c.close() };
    }
    const c = await createClient({ socket: REDIS }).connect();
    const send = c.sendCommand.bind(c) as (...args: unknown[]) => Promise<unknown>;
    const client = wrap(c, { sendCommand: holding(waves, holds, send) }) as unknown as RedisClientLike;
    return { client, waves, holds, close: () => c.close() };
  }
  const c = cluster
    ? new Cluster(CLUSTER_NODES, { lazyConnect: true })
    : new Redis({ ...REDIS, lazyConnect: true });
  c.on('error', () => undefined);
  await c.connect();
  const call = c.call.bind(c) as (...args: unknown[]) => Promise<unknown>;
  const client = wrap(c, { call: holding(waves, holds, call) }) as unknown as RedisClientLike;
  return {
    client,
    waves,
    holds,
    close: async () => {
      await c.quit();
    },
  };
}

/**
 * Whether the command reads `key`: a plain HGET or HGETALL of it, or a script whose last argument
 * is `key` (the read scripts take no arguments), whatever client options follow.
 */
const readOf = (w: string[], key: string) =>
  w.includes(key) &&
  (w.some((x) => /^(HGET|HGETALL)$/i.test(x)) ||
    w.slice(w.lastIndexOf(key) + 1).every((x) => x === 'undefined' || x.startsWith('[object')));

/** A promise and the function that settles it. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open = () => {};
  const wait = new Promise<void>((r) => {
    open = r;
  });
  return { wait, open };
}

const redisKeyOf = (prefix: string, key: string) => `${prefix}{${key}}`;
const indexKeyOf = (prefix: string, user: string) =>
  `${prefix}u:{${createHash('sha256').update(user).digest('base64url')}}`;

const redisSkip = await serverAvailable(`Redis at ${REDIS.host}:${REDIS.port}`, async () => {
  const c = createClient({ socket: { ...REDIS, reconnectStrategy: false, connectTimeout: 2_000 } });
  c.on('error', () => undefined);
  await c.connect();
  c.destroy();
});
const clusterSkip = await serverAvailable('Redis Cluster', async () => {
  const c = createCluster({
    rootNodes: CLUSTER_NODES.map((n) => ({ socket: { ...n, reconnectStrategy: false } })),
  });
  c.on('error', () => undefined);
  await c.connect();
  await c.close();
});

async function deleteRedisKeys(prefix: string, cluster: boolean): Promise<void> {
  const nodes = cluster ? CLUSTER_NODES : [REDIS];
  for (const n of nodes) {
    const c = createClient({ socket: n });
    c.on('error', () => undefined);
    try {
      await c.connect();
      for await (const keys of c.scanIterator({ MATCH: `${prefix}*`, COUNT: 500 }))
        for (const k of keys) await c.unlink(k).catch(() => undefined); // a replica refuses: its master has it
    } catch {
      // a node that is down holds nothing to clean
    } finally {
      c.destroy();
    }
  }
}

for (const [topology, cluster, skip] of [
  ['standalone', false, redisSkip],
  ['Cluster', true, clusterSkip],
] as const) {
  for (const kind of ['node-redis', 'ioredis'] as const) {
    describe.skipIf(skip)(`RedisStore create round trips (${kind}, ${topology})`, () => {
      const prefix = `sftest:rt-${kind}-${cluster ? 'c' : 's'}:${randomBytes(6).toString('hex')}:`;
      let conn: Counted;
      let store: RedisStore;
      beforeAll(async () => {
        conn = await redisClient(kind, cluster);
        store = new RedisStore({ client: conn.client, prefix });
        // Scripts cached on every node from here on (a NOSCRIPT retry would be one more trip).
        for (let i = 0; i < 60; i++) {
          await store.create(newKey(), record(), HOUR);
          await store.create(newKey(), record({ userId: newUser() }), HOUR);
        }
      });
      afterAll(async () => {
        await conn?.close();
        await deleteRedisKeys(prefix, cluster);
      });

      it('anonymous create: one round trip', async () => {
        conn.waves.reset();
        expect(await store.create(newKey(), record(), HOUR)).toBe(true);
        expect(conn.waves.count).toBe(1);
      });

      it(`signed-in create: one round trip, ${cluster ? 'record and pending index entry sent to their two masters at once' : 'record and user index in one script'}`, async () => {
        const user = newUser();
        const keys = [newKey(), newKey()];
        for (const k of keys) {
          conn.waves.reset();
          expect(await store.create(k, record({ userId: user }), HOUR)).toBe(true);
          expect(conn.waves.answered).toBe(1);
          // On Cluster the entry is settled after the answer, by a command not waited for.
          expect(conn.waves.count).toBe(cluster ? 2 : 1);
        }
        expect((await store.sessionsOf(user)).map((s) => s.key).sort()).toEqual([...keys].sort());
        // The key exists: false, the record untouched; the other user lists nothing (on Cluster
        // the pending entry sent beside the refused create stays, unlisted, until its bound).
        const other = newUser();
        conn.waves.reset();
        expect(await store.create(keys[0]!, record({ userId: other }), HOUR)).toBe(false);
        expect(conn.waves.count).toBe(1);
        expect((await store.load(keys[0]!))?.meta.userId).toBe(user);
        expect(await store.sessionsOf(other)).toEqual([]);
        expect((await store.sessionsOf(user)).map((s) => s.key).sort()).toEqual([...keys].sort());
      });

      it('SM-61: signed-in creates racing sessionsOf and revocations: every acknowledged session is listed, every revoked one is gone', async () => {
        const user = newUser();
        const created: string[] = [];
        let stop = false;
        const reader = (async () => {
          while (!stop) await store.sessionsOf(user); // prunes what it cannot match
        })();
        for (let round = 0; round < 5; round++) {
          const batch = Array.from({ length: 20 }, newKey);
          const acked = await Promise.all(
            batch.map(async (k) => ((await store.create(k, record({ userId: user }), HOUR)) ? k : null)),
          );
          for (const k of acked) if (k) created.push(k);
          // Every acknowledged creation is in the index, whatever the concurrent reader pruned.
          expect((await store.sessionsOf(user)).map((s) => s.key).sort()).toEqual([...created].sort());
        }
        stop = true;
        await reader;
        // revokeAll as the manager runs it: list, then destroy each.
        for (const s of await store.sessionsOf(user)) await store.destroy(s.key);
        for (const k of created) expect(await store.load(k)).toBeNull();
        expect(await store.sessionsOf(user)).toEqual([]);
      });

      if (cluster)
        describe('the two writes of a signed-in create on Cluster, in either order', () => {
          let admin: ReturnType<typeof createCluster>;
          beforeAll(async () => {
            admin = createCluster({ rootNodes: CLUSTER_NODES.map((n) => ({ socket: n })) });
            admin.on('error', () => undefined);
            await admin.connect();
          });
          afterAll(async () => {
            await admin?.close();
          });
          const scoreOf = (user: string, k: string) => admin.zScore(indexKeyOf(prefix, user), k);
          const listed = async (user: string) => (await store.sessionsOf(user)).map((s) => s.key).sort();

          it('SM-61: the index entry lands first: a reader in between keeps it (its record is missing); once create returns, the session is listed and revocable', async () => {
            const user = newUser();
            const k = newKey();
            const recordHeld = gate();
            const entryLanded = gate();
            const pendingWrite = (w: string[]) => w.includes('pending');
            const settledWrite = (w: string[]) => w.includes('settled');
            conn.holds.push({ key: redisKeyOf(prefix, k), before: () => recordHeld.wait });
            conn.holds.push({
              key: indexKeyOf(prefix, user),
              match: pendingWrite,
              answered: entryLanded.open,
            });
            // The store's own settle after the answer is lost: only a reader settles the entry.
            conn.holds.push({ key: indexKeyOf(prefix, user), match: settledWrite, fail: new Error('lost') });
            const creating = store.create(k, record({ userId: user }), HOUR);
            await entryLanded.wait; // sent beside the held record: with two round trips, never
            expect(await listed(user)).toEqual([]); // not acknowledged yet: no cookie carries it
            const pending = await scoreOf(user, k);
            expect(pending !== null && !Number.isInteger(pending)).toBe(true);
            recordHeld.open();
            expect(await creating).toBe(true);
            expect(Number.isInteger(await scoreOf(user, k))).toBe(false); // its settle was lost
            expect(await listed(user)).toEqual([k]);
            // The reader that found the record its user's settled the entry.
            expect(Number.isInteger(await scoreOf(user, k))).toBe(true);
            for (const s of await store.sessionsOf(user)) await store.destroy(s.key);
            expect(await store.load(k)).toBeNull();
            expect(await listed(user)).toEqual([]);
          });

          it('SM-61: after create answers, the store settles the entry itself; once the session has expired the next reader prunes it', async () => {
            const user = newUser();
            const k = newKey();
            expect(await store.create(k, record({ userId: user }), 300)).toBe(true);
            for (let i = 0; i < 100 && !Number.isInteger(await scoreOf(user, k)); i++)
              await new Promise((r) => setTimeout(r, 10));
            expect(Number.isInteger(await scoreOf(user, k))).toBe(true);
            for (let i = 0; i < 100 && (await store.load(k)) !== null; i++)
              await new Promise((r) => setTimeout(r, 20));
            expect(await store.load(k)).toBeNull();
            expect(await listed(user)).toEqual([]);
            expect(await scoreOf(user, k)).toBeNull();
          });

          it('SM-61: the record lands first: not listed before create returns, listed after', async () => {
            const user = newUser();
            const k = newKey();
            const entryHeld = gate();
            const recordLanded = gate();
            conn.holds.push({ key: indexKeyOf(prefix, user), before: () => entryHeld.wait });
            conn.holds.push({ key: redisKeyOf(prefix, k), answered: recordLanded.open });
            const creating = store.create(k, record({ userId: user }), HOUR);
            await recordLanded.wait;
            expect(await listed(user)).toEqual([]);
            entryHeld.open();
            expect(await creating).toBe(true);
            expect(await listed(user)).toEqual([k]);
          });

          it('SM-61: the index write fails: the record is deleted and create throws (no cookie, nothing to revoke)', async () => {
            const user = newUser();
            const k = newKey();
            conn.holds.push({ key: indexKeyOf(prefix, user), fail: new Error('index master unreachable') });
            await expect(store.create(k, record({ userId: user }), HOUR)).rejects.toThrow(
              'index master unreachable',
            );
            expect(await store.load(k)).toBeNull();
            expect(await listed(user)).toEqual([]);
          });

          it('SM-61: the record write fails: create throws; the pending entry left is never listed and goes once its expiry bound has passed', async () => {
            const user = newUser();
            const k = newKey();
            conn.holds.push({ key: redisKeyOf(prefix, k), fail: new Error('session master unreachable') });
            await expect(store.create(k, record({ userId: user }), HOUR)).rejects.toThrow(
              'session master unreachable',
            );
            expect(await listed(user)).toEqual([]);
            expect(await scoreOf(user, k)).not.toBeNull(); // kept: a reader cannot tell it from one in flight
            const later = new RedisStore({
              client: conn.client,
              prefix,
              now: () => Date.now() + HOUR + 60_000,
            });
            expect(await later.sessionsOf(user)).toEqual([]);
            expect(await scoreOf(user, k)).toBeNull();
          });

          it('SM-61: randomized: 200 signed-in creates, both writes held and released in a random order around readers; every acknowledged session is listed, then revoked', async () => {
            const shuffle = <T>(xs: T[]): T[] => {
              for (let i = xs.length - 1; i > 0; i--) {
                const j = Math.floor(Math.random() * (i + 1));
                [xs[i], xs[j]] = [xs[j]!, xs[i]!];
              }
              return xs;
            };
            const users = Array.from({ length: 10 }, newUser);
            const acked = new Map<string, string[]>(users.map((u) => [u, []]));
            for (let trial = 0; trial < 200; trial++) {
              const user = users[trial % users.length]!;
              const k = newKey();
              const rec = gate();
              const entry = gate();
              conn.holds.push({ key: redisKeyOf(prefix, k), before: () => rec.wait });
              conn.holds.push({ key: indexKeyOf(prefix, user), before: () => entry.wait });
              const creating = store.create(k, record({ userId: user }), HOUR);
              const readers: Promise<unknown>[] = [];
              for (const step of shuffle<(() => void) | 'read'>([rec.open, entry.open, 'read', 'read'])) {
                if (step === 'read') {
                  const r = store.sessionsOf(user);
                  if (Math.random() < 0.5) await r;
                  else readers.push(r);
                } else {
                  step();
                  await new Promise((r) => setImmediate(r));
                }
              }
              if (await creating) acked.get(user)!.push(k);
              await Promise.all(readers);
              expect(await listed(user)).toEqual([...acked.get(user)!].sort());
            }
            for (const user of users) {
              for (const s of await store.sessionsOf(user)) await store.destroy(s.key);
              for (const k of acked.get(user)!) expect(await store.load(k)).toBeNull();
              expect(await store.sessionsOf(user)).toEqual([]);
            }
            expect([...acked.values()].flat()).toHaveLength(200);
          });
        });

      it('SM-61: a reader whose view predates two logins under one handle (the first ok, the second a conflict) cannot prune the entry the first one settled', async () => {
        const user = newUser();
        const k = newKey();
        await store.create(k, record({ h: 'h0' }), HOUR);
        // Both logins carry the same deadline, so both write the same pending score.
        const deadline = Date.now() + 2 * HOUR;
        const login = (h: string) => ({ set: {}, unset: [], meta: { userId: user, h, ph: 'h0', deadline } });
        const sessionKey = redisKeyOf(prefix, k);
        const pendingLanded = gate();
        const commitReached = gate();
        const commitHeld = gate();
        const readerRead = gate();
        const readerHeld = gate();
        conn.holds.push(
          {
            key: indexKeyOf(prefix, user),
            match: (w) => w.includes('pending'),
            answered: pendingLanded.open,
          },
          { key: sessionKey, reached: commitReached.open, before: () => commitHeld.wait },
          // The reader's metadata read: answered before the first login's commit runs, handed over late.
          { key: sessionKey, answered: readerRead.open, after: () => readerHeld.wait },
        );
        const first = store.commit(k, login('h1'), HOUR, { handle: 'h0', userId: null });
        await pendingLanded.wait;
        await commitReached.wait;
        const reader = store.sessionsOf(user); // sees the pending entry and a record of no user
        await readerRead.wait;
        commitHeld.open();
        expect(await first).toBe('ok');
        expect(await store.commit(k, login('h2'), HOUR, { handle: 'h0', userId: null })).toBe('conflict');
        readerHeld.open();
        expect(await reader).toEqual([]);
        expect((await store.sessionsOf(user)).map((s) => s.key)).toEqual([k]);
        expect((await store.load(k))?.meta).toMatchObject({ userId: user, h: 'h1' });
      });

      it("SM-61: randomized: 300 double logins under one handle around a reader; the first login's commit, the second login, the reader and the release of its metadata answer in a random order; the session the winning login made is always listed", async () => {
        const user = newUser();
        const logged: string[] = [];
        const deadline = Date.now() + 2 * HOUR;
        const login = (h: string) => ({ set: {}, unset: [], meta: { userId: user, h, ph: 'h0', deadline } });
        for (let trial = 0; trial < 300; trial++) {
          const k = newKey();
          const sessionKey = redisKeyOf(prefix, k);
          await store.create(k, record({ h: 'h0' }), HOUR);
          const commitGo = gate();
          const commitHeld = gate();
          const answerGo = gate();
          const answerHeld = gate();
          conn.holds.push(
            // The first login's commit script: held until the 'commit' step.
            {
              key: sessionKey,
              match: (w) => !readOf(w, sessionKey),
              reached: commitHeld.open,
              before: () => commitGo.wait,
            },
            // A reader's metadata read of the session: answered at once, handed over at 'answer'.
            {
              key: sessionKey,
              match: (w) => readOf(w, sessionKey),
              answered: answerHeld.open,
              after: () => answerGo.wait,
            },
          );
          let first: Promise<unknown> | undefined;
          let reader: Promise<unknown> | undefined;
          const ops: Promise<unknown>[] = [];
          // The first login starts first, and each step goes on once what it started has run as
          // far as it can (so the order of the steps is the order of their effects in Redis).
          const steps = ['first', ...['second', 'read', 'commit', 'answer'].sort(() => Math.random() - 0.5)];
          for (const step of steps) {
            if (step === 'first') {
              first = store.commit(k, login('h1'), HOUR, { handle: 'h0', userId: null });
              ops.push(first);
              await commitHeld.wait; // its pending entry is written, its commit held
            } else if (step === 'second') {
              const second = store.commit(k, login('h2'), HOUR, { handle: 'h0', userId: null });
              ops.push(second);
              await second;
            } else if (step === 'read') {
              reader = store.sessionsOf(user);
              ops.push(reader);
              await Promise.race([reader, answerHeld.wait]);
            } else if (step === 'commit') {
              commitGo.open();
              await first;
            } else {
              answerGo.open();
              await reader;
            }
          }
          const results = await Promise.all(ops);
          // A hold that no command met (the reader read before the session was the user's): dropped.
          for (let i = conn.holds.length - 1; i >= 0; i--)
            if (conn.holds[i]!.key === sessionKey) conn.holds.splice(i, 1);
          expect(results.filter((r) => r === 'ok')).toHaveLength(1); // one login wins, the other meets the changed handle
          logged.push(k);
          expect((await store.sessionsOf(user)).map((s) => s.key).sort()).toEqual([...logged].sort());
        }
        for (const s of await store.sessionsOf(user)) await store.destroy(s.key);
        for (const k of logged) expect(await store.load(k)).toBeNull();
      });

      it('a TTL <= 0 signed-in create writes neither the record nor the index', async () => {
        const user = newUser();
        const k = newKey();
        expect(await store.create(k, record({ userId: user }), 0)).toBe(true);
        expect(await store.load(k)).toBeNull();
        expect(await store.sessionsOf(user)).toEqual([]);
      });
    });
  }
}

describe.skipIf(redisSkip)('RedisStore signed-in create on one server (MONITOR)', () => {
  it('one EVALSHA from the client; HSET, PEXPIRE and ZADD run inside it on both keys', async () => {
    const prefix = `sftest:rt-mon:${randomBytes(6).toString('hex')}:`;
    const client = await createClient({ socket: REDIS }).connect();
    const store = new RedisStore({ client, prefix });
    await store.create(newKey(), record({ userId: newUser() }), HOUR); // script cached
    const monitor = await createClient({ socket: REDIS }).connect();
    const seen: string[] = [];
    await monitor.monitor((line) => {
      seen.push(String(line));
    });
    const k = newKey();
    const user = newUser();
    await store.create(k, record({ userId: user }), HOUR);
    await store.load(k); // a marker that the create's lines have all arrived
    for (let i = 0; i < 100 && !seen.some((l) => l.includes('HGETALL')); i++)
      await new Promise((r) => setTimeout(r, 20));
    monitor.destroy();
    const mine = seen.filter((l) => l.includes(`${prefix}{${k}}`) || l.includes(`${prefix}u:{`));
    const sent = mine.filter((l) => !l.includes(' lua] '));
    // The create (EVALSHA with 2 keys) and the marker load.
    expect(sent).toHaveLength(2);
    expect(sent[0]).toMatch(/"EVALSHA" "[0-9a-f]{40}" "2"/);
    const inside = mine.filter((l) => l.includes(' lua] '));
    for (const command of ['"HSET"', '"PEXPIRE"', '"ZADD"'])
      expect(inside.some((l) => l.includes(command))).toBe(true);
    await client.close();
    await deleteRedisKeys(prefix, false);
  });
});

// ---- Memcached --------------------------------------------------------------------------------

const SERVERS = (process.env.MEMCACHED_SERVERS ?? '127.0.0.1:11211,127.0.0.1:11212')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const RUN = `sf-rt-${process.pid}-${Date.now().toString(36)}:`;

const memcachedClients: Memcached[] = [];
function realMemcached(): Memcached {
  const c = new Memcached(SERVERS, { ...recommendedMemcachedOptions });
  memcachedClients.push(c);
  return c;
}
afterAll(() => {
  for (const c of memcachedClients) c.end();
});

type Op = 'gets' | 'add' | 'cas' | 'del';
/** A hold on one request: `before` delays sending it, `after` delays handing over its answer. */
interface Hold {
  op: Op;
  key: string;
  before?: () => Promise<void>;
  after?: () => Promise<void>;
}

/** A real client that counts waves, logs requests, and applies one-shot holds. */
function counted(real: Memcached): { client: MemcachedClient; waves: Waves; log: string[]; holds: Hold[] } {
  const waves = new Waves();
  const log: string[] = [];
  const holds: Hold[] = [];
  const run = (
    op: Op,
    key: string,
    send: (cb: (err: unknown, data: unknown) => void) => void,
    cb: (err: unknown, data: unknown) => void,
  ) => {
    const i = holds.findIndex((h) => h.op === op && h.key === key);
    const hold = i >= 0 ? holds.splice(i, 1)[0] : undefined;
    const go = () => {
      log.push(`${op} ${key}`);
      const done = waves.sent();
      send((err, data) => {
        done();
        if (hold?.after)
          hold.after().then(
            () => cb(err, data),
            (e) => cb(e, undefined),
          );
        else cb(err, data);
      });
    };
    if (hold?.before) hold.before().then(go, (e) => cb(e, undefined));
    else go();
  };
  const client: MemcachedClient = {
    gets: (k, cb) => run('gets', k, (done) => real.gets(k, done), cb),
    add: (k, v, l, cb) => run('add', k, (done) => real.add(k, v, l, done), cb as never),
    cas: (k, v, c, l, cb) => run('cas', k, (done) => real.cas(k, v, c, l, done), cb as never),
    del: (k, cb) => run('del', k, (done) => real.del(k, done), cb as never),
  };
  return { client, waves, log, holds };
}

const memcachedSkip = await serverAvailable(`memcached at ${SERVERS.join(', ')}`, async () => {
  const c = new Memcached(SERVERS, { ...recommendedMemcachedOptions, timeout: 1000 });
  try {
    await new Promise<void>((resolve, reject) => c.version((err) => (err ? reject(err) : resolve())));
  } finally {
    c.end();
  }
});

const userItem = (userId: string) => `${RUN}u:${createHash('sha256').update(userId).digest('base64url')}`;

/** True if memcached holds the item (read without the store, which would delete a dead one). */
function held(itemKey: string): Promise<boolean> {
  return new Promise((resolve, reject) =>
    realMemcached().get(itemKey, (err, data) =>
      err ? reject(err) : resolve(data !== undefined && data !== false),
    ),
  );
}

describe.skipIf(memcachedSkip)('MemcachedStore create round trips and races', () => {
  let other: MemcachedStore; // another app server: its own client, its own generation cache
  beforeAll(() => {
    other = new MemcachedStore(realMemcached(), { prefix: RUN });
  });

  it('anonymous and signed-in creates: one round trip; a user revoked elsewhere: three, then one', async () => {
    const c = counted(realMemcached());
    const store = new MemcachedStore(c.client, { prefix: RUN });
    c.waves.reset();
    expect(await store.create(newKey(), record(), HOUR)).toBe(true);
    expect(c.waves.count).toBe(1);

    const user = newUser(); // never revoked: generation 0, the default guess
    const k = newKey();
    c.waves.reset();
    c.log.length = 0;
    expect(await store.create(k, record({ userId: user, authAt: 1 }), HOUR)).toBe(true);
    expect(c.waves.count).toBe(1);
    expect(c.log.sort()).toEqual([`add ${RUN}${k}`, `gets ${userItem(user)}`].sort());

    // Revoked by another app server: this store's guess is stale, the create stamps again.
    await other.revokeUser(user);
    expect(await store.load(k)).toBeNull();
    const again = newKey();
    const cold = counted(realMemcached());
    const coldStore = new MemcachedStore(cold.client, { prefix: RUN });
    cold.waves.reset();
    expect(await coldStore.create(again, record({ userId: user, authAt: 2 }), HOUR)).toBe(true);
    expect(cold.waves.count).toBe(3); // gets user + add, then gets + cas of the item
    expect(await other.load(again)).not.toBeNull();
    // Now this store knows the generation: one round trip again.
    cold.waves.reset();
    const third = newKey();
    expect(await coldStore.create(third, record({ userId: user, authAt: 3 }), HOUR)).toBe(true);
    expect(cold.waves.count).toBe(1);
    await other.revokeUser(user);
    expect(await other.load(again)).toBeNull();
    expect(await other.load(third)).toBeNull();
  });

  it('race: the generation is read, then a revokeUser completes, then create returns: the session is dead (fails closed)', async () => {
    const user = newUser();
    await other.revokeUser(user);
    for (const warm of [false, true]) {
      const c = counted(realMemcached());
      const store = new MemcachedStore(c.client, { prefix: RUN });
      if (warm) await store.revokeUser(user); // its guess is now the current generation
      const k = newKey();
      let addLanded = false;
      c.holds.push(
        {
          op: 'add',
          key: `${RUN}${k}`,
          after: async () => {
            addLanded = true;
          },
        },
        { op: 'gets', key: userItem(user), after: () => other.revokeUser(user) },
      );
      expect(await store.create(k, record({ userId: user, authAt: 1 }), HOUR)).toBe(true);
      expect(addLanded).toBe(true);
      expect(c.holds).toEqual([]);
      expect(await other.load(k)).toBeNull();
      expect(await store.load(k)).toBeNull();
    }
  });

  it('race: the add lands, a revokeUser completes, then the generation is read: the session lives (created after it), and the next revokeUser ends it', async () => {
    const user = newUser();
    for (const revokedBefore of [false, true]) {
      if (revokedBefore) await other.revokeUser(user);
      const c = counted(realMemcached());
      const store = new MemcachedStore(c.client, { prefix: RUN });
      const k = newKey();
      let itemBeforeRevoke = false;
      c.holds.push({
        op: 'gets',
        key: userItem(user),
        before: async () => {
          // The add has been sent; wait until memcached holds the item, then revoke.
          for (let i = 0; i < 200 && !(await held(`${RUN}${k}`)); i++)
            await new Promise((r) => setTimeout(r, 5));
          itemBeforeRevoke = await held(`${RUN}${k}`);
          await other.revokeUser(user);
        },
      });
      expect(await store.create(k, record({ userId: user, authAt: 1 }), HOUR)).toBe(true);
      expect(itemBeforeRevoke).toBe(true);
      // Not acknowledged before the revocation resolved, so it may live; its stamp is the
      // generation read (the revocation's), neither older (a dead login) nor newer.
      expect(await other.load(k)).not.toBeNull();
      await other.revokeUser(user);
      expect(await other.load(k)).toBeNull();
      expect(await store.load(k)).toBeNull();
    }
  });

  it('race: the add is held until a revokeUser completes after the generation was read: dead', async () => {
    const user = newUser();
    const c = counted(realMemcached());
    const store = new MemcachedStore(c.client, { prefix: RUN });
    const k = newKey();
    let read = false;
    c.holds.push(
      {
        op: 'gets',
        key: userItem(user),
        after: async () => {
          read = true;
        },
      },
      {
        op: 'add',
        key: `${RUN}${k}`,
        before: async () => {
          for (let i = 0; i < 200 && !read; i++) await new Promise((r) => setTimeout(r, 2));
          await other.revokeUser(user);
        },
      },
    );
    expect(await store.create(k, record({ userId: user, authAt: 1 }), HOUR)).toBe(true);
    expect(read).toBe(true);
    expect(await other.load(k)).toBeNull();
  });

  it('a guess above the real generation (user item lost) is corrected, so a later revokeUser still ends the session', async () => {
    const user = newUser();
    let clock = Date.now() + 10 * HOUR; // this app server's clock runs ahead
    const c = counted(realMemcached());
    const ahead = new MemcachedStore(c.client, { prefix: RUN, now: () => clock });
    await ahead.revokeUser(user); // generation ~ now + 10 h, remembered as the guess
    // The user item is evicted (or memcached restarted).
    await new Promise<void>((resolve, reject) =>
      realMemcached().del(userItem(user), (err) => (err ? reject(err) : resolve())),
    );
    const k = newKey();
    c.waves.reset();
    expect(await ahead.create(k, record({ userId: user, authAt: 1 }), HOUR)).toBe(true);
    expect(c.waves.count).toBe(3); // the guess was wrong: stamped again with generation 0
    expect(await other.load(k)).not.toBeNull();
    // A revocation from a server with the right clock: generation ~ now, below the guess.
    await other.revokeUser(user);
    expect(await other.load(k)).toBeNull();
    clock = Date.now();
  });

  it('when the generation cannot be read, the create fails and leaves no session behind', async () => {
    const user = newUser();
    const c = counted(realMemcached());
    const store = new MemcachedStore(c.client, { prefix: RUN });
    const k = newKey();
    c.holds.push({
      op: 'gets',
      key: userItem(user),
      after: async () => {
        throw new Error('injected: user item unreachable');
      },
    });
    await expect(store.create(k, record({ userId: user, authAt: 1 }), HOUR)).rejects.toMatchObject({
      code: 'STORE_UNAVAILABLE',
    });
    expect(await other.load(k)).toBeNull();
    expect(c.log).toContain(`del ${RUN}${k}`);
  });
});
