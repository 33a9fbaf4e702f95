import { createHash, randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { createClient, createClientPool } from 'redis';
// node-redis v4 under an alias (package.json): the older major the store still takes.
import { createClient as createClientV4 } from 'redis4';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { type RedisClientLike, RedisStore } from '../../src/stores/redis.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';
import {
  type Connected,
  describeRedisConformance,
  describeRedisSpecifics,
  expectOfflineLoadsDropped,
  guardedCommitTests,
  HOUR,
  type Kind,
  kinds,
  newKey,
  type RedisTarget,
  record,
  sleep,
  uniquePrefix,
} from '../helpers/redis.js';
import { serverAvailable } from '../helpers/servers.js';
import { TcpProxy } from '../helpers/tcp-proxy.js';

// Loopback only: these tests write and scan keys (under a random prefix) on this server.
const HOST = '127.0.0.1';
const PORT = Number(process.env.REDIS_PORT ?? 6379);

type Admin = ReturnType<typeof createClient>;

async function connectAdmin(): Promise<Admin> {
  const admin = createClient({
    socket: { host: HOST, port: PORT, reconnectStrategy: false, connectTimeout: 2_000 },
  });
  admin.on('error', () => undefined); // a failed connect rejects connect(); nothing else to report
  return admin.connect();
}

const skip = await serverAvailable(`Redis at ${HOST}:${PORT}`, async () => {
  const admin = await connectAdmin();
  try {
    await admin.ping();
  } finally {
    admin.destroy();
  }
});

async function connect(kind: Kind): Promise<Connected> {
  return connectTo(kind, PORT);
}

/** A client of `kind` on 127.0.0.1:`port` (the server, or a proxy in front of it). */
async function connectTo(kind: Kind, port: number): Promise<Connected> {
  if (kind === 'node-redis') {
    const client = await createClient({ socket: { host: HOST, port } }).connect();
    return { client, close: () => client.close() };
  }
  const client = new Redis({ host: HOST, port, lazyConnect: true });
  await client.connect();
  return {
    client,
    close: async () => {
      await client.quit();
    },
  };
}

async function deleteKeys(admin: Admin, prefix: string): Promise<void> {
  for await (const keys of admin.scanIterator({ MATCH: `${prefix}*`, COUNT: 500 })) {
    if (keys.length > 0) await admin.unlink(keys);
  }
}

async function keysOf(admin: Admin, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const keys of admin.scanIterator({ MATCH: `${prefix}*`, COUNT: 500 })) out.push(...keys);
  return out.sort();
}

const indexKey = (prefix: string, userId: string) =>
  `${prefix}u:{${createHash('sha256').update(userId).digest('base64url')}}`;

const standalone: RedisTarget = {
  topology: 'standalone',
  skip,
  connect,
  deleteKeys: async (prefix) => {
    const admin = await connectAdmin();
    try {
      await deleteKeys(admin, prefix);
    } finally {
      admin.destroy();
    }
  },
  prefixTag: (kind) => kind,
};

describeRedisConformance(standalone);

