/**
 * RedisStore `load` alone, without HTTP: process CPU per load (user + system, `process.cpuUsage`)
 * with 10 loads of one session in flight at a time, for each client the store takes on one server,
 * and the Redis servers' CPU per load (`INFO cpu` of every node the row can reach, summed).
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
/** The nodes of the Cluster that `bash scripts/redis-cluster.sh start` runs (or REDIS_CLUSTER_NODES). */
const CLUSTER_URLS = (
  process.env.REDIS_CLUSTER_NODES ??
  '127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103,127.0.0.1:7104,127.0.0.1:7105,127.0.0.1:7106'
)
  .split(',')
  .map((node) => `redis://${node}`);
/** The node the Cluster client starts from. */
const CLUSTER_URL = CLUSTER_URLS[0]!;
/** The Sentinel that `bash scripts/redis-sentinel.sh start` runs, and the master name it watches. */
const SENTINEL = { host: '127.0.0.1', port: Number(process.env.REDIS_SENTINEL_PORT ?? 7211) };
const SENTINEL_NAME = process.env.REDIS_SENTINEL_NAME ?? 'sfmaster';

type Admin = ReturnType<typeof createClient>;

/**
 * What the servers have used since they started, in µs: CPU (user + system, `INFO cpu`), and the
 * time spent executing commands (`INFO commandstats`, summed: without reading and writing sockets).
 */
async function serverUsage(admins: Admin[]): Promise<[number, number]> {
  let cpu = 0;
  let commands = 0;
  for (const admin of admins) {
    const info = String(await admin.sendCommand(['INFO', 'cpu', 'commandstats']));
    for (const field of ['used_cpu_sys', 'used_cpu_user']) {
      cpu += 1e6 * Number(new RegExp(`^${field}:([\\d.]+)`, 'm').exec(info)?.[1] ?? Number.NaN);
    }
    for (const m of info.matchAll(/,usec=(\d+),/g)) commands += Number(m[1]);
  }
  return [cpu, commands];
}

/** The servers a row's client talks to, for their CPU (a Cluster: all its nodes). */
async function adminsFor(name: string): Promise<Admin[]> {
  const urls = name.includes('Cluster')
    ? CLUSTER_URLS
    : name.includes('Sentinel')
      ? ['redis://127.0.0.1:7201', 'redis://127.0.0.1:7202']
      : [URL];
  const admins: Admin[] = [];
  for (const url of urls) {
    const admin = createClient({ url, socket: { reconnectStrategy: false, connectTimeout: 2_000 } });
    admin.on('error', () => undefined);
    try {
      admins.push(await admin.connect());
    } catch {}
  }
  return admins;
}

async function cpuPerLoad(
  store: RedisStore,
  key: string,
  admins: Admin[],
): Promise<[number, number, number]> {
  let n = 0;
  const end = performance.now() + MS;
  const server = await serverUsage(admins);
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
  const [cpu, commands] = await serverUsage(admins);
  return [(used.user + used.system) / n, (cpu - server[0]) / n, (commands - server[1]) / n];
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
  const admins = await adminsFor(name);
  await cpuPerLoad(store, key, admins);
  const samples: [number, number, number][] = [];
  for (let i = 0; i < REPS; i++) samples.push(await cpuPerLoad(store, key, admins));
  const median = (i: 0 | 1 | 2) =>
    samples.map((s) => s[i]).sort((a, b) => a - b)[Math.floor(samples.length / 2)]!;
  console.log(
    `${name.padEnd(46)} ${median(0).toFixed(1).padStart(6)} µs CPU per load (runs: ${samples.map((s) => s[0].toFixed(1)).join(' ')}); Redis: ${median(1).toFixed(1)} µs CPU, ${median(2).toFixed(2)} µs in commands`,
  );
  for (const admin of admins) admin.destroy();
  await store.destroy(key);
  await close();
}
