/**
 * RedisStore `load` alone, without HTTP: process CPU per load (user + system, `process.cpuUsage`)
 * with 10 loads of one session in flight at a time, for each client the store takes on one server.
 *
 *   npx tsx bench/redis-load.ts [--seconds 1.5] [--reps 5]      (REDIS_URL, default 127.0.0.1:6379)
 *
 * Prints the median of `--reps` runs per client, after one warm-up run. A node-redis pool makes
 * an AbortSignal for every load and passes it only to a connection that is not up; a connected
 * single client, a Cluster whose masters are all connected, and ioredis send loads without one
 * (docs/stores-redis.md). A node-redis Sentinel always gets one: whether its master connection is
 * up is not visible from outside. The Cluster row needs `bash scripts/redis-cluster.sh start`
 * (or REDIS_CLUSTER_NODES) and the Sentinel rows `bash scripts/redis-sentinel.sh start`; without
 * them, those rows print n/a.
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { createClient, createClientPool, createCluster, createSentinel } from 'redis';
import { RedisStore } from '../src/stores/redis.js';

const { values: args } = parseArgs({
  options: { seconds: { type: 'string', default: '1.5' }, reps: { type: 'string', default: '5' } },
});
const MS = Number(args.seconds) * 1000;
const REPS = Number(args.reps);
const URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const IN_FLIGHT = 10;
/** A node of the Cluster that `bash scripts/redis-cluster.sh start` runs (the first of REDIS_CLUSTER_NODES). */
const CLUSTER_URL = `redis://${(process.env.REDIS_CLUSTER_NODES ?? '127.0.0.1:7101').split(',')[0]}`;
/** The Sentinel that `bash scripts/redis-sentinel.sh start` runs, and the master name it watches. */
const SENTINEL = { host: '127.0.0.1', port: Number(process.env.REDIS_SENTINEL_PORT ?? 7211) };
const SENTINEL_NAME = process.env.REDIS_SENTINEL_NAME ?? 'sfmaster';

async function cpuPerLoad(store: RedisStore, key: string): Promise<number> {
  let n = 0;
  const end = performance.now() + MS;
  const before = process.cpuUsage();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (performance.now() < end) {
        if (!(await store.load(key))) throw new Error('the session was not found');
        n++;
      }
    }),
  );
  const used = process.cpuUsage(before);
  return (used.user + used.system) / n;
}

const clients: { name: string; open: () => Promise<{ client: never; close: () => Promise<unknown> }> }[] = [
  {
    name: 'node-redis client',
    open: async () => {
      const client = await createClient({ url: URL }).connect();
      return { client: client as never, close: () => client.close() };
    },
  },
  {
    name: 'node-redis pool',
    open: async () => {
      const pool = createClientPool({ url: URL });
      await pool.connect();
      return { client: pool as never, close: () => pool.close() };
    },
  },
  {
    name: 'node-redis Cluster (scripts/redis-cluster.sh)',
    open: async () => {
      // No reconnection: a Cluster that is not running fails at once and its row is skipped.
      const cluster = createCluster({
        rootNodes: [{ url: CLUSTER_URL, socket: { reconnectStrategy: false, connectTimeout: 2_000 } }],
      });
      await cluster.connect();
      return { client: cluster as never, close: () => cluster.close() };
    },
  },
  {
    name: 'node-redis Sentinel (scripts/redis-sentinel.sh)',
    open: async () => {
      const sentinel = createSentinel({
        name: SENTINEL_NAME,
        sentinelRootNodes: [SENTINEL],
        maxCommandRediscovers: 0,
        nodeClientOptions: { socket: { reconnectStrategy: false, connectTimeout: 2_000 } },
        sentinelClientOptions: { socket: { reconnectStrategy: false, connectTimeout: 2_000 } },
      });
      await sentinel.connect();
      return { client: sentinel as never, close: () => sentinel.close() };
    },
  },
  {
    name: 'ioredis',
    open: async () => {
      const client = new Redis(URL);
      return { client: client as never, close: () => client.quit() };
    },
  },
  {
    name: 'ioredis Sentinel (scripts/redis-sentinel.sh)',
    open: async () => {
      const client = new Redis({
        sentinels: [SENTINEL],
        name: SENTINEL_NAME,
        lazyConnect: true,
        sentinelRetryStrategy: () => null,
        retryStrategy: () => null,
      });
      await client.connect();
      return { client: client as never, close: () => client.quit() };
    },
  },
];

for (const { name, open } of clients) {
  let opened: Awaited<ReturnType<typeof open>>;
  try {
    opened = await open();
  } catch (err) {
    console.log(`${name.padEnd(46)} n/a (not reachable: ${(err as Error).message})`);
    continue;
  }
  const { client, close } = opened;
  const store = new RedisStore({ client, prefix: `sfbench:load:${randomBytes(4).toString('hex')}:` });
  const key = randomBytes(32).toString('base64url');
  const now = Date.now();
  const h = randomBytes(32).toString('base64url');
  const meta = { createdAt: now, deadline: now + 86_400_000, lastSeenAt: now, h, idAt: now };
  if (!(await store.create(key, { meta, values: { 'v:k': '"hello"' } }, 3_600_000))) {
    throw new Error('create refused');
  }
  await cpuPerLoad(store, key);
  const samples: number[] = [];
  for (let i = 0; i < REPS; i++) samples.push(await cpuPerLoad(store, key));
  samples.sort((a, b) => a - b);
  const median = samples[Math.floor(samples.length / 2)]!;
  console.log(
    `${name.padEnd(46)} ${median.toFixed(1).padStart(6)} µs CPU per load (runs: ${samples.map((s) => s.toFixed(1)).join(' ')})`,
  );
  await store.destroy(key);
  await close();
}