describeRedisSpecifics(standalone, (suite) => {
  const { kind, storeWith } = suite;
  let admin: Admin;
  let prefix: string;
  let store: RedisStore;

  beforeAll(async () => {
    admin = await connectAdmin();
    store = storeWith();
    prefix = store.prefix;
  });
  afterAll(() => {
    admin?.destroy();
  });

  it('SM-61: value and expiry are set together; PTTL stays within the TTL the manager passed', async () => {
    const k = newKey();
    const redisKey = `${prefix}{${k}}`;
    expect(await store.create(k, record({ 'v:a': '1' }), 60_000)).toBe(true);
    let pttl = await admin.pTTL(redisKey);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(60_000);
    expect(
      await store.commit(k, { set: { 'v:b': '2' }, unset: [], meta: { lastSeenAt: Date.now() } }, 30_000),
    ).toBe('ok');
    pttl = await admin.pTTL(redisKey);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(30_000);
    expect(await store.touch(k, { lastSeenAt: Date.now() }, 10_000)).toBe('ok');
    pttl = await admin.pTTL(redisKey);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(10_000);
    // A record already past its lifetime is never written, so it can never lack an expiry.
    const late = newKey();
    expect(await store.create(late, record({ 'v:a': '1' }), 0)).toBe(true);
    expect(await admin.exists(`${prefix}{${late}}`)).toBe(0);
  });

  it('SM-61: a create is one script call doing HSET + PEXPIRE; a touch is one call, index untouched (MONITOR)', async () => {
    const userId = `u-${randomBytes(4).toString('hex')}`;
    const loggedIn = newKey();
    await store.create(loggedIn, record({}, { userId }), 60_000); // scripts are cached from here on
    const monitor = admin.duplicate();
    monitor.on('error', () => undefined);
    await monitor.connect();
    const seen: string[] = [];
    await monitor.monitor((line) => {
      seen.push(String(line));
    });
    const k = newKey();
    await store.create(k, record({ 'v:a': '1' }), 60_000);
    expect(await store.touch(loggedIn, { lastSeenAt: Date.now() }, 60_000)).toBe('ok');
    const about = (name: string) => seen.filter((line) => line.includes(name));
    const done = () => about(`${prefix}{${loggedIn}}`).some((l) => l.includes('"PEXPIRE"'));
    for (let i = 0; i < 100 && !done(); i++) await sleep(20);
    monitor.destroy();
    const fromClient = (lines: string[]) => lines.filter((l) => !l.includes(' lua] '));
    const created = about(`${prefix}{${k}}`);
    expect(fromClient(created)).toHaveLength(1);
    expect(fromClient(created)[0]).toMatch(/"EVALSHA"/);
    const inside = created.filter((l) => l.includes(' lua] '));
    expect(inside.some((l) => l.includes('"HSET"'))).toBe(true);
    expect(inside.some((l) => l.includes('"PEXPIRE"'))).toBe(true);
    expect(fromClient(about(`${prefix}{${loggedIn}}`))).toHaveLength(1);
    expect(about(indexKey(prefix, userId))).toEqual([]);
  });

  it('SM-61: keys are `prefix{storage key}` plus a hashed user index; neither token nor user id appears', async () => {
    const p = uniquePrefix(`layout-${kind}`);
    const layout = storeWith({ prefix: p });
    const token = newToken();
    const k = storageKey(token);
    const userId = 'alice@example.org';
    await layout.create(k, record({ 'v:a': '"x"' }, { userId }), HOUR);
    const keys = await keysOf(admin, p);
    expect(keys).toEqual([`${p}{${k}}`, indexKey(p, userId)].sort());
    for (const name of keys) {
      expect(name).not.toContain(token);
      expect(name).not.toContain(userId);
    }
    const hash = await admin.hGetAll(`${p}{${k}}`);
    expect(Object.keys(hash).sort()).toEqual(['.v:a', 'meta']);
    expect(JSON.stringify(hash)).not.toContain(token);
  });

  it('SM-61: after destroy the user index no longer lists the session', async () => {
    const userId = `u-${randomBytes(4).toString('hex')}`;
    const a = newKey();
    const b = newKey();
    await store.create(a, record({}, { userId }), HOUR);
    await store.create(b, record({}, { userId }), HOUR);
    expect(await admin.zRange(indexKey(prefix, userId), 0, -1)).toEqual(expect.arrayContaining([a, b]));
    await store.destroy(a);
    expect(await admin.zRange(indexKey(prefix, userId), 0, -1)).toEqual([b]);
    expect((await store.sessionsOf(userId)).map((s) => s.key)).toEqual([b]);
    await store.destroy(b);
    expect(await admin.exists(indexKey(prefix, userId))).toBe(0);
    expect(await store.sessionsOf(userId)).toEqual([]);
  });

  it('user index: entries of expired sessions stay until read, then sessionsOf prunes them', async () => {
    const userId = `u-${randomBytes(4).toString('hex')}`;
    const live = newKey();
    await store.create(newKey(), record({}, { userId }), 50);
    await store.create(newKey(), record({}, { userId }), 50);
    await store.create(live, record({}, { userId }), HOUR);
    await sleep(150);
    expect(await admin.zCard(indexKey(prefix, userId))).toBe(3);
    expect((await store.sessionsOf(userId)).map((s) => s.key)).toEqual([live]);
    expect(await admin.zRange(indexKey(prefix, userId), 0, -1)).toEqual([live]);
  });

  it('user index: entries are trimmed by recorded expiry only past a 30 s clock-skew margin', async () => {
    const userId = `u-${randomBytes(4).toString('hex')}`;
    const k = newKey();
    const t0 = Date.now();
    await store.create(k, record({}, { userId, deadline: t0 + 60_000 }), 60_000);
    // Another app server whose clock runs 20 s ahead still lists the session...
    const ahead = storeWith({ prefix, now: () => Date.now() + 80_000 });
    expect((await ahead.sessionsOf(userId)).map((s) => s.key)).toEqual([k]);
    // ...one 2 minutes ahead considers it expired by its index score and drops the entry
    // without reading the record (which Redis still holds: its own TTL decides).
    const far = storeWith({ prefix, now: () => Date.now() + 120_000 });
    expect(await far.sessionsOf(userId)).toEqual([]);
    expect(await admin.exists(indexKey(prefix, userId))).toBe(0);
    expect(await admin.exists(`${prefix}{${k}}`)).toBe(1);
  });

  it('user index: the index key expires on its own after its last session', async () => {
    const userId = `u-${randomBytes(4).toString('hex')}`;
    const deadline = Date.now() + 120_000;
    await store.create(newKey(), record({}, { userId, deadline }), 60_000);
    const pttl = await admin.pTTL(indexKey(prefix, userId));
    expect(pttl).toBeGreaterThan(60_000);
    expect(pttl).toBeLessThanOrEqual(120_000 + 30_000);
  });

  it('user index: a commit that changes or removes the user moves the session between indexes', async () => {
    const u1 = `u1-${randomBytes(4).toString('hex')}`;
    const u2 = `u2-${randomBytes(4).toString('hex')}`;
    const k = newKey();
    await store.create(k, record({ 'v:a': '1' }, { userId: u1 }), HOUR);
    expect(await store.commit(k, { set: {}, unset: [], meta: { userId: u2 } }, HOUR)).toBe('ok');
    expect(await store.sessionsOf(u1)).toEqual([]);
    expect(await admin.exists(indexKey(prefix, u1))).toBe(0);
    expect((await store.sessionsOf(u2)).map((s) => s.key)).toEqual([k]);
    // The pending mark written before the change is settled afterwards (an integer score).
    const score = await admin.zScore(indexKey(prefix, u2), k);
    expect(Number.isInteger(score)).toBe(true);
    expect(await store.commit(k, { set: {}, unset: [], meta: { userId: undefined } }, HOUR)).toBe('ok');
    expect(await store.sessionsOf(u2)).toEqual([]);
    expect((await store.load(k))?.meta.userId).toBeUndefined();
    expect(await store.commit(newKey(), { set: {}, unset: [], meta: { userId: u2 } }, HOUR)).toBe('gone');
    expect(await admin.exists(indexKey(prefix, u2))).toBe(0);
  });

  it('prefix isolation: stores with different prefixes on one client never see each other', async () => {
    const other = storeWith();
    const userId = `u-${randomBytes(4).toString('hex')}`;
    const k = newKey();
    await store.create(k, record({ 'v:a': '1' }, { userId }), HOUR);
    expect(await other.load(k)).toBeNull();
    expect(await other.commit(k, { set: { 'v:b': '1' }, unset: [] }, HOUR)).toBe('gone');
    expect(await other.sessionsOf(userId)).toEqual([]);
    await other.destroy(k);
    expect(await other.create(k, record({ 'v:a': 'other' }), HOUR)).toBe(true);
    expect((await store.load(k))?.values['v:a']).toBe('1');
    expect((await store.sessionsOf(userId)).map((s) => s.key)).toEqual([k]);
    expect((await other.load(k))?.values['v:a']).toBe('other');
  });

  it('metadata merged inside Redis keeps full number precision', async () => {
    const k = newKey();
    await store.create(k, record({}), HOUR);
    const meta = { lastSeenAt: 2 ** 53 - 1, authAt: 0.1 + 0.2, deadline: 253_402_300_799_999 };
    expect(await store.commit(k, { set: {}, unset: [], meta }, HOUR)).toBe('ok');
    expect((await store.load(k))?.meta).toMatchObject(meta);
  });

  it('a record with unreadable metadata is reported and treated as absent', async () => {
    const reported: string[] = [];
    const p = uniquePrefix(`corrupt-${kind}`);
    const guarded = storeWith({ prefix: p, onCorrupt: (key) => reported.push(key) });
    const k = newKey();
    await admin.hSet(`${p}{${k}}`, { meta: '{not json', '.v:a': '1' });
    await admin.pExpire(`${p}{${k}}`, 60_000);
    expect(await guarded.load(k)).toBeNull();
    expect(reported).toEqual([`${p}{${k}}`]);
    expect(await guarded.commit(k, { set: { 'v:b': '1' }, unset: [] }, HOUR)).toBe('gone');
    expect(await admin.hExists(`${p}{${k}}`, '.v:b')).toBe(0);
    await guarded.destroy(k);
    expect(await admin.exists(`${p}{${k}}`)).toBe(0);
  });

  it('a record whose metadata is JSON but not session metadata is absent to load and commit alike', async () => {
    const reported: string[] = [];
    const p = uniquePrefix(`corrupt-shape-${kind}`);
    const guarded = storeWith({ prefix: p, onCorrupt: (key, err) => reported.push(`${key} ${err.message}`) });
    const k = newKey();
    await admin.hSet(`${p}{${k}}`, { meta: '{"h":"h0","userId":"u"}', '.v:a': '1' });
    await admin.pExpire(`${p}{${k}}`, 60_000);
    expect(await guarded.load(k)).toBeNull();
    expect(await guarded.commit(k, { set: { 'v:b': '1' }, unset: [] }, HOUR, { handle: 'h0' })).toBe('gone');
    expect(await admin.hExists(`${p}{${k}}`, '.v:b')).toBe(0);
    expect(reported).toEqual([
      `${p}{${k}} metadata is not a session record`,
      `${p}{${k}} metadata is not a session record`,
    ]);
  });

  it("setWarn: without onCorrupt, corrupt records are reported through the manager's warn", async () => {
    const warned: string[] = [];
    const p = uniquePrefix(`corrupt-warn-${kind}`);
    const plain = storeWith({ prefix: p });
    plain.setWarn((message) => warned.push(message));
    const k = newKey();
    await admin.hSet(`${p}{${k}}`, { meta: '[1,2]', '.v:secret': 'do-not-log' });
    await admin.pExpire(`${p}{${k}}`, 60_000);
    expect(await plain.load(k)).toBeNull();
    expect(warned).toHaveLength(1);
    expect(warned[0]).toContain(`RedisStore: corrupt session record at ${p}{${k}}`);
    expect(warned[0]).not.toContain('do-not-log');
  });

  it('a conflict writes nothing: values, metadata and expiry stay as they were', async () => {
    const k = newKey();
    const redisKey = `${prefix}{${k}}`;
    await store.create(k, record({ 'v:a': '1' }, { h: 'h1', userId: 'u-c' }), 60_000);
    const before = await admin.hGetAll(redisKey);
    const delta = { set: { 'v:b': '2' }, unset: ['v:a'], retain: [], meta: { h: 'h2', lastSeenAt: 1 } };
    expect(await store.commit(k, delta, HOUR, { handle: 'h0' })).toBe('conflict');
    expect(await store.commit(k, delta, HOUR, { handle: 'h1', userId: null })).toBe('conflict');
    expect(await store.commit(k, delta, 0, { userId: 'u-other' })).toBe('conflict');
    expect(await admin.hGetAll(redisKey)).toEqual(before);
    const pttl = await admin.pTTL(redisKey);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(60_000);
  });

  guardedCommitTests(suite);

  it('after SCRIPT FLUSH (restart, failover) the store sends the scripts again', async () => {
    const k = newKey();
    await store.create(k, record({ 'v:a': '1' }), HOUR);
    await admin.scriptFlush();
    expect((await store.load(k))?.values['v:a']).toBe('1');
    expect(await store.commit(k, { set: { 'v:a': '2' }, unset: [] }, HOUR)).toBe('ok');
    expect((await store.load(k))?.values['v:a']).toBe('2');
  });

  it('durability: a write that fewer replicas than required acknowledge fails loudly', async () => {
    const info = await admin.info('replication');
    const replicas = Number(/connected_slaves:(\d+)/.exec(info)?.[1] ?? 0);
    const strict = storeWith({ durability: { replicas: replicas + 1, timeoutMs: 50 } });
    const k = newKey();
    const started = Date.now();
    await expect(strict.create(k, record({}), HOUR)).rejects.toMatchObject({
      code: 'STORE_UNAVAILABLE',
      message: expect.stringContaining(`${replicas} of ${replicas + 1} required replicas`),
    });
    expect(Date.now() - started).toBeGreaterThanOrEqual(45);
  });

  it('errors from the client propagate (the manager turns them into a 503)', async () => {
    const doomed = await connect(kind);
    const broken = new RedisStore({ client: doomed.client, prefix: uniquePrefix('closed') });
    await doomed.close();
    await expect(broken.load(newKey())).rejects.toThrow();
    await expect(broken.create(newKey(), record({}), HOUR)).rejects.toThrow();
  });
});

