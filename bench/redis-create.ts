/**
 * RedisStore `create` on Cluster over a slow network: latency of an anonymous create and of a
 * signed-in one (a record with a user id, e.g. `login()` on a request without a stored session),
 * whose record and user index entry lie in different slots, usually on two masters.
 *
 *   npx tsx bench/redis-create.ts [--delay 1] [--n 500]     (needs bash scripts/redis-cluster.sh start)
 *
 * Every node of the Cluster is reached through a proxy of this process that holds each chunk
 * `--delay` ms in each direction (node-redis `nodeAddressMap`), so a round trip costs what it
 * costs between machines rather than the few microseconds of loopback. One round trip per
 * creation shows as a signed-in create about as slow as an anonymous one; two round trips, as
 * twice as slow. Sequential creates, p50 and p99 after 50 warm-up pairs.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { createCluster } from 'redis';
import { newToken, storageKey } from '../src/crypto/ids.js';
import { RedisStore } from '../src/stores/redis.js';
import type { StoredSession } from '../src/stores/store.js';
import { percentile } from './lib/stats.js';

const { values: args } = parseArgs({
  options: { delay: { type: 'string', default: '1' }, n: { type: 'string', default: '500' } },
});
const DELAY = Number(args.delay);
const N = Number(args.n);
const HOUR = 3_600_000;
const NODES = (process.env.REDIS_CLUSTER_NODES ?? '127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103')
  .split(',')
  .map((n) => n.trim());

/** A proxy in front of one node: every chunk waits DELAY ms each way (timers keep the order). */
async function slowProxy(host: string, port: number): Promise<{ server: net.Server; port: number }> {
  const server = net.createServer((client) => {
    const up = net.connect(port, host);
    // No Nagle delay on either side, as a Redis client and server have (TCP_NODELAY).
    client.setNoDelay(true);
    up.setNoDelay(true);
    client.on('data', (d) => setTimeout(() => up.write(d), DELAY));
    up.on('data', (d) => setTimeout(() => client.write(d), DELAY));
    client.on('close', () => up.destroy());
    up.on('close', () => client.destroy());
    client.on('error', () => undefined);
    up.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as net.AddressInfo).port };
}

// The Cluster announces every node, replicas included: map each one to a proxy of its own.
const [seedHost = '127.0.0.1', seedPort = '7101'] = NODES[0]!.split(':');
const probe = createCluster({ rootNodes: [{ socket: { host: seedHost, port: Number(seedPort) } }] });
probe.on('error', () => undefined);
try {
  await probe.connect();
} catch (err) {
  console.log(
    `n/a: no Redis Cluster at ${NODES.join(',')} (bash scripts/redis-cluster.sh start): ${(err as Error).message}`,
  );
  process.exit(0);
}
const announced = [...probe.masters, ...probe.replicas].map((n) => n.address);
await probe.close();
const proxies: net.Server[] = [];
const nodeAddressMap: Record<string, { host: string; port: number }> = {};
for (const address of announced) {
  const [host = '', port = ''] = address.split(':');
  const p = await slowProxy(host, Number(port));
  proxies.push(p.server);
  nodeAddressMap[address] = { host: '127.0.0.1', port: p.port };
}
const firstProxy = nodeAddressMap[announced[0]!]!;
const cluster = createCluster({ rootNodes: [{ socket: firstProxy }], nodeAddressMap });
cluster.on('error', () => undefined);
await cluster.connect();
const prefix = `sfbench:create:${randomBytes(4).toString('hex')}:`;
const store = new RedisStore({ client: cluster, prefix });

const record = (userId?: string): StoredSession => {
  const now = Date.now();
  const meta = {
    createdAt: now,
    lastSeenAt: now,
    deadline: now + HOUR,
    h: randomBytes(32).toString('base64url'),
  };
  return { meta: userId === undefined ? meta : { ...meta, userId }, values: { 'v:a': '1' } };
};
const USERS = 50;
const signedIn: number[] = [];
const anonymous: number[] = [];
for (let i = 0; i < N + 50; i++) {
  const t0 = performance.now();
  await store.create(storageKey(newToken()), record(`bench-user-${i % USERS}`), HOUR);
  const t1 = performance.now();
  await store.create(storageKey(newToken()), record(), HOUR);
  const t2 = performance.now();
  if (i >= 50) {
    signedIn.push(t1 - t0);
    anonymous.push(t2 - t1);
  }
}
for (const xs of [signedIn, anonymous]) xs.sort((a, b) => a - b);
const ms = (v: number) => `${v.toFixed(2)} ms`;
console.log(
  `Cluster of ${cluster.masters.length} masters, ${DELAY} ms added each way, ${N} sequential creates of each kind:\n` +
    `  anonymous create   p50 ${ms(percentile(anonymous, 50))}, p99 ${ms(percentile(anonymous, 99))}\n` +
    `  signed-in create   p50 ${ms(percentile(signedIn, 50))}, p99 ${ms(percentile(signedIn, 99))}`,
);
const ratio = percentile(signedIn, 50) / percentile(anonymous, 50);
console.log(
  `  signed-in / anonymous (p50) ${ratio.toFixed(2)}: ${ratio < 1.5 ? 'met' : 'MISSED'} (one round trip per creation: < 1.5; two would be about 2)`,
);

for (let u = 0; u < USERS; u++)
  for (const s of await store.sessionsOf(`bench-user-${u}`)) await store.destroy(s.key);
// The anonymous sessions expire with their TTL; remove them now all the same.
for (const master of cluster.masters) {
  const client = await cluster.nodeClient(master);
  for await (const keys of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 500 }))
    for (const k of keys) await client.unlink(k);
}
await cluster.close();
for (const p of proxies) p.close();