describe('RedisStore options', () => {
  // A client that is never connected: validation happens before any I/O.
  const client = createClient({ socket: { host: HOST, port: PORT } });

  it('refuses a prefix with hash-tag braces, an unknown client and invalid durability', () => {
    expect(() => new RedisStore({ client, prefix: 'sf:{x}:' })).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTION' }),
    );
    expect(() => new RedisStore({ client: {} as RedisClientLike })).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTION' }),
    );
    for (const durability of [
      { replicas: 0, timeoutMs: 100 },
      { replicas: 1, timeoutMs: 0 },
    ]) {
      expect(() => new RedisStore({ client, durability })).toThrow(
        expect.objectContaining({ code: 'INVALID_OPTION' }),
      );
    }
    expect(new RedisStore({ client }).prefix).toBe('sf:');
    expect(new RedisStore({ client }).capabilities).toEqual({ listByUser: true, gc: false, nativeTtl: true });
  });

  it('SM-13: a key that is not base64url never reaches Redis', async () => {
    const store = new RedisStore({ client });
    await expect(store.load('../x}{y')).rejects.toMatchObject({ code: 'INVALID_KEY' });
    await expect(store.destroy('a b')).rejects.toMatchObject({ code: 'INVALID_KEY' });
    await expect(
      store.commit('x{y}', { set: {}, unset: [], retain: [] }, HOUR, { handle: 'h0' }),
    ).rejects.toMatchObject({ code: 'INVALID_KEY' });
  });
});

// A read is the plain command (HGETALL, HGET), not a script: the same reply for a fraction of the
// server's CPU (EVALSHA of a one-line script costs Redis about eight times an HGETALL). What
// keeps reads on the master where a client could send them to a replica is tested on Cluster.
describe.skipIf(skip)(`RedisStore reads${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let proxy: TcpProxy;
  beforeAll(async () => {
    proxy = await TcpProxy.start({ host: HOST, port: PORT }, 0, { record: true });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  for (const kind of kinds) {
    it(`${kind}: a load is one HGETALL and sessionsOf reads each session's metadata with one HGET, never a script`, async () => {
      const conn = await connectTo(kind, proxy.port);
      const prefix = uniquePrefix(`plain-${kind}`);
      const store = new RedisStore({ client: conn.client, prefix });
      try {
        const k = newKey();
        const userId = `u-${randomBytes(4).toString('hex')}`;
        expect(await store.create(k, record({ 'v:a': '"1"' }, { userId }), HOUR)).toBe(true);
        proxy.clearSent();
        expect((await store.load(k))?.values).toEqual({ 'v:a': '"1"' });
        expect(await store.load(newKey())).toBeNull();
        const loads = proxy.sent;
        expect(commandsIn(loads)).toEqual(['HGETALL', 'HGETALL']);
        proxy.clearSent();
        expect((await store.sessionsOf(userId)).map((s) => s.key)).toEqual([k]);
        // The index is read (and tidied) by scripts (EVAL after another test's SCRIPT FLUSH);
        // the session's metadata by a plain HGET.
        expect(commandsIn(proxy.sent).filter((c) => c !== 'EVALSHA' && c !== 'EVAL')).toEqual(['HGET']);
      } finally {
        await standalone.deleteKeys(prefix);
        await conn.close();
      }
    });
  }

  it('node-redis speaking RESP3 (a hash comes back as a map): create, load, commit, list by user, destroy', async () => {
    const client = await createClient({ socket: { host: HOST, port: PORT }, RESP: 3 }).connect();
    const prefix = uniquePrefix('resp3');
    const store = new RedisStore({ client, prefix });
    try {
      const k = newKey();
      const userId = `u-${randomBytes(4).toString('hex')}`;
      const created = record({ 'v:a': '"1"', 'v:b': '{"x":[1,2]}' }, { userId });
      expect(await store.create(k, created, HOUR)).toBe(true);
      expect(await store.load(k)).toEqual(created);
      expect(await store.commit(k, { set: { 'v:c': '3' }, unset: ['v:a'] }, HOUR)).toBe('ok');
      expect((await store.load(k))?.values).toEqual({ 'v:b': '{"x":[1,2]}', 'v:c': '3' });
      expect((await store.sessionsOf(userId)).map((s) => [s.key, s.meta.userId])).toEqual([[k, userId]]);
      expect(await store.load(newKey())).toBeNull();
      await store.destroy(k);
      expect(await store.load(k)).toBeNull();
      expect(await store.sessionsOf(userId)).toEqual([]);
    } finally {
      await standalone.deleteKeys(prefix);
      await client.close();
    }
  });
});

/** The commands in RESP the clients sent, upper-cased, in order (the first word of each array). */
function commandsIn(sent: string): string[] {
  return [...sent.matchAll(/\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n/g)].map((m) => m[1]!.toUpperCase());
}

// A load goes without an AbortSignal while node-redis is connected (the signal and the listener
// node-redis puts on it were half of a load's CPU). While it is not, the signal must still keep a
// load that ran out of time from waiting in the offline queue and reaching the server later.
describe.skipIf(skip)(
  `RedisStore loads and node-redis's offline queue${skip ? ` (skipped: ${skip})` : ''}`,
  () => {
    let proxy: TcpProxy;
    beforeAll(async () => {
      proxy = await TcpProxy.start({ host: HOST, port: PORT }, 0, { record: true });
    });
    afterAll(async () => {
      await proxy?.close();
    });

    // A client, and a pool (whose reads keep their signal only on a connection that is not up).
    for (const kind of ['client', 'pool'] as const) {
      it(`${kind}: loads sent while the connection is down answer 503 at timeoutMs and never reach the server after the reconnect; loads while it is up are served`, async () => {
        const socket = { host: proxy.host, port: proxy.port, reconnectStrategy: () => 50 };
        const single = kind === 'client' ? createClient({ socket }) : undefined;
        const pool = kind === 'pool' ? createClientPool({ socket }, { minimum: 1, maximum: 2 }) : undefined;
        const client = (single ?? pool)!;
        client.on('error', () => undefined);
        await client.connect();
        // Whether the connection(s) the store sends on are up.
        const ready = async () =>
          single
            ? single.isReady
            : (await Promise.all([0, 1].map(() => pool!.execute(async (c) => c.isReady)))).every(Boolean);
        const store = new RedisStore({ client, prefix: uniquePrefix('offline'), timeoutMs: 300 });
        // The pool's idle client sees the connection close as it would in an outage.
        const down = async () => !(single ? single.isReady : await pool!.execute(async (c) => c.isReady));
        try {
          await expectOfflineLoadsDropped(store, proxy, { down, up: ready });
        } finally {
          await client.close().catch(() => undefined);
        }
      }, 20_000);
    }

    it('pool: loads that waited for a free connection past timeoutMs answer 503 and are never sent, also once a connection is free', async () => {
      const pool = createClientPool(
        { socket: { host: proxy.host, port: proxy.port } },
        { minimum: 1, maximum: 1, acquireTimeout: 5_000 },
      );
      pool.on('error', () => undefined);
      await pool.connect();
      const store = new RedisStore({ client: pool, prefix: uniquePrefix('leased'), timeoutMs: 300 });
      try {
        const live = newKey();
        expect(await store.create(live, record({ 'v:a': '"1"' }), HOUR)).toBe(true);
        // The pool's one connection is held by a blocking command for a second (the server's
        // own timeout): the loads wait in the pool's queue until after their deadline.
        const held = pool.execute((c) => c.sendCommand(['BLPOP', `${uniquePrefix('hold')}list`, '1']));
        const lost = Array.from({ length: 3 }, () => newKey());
        proxy.clearSent();
        const answers = await Promise.allSettled(lost.map((k) => store.load(k)));
        for (const answer of answers) {
          expect(answer).toMatchObject({ status: 'rejected', reason: { code: 'STORE_UNAVAILABLE' } });
        }
        expect(await held).toBeNull();
        // The connection is free and up again: a new load is sent and served; the three that
        // waited past their deadline were handed the connection too, and not one was sent.
        expect((await store.load(live))?.values).toEqual({ 'v:a': '"1"' });
        expect(proxy.sent).toContain(live);
        for (const k of lost) expect(proxy.sent).not.toContain(k);
      } finally {
        await pool.close().catch(() => undefined);
      }
    }, 20_000);
  },
);

// ioredis re-sends the commands a broken connection left unanswered once it reconnects. A commit
// the server already ran then runs twice: harmless for a plain one, and a handle-moving one
// (login, ID change) recognises its own new handle and answers as the first run did.
describe.skipIf(skip)(`RedisStore and a re-sent commit${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let proxy: TcpProxy;
  beforeAll(async () => {
    proxy = await TcpProxy.start({ host: HOST, port: PORT }, 0, { record: true });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  /** A store on an ioredis client that goes through the proxy, and one on a direct connection (same keys). */
  async function throughProxy(
    test: (store: RedisStore, observer: RedisStore) => Promise<void>,
  ): Promise<void> {
    const client = new Redis({
      host: proxy.host,
      port: proxy.port,
      lazyConnect: true,
      retryStrategy: () => 20,
    });
    client.on('error', () => undefined);
    await client.connect();
    const direct = await connect('ioredis');
    const prefix = uniquePrefix('resent');
    try {
      await test(
        new RedisStore({ client, prefix, timeoutMs: 3_000 }),
        new RedisStore({ client: direct.client, prefix }),
      );
    } finally {
      proxy.loseReplies(false);
      client.disconnect();
      await direct.close();
      await standalone.deleteKeys(prefix);
    }
  }

  /**
   * Sends `op` with its reply lost: once `ran` (looking through a connection of its own) sees that
   * the server ran it, the proxy resets the connection, and ioredis re-sends it. Its answer.
   */
  async function withReplyLost<T>(op: () => Promise<T>, ran: () => Promise<boolean>): Promise<T> {
    proxy.loseReplies();
    const answer = op();
    for (let i = 0; i < 300 && !(await ran()); i++) await sleep(10);
    expect(await ran()).toBe(true);
    proxy.loseReplies(false);
    proxy.clearSent();
    await proxy.down();
    await proxy.up();
    return answer;
  }

  it('ioredis re-sends an ID change whose reply the broken connection lost: the store answers ok, as the first run did', async () => {
    await throughProxy(async (store, observer) => {
      const k = newKey();
      expect(await store.create(k, record({ 'v:a': '1' }, { h: 'h0' }), HOUR)).toBe(true);
      // The commit script is cached on the server first (its EVALSHA's NOSCRIPT reply would be lost too).
      expect(await store.commit(k, { set: {}, unset: [] }, HOUR)).toBe('ok');
      const change = await withReplyLost(
        () =>
          store.commit(k, { set: { 'v:b': '2' }, unset: [], meta: { h: 'h1', ph: 'h0' } }, HOUR, {
            handle: 'h0',
          }),
        async () => (await observer.load(k))?.meta.h === 'h1',
      );
      expect(change).toBe('ok');
      // It was answered by a second run on the new connection, not by the first.
      expect(proxy.sent).toContain('h1');
      expect((await observer.load(k))?.values).toEqual({ 'v:a': '1', 'v:b': '2' });
    });
  }, 20_000);

  it('ioredis re-sends a create whose reply the broken connection lost: the store answers true, as the first run did', async () => {
    await throughProxy(async (store, observer) => {
      const k = newKey();
      // The create script is cached on the server first (its EVALSHA's NOSCRIPT reply would be lost too).
      expect(await store.create(newKey(), record({}), HOUR)).toBe(true);
      const created = await withReplyLost(
        () => store.create(k, record({ 'v:a': '1' }, { h: 'h0' }), HOUR),
        async () => (await observer.load(k))?.meta.h === 'h0',
      );
      expect(created).toBe(true);
      expect(proxy.sent).toContain('h0');
      expect((await observer.load(k))?.values).toEqual({ 'v:a': '1' });
    });
  }, 20_000);
});

// node-redis v4 (still in use; connect-redis 6 made apps create it in legacy mode): the
// conformance suite on both, and the offline queue: v4 names a command's abort signal `signal`
// (v5 `abortSignal`), which the store passes too, so a load that waited there past its deadline
// is dropped, not sent after the reconnect.
for (const legacyMode of [false, true]) {
  const label = `node-redis 4${legacyMode ? ', legacy mode' : ''}`;
  const connectV4 = async (port: number, socket: object = {}) => {
    const client = createClientV4({ socket: { host: HOST, port, ...socket }, legacyMode });
    client.on('error', () => undefined);
    await client.connect();
    return client;
  };
  describeStoreConformance(
    `RedisStore (${label}, standalone)`,
    async () => {
      const client = await connectV4(PORT);
      const prefix = uniquePrefix('v4');
      return {
        store: new RedisStore({ client: client as unknown as RedisClientLike, prefix }),
        cleanup: async () => {
          await (legacyMode ? client.v4.quit() : client.quit());
          await standalone.deleteKeys(prefix);
        },
      };
    },
    { skip, runner: { describe, it, beforeAll, afterAll } },
  );

  describe.skipIf(skip)(`RedisStore offline queue (${label})${skip ? ` (skipped: ${skip})` : ''}`, () => {
    let proxy: TcpProxy;
    beforeAll(async () => {
      proxy = await TcpProxy.start({ host: HOST, port: PORT }, 0, { record: true });
    });
    afterAll(async () => {
      await proxy?.close();
    });

    it('loads sent while the connection is down answer 503 at timeoutMs and never reach the server after the reconnect', async () => {
      const client = await connectV4(proxy.port, { reconnectStrategy: () => 50 });
      const store = new RedisStore({
        client: client as unknown as RedisClientLike,
        prefix: uniquePrefix('offline-v4'),
        timeoutMs: 300,
      });
      try {
        await expectOfflineLoadsDropped(store, proxy, {
          down: () => !client.isReady,
          up: () => client.isReady,
        });
      } finally {
        await client.disconnect().catch(() => undefined);
      }
    }, 20_000);
  });
}

describe('RedisStore and node-redis v5 legacy wrapper', () => {
  it('refuses client.legacy() with what to pass instead', () => {
    const client = createClient({ socket: { host: HOST, port: PORT } });
    expect(() => new RedisStore({ client: client.legacy() as unknown as RedisClientLike })).toThrow(
      /callback wrapper of a node-redis client \(client\.legacy\(\)\): pass the client itself/,
    );
  });
});
