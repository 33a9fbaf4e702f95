/**
 * Load latency as a store fills (issue 9): 1k, 10k, 100k and 1M live sessions, and at each size
 * `load` of random live keys, one at a time (sequential awaits), through the store's public API.
 * Every load must find its session. Prints p50/p99 per size and verdicts on the targets (1M
 * within 1.5x of 1k; for the memory store, at most 600 bytes per small session).
 *
 *   npx tsx bench/fill.ts [--store memory|redis|postgres] [--max 1000000] [--rounds 7 (15)]
 *                         [--samples 20000 (5000)] [--memory-module <path to another memory.ts>]
 *
 * (Defaults in parentheses are Redis's and PostgreSQL's.)
 *
 * Timings are noisy on a shared machine, so every size has its own store (memory), key prefix
 * (Redis) or table (PostgreSQL), all filled first; then `--rounds` rounds each time every size
 * in turn (1k, 10k, 100k, 1M, 1k, ...), `--samples` loads per size and round. A size's p50 and
 * p99 are the medians of its rounds' p50 and p99: interleaved repetitions, so a noisy spell on
 * the machine hits every size alike. (Redis has one keyspace: the sizes' prefixes share it.)
 *
 * Memory per session (memory store): V8 heap plus ArrayBuffer memory after a full GC
 * (`--expose-gc`; the script re-executes itself with that flag), before and after filling one
 * store through `create` to each size, divided by the number of sessions; measured again after a
 * pass of loads (a store whose loads reshuffle its hash tables grows there).
 *
 * Sessions are shaped as the manager stores them: a 43-character base64url key, meta with
 * createdAt, deadline, lastSeenAt, h (a 43-character SHA-256) and idAt, one in ten signed in
 * (userId, authAt), and one value `v:k` = '"hello"' (fresh strings and numbers per session).
 *
 * Redis (REDIS_URL, default 127.0.0.1:6379) is filled with pipelined HSET/PEXPIRE (and ZADD for
 * the user index) shaped as RedisStore writes them, under key prefixes unique to the run, deleted
 * at the end. PostgreSQL (PG_URL, default postgres://postgres@127.0.0.1:5432/test) is filled with
 * `INSERT ... SELECT generate_series` rows shaped as PostgresStore writes them, in tables of the
 * run's own (created by the store's `migrate()`, ANALYZEd after the fill, dropped at the end).
 */

import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import type { SessionStore } from '../src/stores/store.js';
import { DAY, SIGNED_IN_EVERY, sessionKey, smallSession } from './lib/small-session.js';
import { median, percentile, prng } from './lib/stats.js';
import { verdict } from './lib/verdict.js';

const { values: args } = parseArgs({
  options: {
    store: { type: 'string', default: 'memory' },
    max: { type: 'string', default: '1000000' },
    rounds: { type: 'string' },
    samples: { type: 'string' },
    'memory-module': { type: 'string' },
  },
});
const kind = args.store as 'memory' | 'redis' | 'postgres';
if (!['memory', 'redis', 'postgres'].includes(kind))
  throw new Error(`--store ${kind}: memory, redis or postgres`);

// Bytes per session need a full GC before each reading.
if (kind === 'memory' && typeof globalThis.gc !== 'function') {
  const child = spawnSync(process.execPath, ['--expose-gc', ...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
  });
  process.exit(child.status ?? 1);
}

const MAX = Number(args.max);
const SIZES = [1_000, 10_000, 100_000, 1_000_000].filter((n) => n <= MAX);
if (SIZES.length === 0 || SIZES.at(-1) !== MAX) SIZES.push(MAX);
const ROUNDS = Number(args.rounds ?? (kind === 'memory' ? 7 : 15));
const SAMPLES = Number(args.samples ?? (kind === 'memory' ? 20_000 : 5_000));
const RUN = `${process.pid}-${randomBytes(4).toString('hex')}`;
const TTL = 3_600_000;

/** One size's sessions: a store (memory), a key prefix (Redis) or a table (PostgreSQL). */
interface Space {
  readonly name: string;
  readonly store: SessionStore;
  /** Adds sessions [from, to). */
  fill(from: number, to: number): Promise<void>;
  close(): Promise<void>;
}

interface Backend {
  open(name: string, n: number): Promise<Space>;
  close(): Promise<void>;
}

async function memoryBackend(): Promise<Backend> {
  const path = args['memory-module'];
  const mod = (await import(
    path ? new URL(path, `file://${process.cwd()}/`).href : '../src/stores/memory.js'
  )) as typeof import('../src/stores/memory.js');
  return {
    async open(name, n) {
      const store = new mod.MemoryStore({ maxEntries: n + 1 });
      const base = Date.now();
      return {
        name,
        store,
        async fill(from, to) {
          for (let i = from; i < to; i++) {
            if (!(await store.create(sessionKey(name, i), smallSession(name, i, base + i), TTL)))
              throw new Error(`create ${i} refused`);
          }
        },
        async close() {},
      };
    },
    async close() {},
  };
}

async function redisBackend(): Promise<Backend> {
  const { createClient } = await import('redis');
  const { RedisStore } = await import('../src/stores/redis.js');
  const client = createClient({ url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' });
  client.on('error', () => undefined);
  await client.connect();
  return {
    async open(name) {
      const prefix = `sfbench-fill-${name}:`;
      const store = new RedisStore({ client, prefix });
      return {
        name,
        store,
        async fill(from, to) {
          const base = Date.now();
          for (let start = from; start < to; start += 2000) {
            const batch: Promise<unknown>[] = [];
            for (let i = start; i < Math.min(to, start + 2000); i++) {
              // What RedisStore's CREATE script and INDEX_ADD write: one hash per session (meta
              // JSON, values under '.'), its TTL, and for a signed-in session its user's sorted set.
              const r = smallSession(name, i, base + i);
              const redisKey = `${prefix}{${sessionKey(name, i)}}`;
              const hset = ['HSET', redisKey, 'meta', JSON.stringify(r.meta)];
              for (const [f, v] of Object.entries(r.values)) hset.push(`.${f}`, v);
              batch.push(client.sendCommand(hset), client.sendCommand(['PEXPIRE', redisKey, String(TTL)]));
              if (r.meta.userId !== undefined) {
                const index = `${prefix}u:{${createHash('sha256').update(r.meta.userId).digest('base64url')}}`;
                const bound = r.meta.deadline;
                batch.push(
                  client.sendCommand(['ZADD', index, String(bound), sessionKey(name, i)]),
                  client.sendCommand(['PEXPIREAT', index, String(bound + 30_000)]),
                );
              }
            }
            await Promise.all(batch);
          }
        },
        async close() {
          let cursor = '0';
          let deleted = 0;
          do {
            const [next, keys] = (await client.sendCommand([
              'SCAN',
              cursor,
              'MATCH',
              `${prefix}*`,
              'COUNT',
              '10000',
            ])) as [string, string[]];
            cursor = next;
            if (keys.length > 0) deleted += Number(await client.sendCommand(['UNLINK', ...keys]));
          } while (cursor !== '0');
          console.log(`redis: deleted ${deleted} keys under ${prefix}`);
        },
      };
    },
    async close() {
      await client.close();
    },
  };
}

async function postgresBackend(): Promise<Backend> {
  const pg = (await import('pg')).default;
  const { PostgresStore } = await import('../src/stores/postgres.js');
  const pool = new pg.Pool({
    connectionString: process.env.PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
    max: 4,
  });
  return {
    async open(name) {
      const table = `sfbench_fill_${name.replaceAll('-', '_')}`;
      const store = new PostgresStore(pool, { table });
      await store.migrate();
      return {
        name,
        store,
        async fill(from, to) {
          const base = Date.now();
          // The rows PostgresStore's insert writes (meta and data as jsonb, expires_at in ms), with
          // the key computed as sessionKey() does; user_id is generated from meta by the table itself.
          const b64url = (text: string) =>
            `rtrim(translate(encode(sha256(convert_to(${text}, 'UTF8')), 'base64'), '+/', '-_'), '=')`;
          const id = b64url(`$1::text || ':' || g`);
          const h = b64url(`'h:' || $1::text || ':' || g`);
          const at = '($2::bigint + g)';
          for (let start = from; start < to; start += 100_000) {
            const end = Math.min(to, start + 100_000) - 1;
            await pool.query(
              `INSERT INTO "${table}" (id, meta, data, expires_at)
               SELECT ${id},
                 CASE WHEN g % ${SIGNED_IN_EVERY} = 0
                   THEN jsonb_build_object('createdAt', ${at}, 'deadline', ${at} + ${DAY}, 'userId', 'user-' || g,
                          'authAt', ${at}, 'lastSeenAt', ${at}, 'h', ${h}, 'idAt', ${at})
                   ELSE jsonb_build_object('createdAt', ${at}, 'deadline', ${at} + ${DAY}, 'lastSeenAt', ${at},
                          'h', ${h}, 'idAt', ${at})
                 END,
                 jsonb_build_object('v:k', '"hello"'),
                 $2::bigint + ${TTL}
               FROM generate_series($3::bigint, $4::bigint) AS g`,
              [name, base, start, end],
            );
          }
          await pool.query(`ANALYZE "${table}"`);
        },
        async close() {
          await pool.query(`DROP TABLE IF EXISTS "${table}"`);
          console.log(`postgres: dropped table ${table}`);
        },
      };
    },
    async close() {
      await pool.end();
    },
  };
}

/** `count` loads of random live keys of `space`, one at a time; the time of each in µs, sorted. */
async function loads(
  space: Pick<Space, 'name'> & { store: { load(key: string): Promise<unknown> } },
  n: number,
  count: number,
  random: () => number,
): Promise<Float64Array> {
  const keys = Array.from({ length: count }, () => sessionKey(space.name, Math.floor(random() * n)));
  const took = new Float64Array(count);
  let missing = 0;
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    const found = await space.store.load(keys[i]!);
    took[i] = (performance.now() - start) * 1000;
    if (found === null) missing++;
  }
  if (missing > 0) throw new Error(`${missing} of ${count} loads found nothing at ${n} sessions`);
  return took.sort();
}

/** Heap plus ArrayBuffer bytes after full GCs (a turn of the event loop between them lets sweeping finish). */
async function heapBytes(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    globalThis.gc!();
    await new Promise((resolve) => setImmediate(resolve));
  }
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

const backend =
  kind === 'memory'
    ? await memoryBackend()
    : kind === 'redis'
      ? await redisBackend()
      : await postgresBackend();
// Seeded, so every run and store loads the same positions.
const random = prng(42);

// ---- memory per session (memory store): one store filled through `create`, size by size --------
interface Bytes {
  n: number;
  filled: number;
  loaded: number;
}
const bytes: Bytes[] = [];
/** Loads between the two readings (enough to make a store that reshuffles its tables on load grow). */
const LOAD_PASS = 100_000;
if (kind === 'memory') {
  let space: Space | undefined = await backend.open(`${RUN}-bytes`, MAX);
  const empty = await heapBytes();
  let filled = 0;
  for (const n of SIZES) {
    await space.fill(filled, n);
    filled = n;
    const afterFill = ((await heapBytes()) - empty) / n;
    await loads(space, n, LOAD_PASS, random);
    bytes.push({ n, filled: afterFill, loaded: ((await heapBytes()) - empty) / n });
  }
  space = undefined;
  await heapBytes();
  console.log('memory per session (heap + ArrayBuffers after full GC, one store filled through create):');
  for (const b of bytes) {
    console.log(
      `  ${String(b.n).padStart(9)} sessions  ${b.filled.toFixed(0).padStart(5)} bytes/session after the fill, ${b.loaded.toFixed(0).padStart(5)} after ${LOAD_PASS} loads`,
    );
  }
}

// ---- load latency: every size filled, then interleaved rounds ------------------------------------
interface Row {
  n: number;
  p50s: number[];
  p99s: number[];
  fillS: number;
  /**
   * Memory store only: the floors, each an `await` of an async lookup among n keys shaped alike
   * (the cache and TLB misses of any hash lookup at that size). First `Map.get` on a plain Map,
   * then the same lookup without a `Map` (see {@link slotTable}); both hold the same keys.
   */
  floors: Floor[];
}
interface Floor {
  store: { load(key: string): Promise<unknown> };
  name: string;
  /** What the printed line says this floor is. */
  label: string;
  p50s: number[];
  p99s: number[];
}

/**
 * A second floor with no `Map` in it: n keys in an array, found through an open-addressing table
 * of their indexes in an `Int32Array` (FNV-1a over the key's characters, linear probing, at most
 * half full). If this one grows from 1k to 1M as much as `Map.get` does, the growth is the
 * machine's caches and TLB, not V8's `Map`.
 */
function slotTable(keys: readonly string[]): (key: string) => number | undefined {
  let size = 1;
  while (size < 2 * keys.length) size *= 2;
  const mask = size - 1;
  const slots = new Int32Array(size).fill(-1);
  const hash = (key: string) => {
    let h = 0x811c9dc5;
    for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
    return h & mask;
  };
  for (const [index, key] of keys.entries()) {
    let at = hash(key);
    while (slots[at] !== -1) at = (at + 1) & mask;
    slots[at] = index;
  }
  return (key) => {
    for (let at = hash(key); ; at = (at + 1) & mask) {
      const index = slots[at]!;
      if (index === -1) return undefined;
      if (keys[index] === key) return index;
    }
  };
}
const spaces: Space[] = [];
const rows: Row[] = [];
try {
  for (const n of SIZES) {
    const space = await backend.open(`${RUN}-${n}`, n);
    spaces.push(space);
    const started = performance.now();
    await space.fill(0, n);
    const row: Row = { n, p50s: [], p99s: [], fillS: (performance.now() - started) / 1000, floors: [] };
    if (kind === 'memory') {
      const name = `${RUN}-${n}-floor`;
      const keys = Array.from({ length: n }, (_, i) => sessionKey(name, i));
      const map = new Map(keys.map((k, i) => [k, i]));
      const find = slotTable(keys);
      const floor = (label: string, load: (key: string) => Promise<unknown>): Floor => ({
        name,
        label,
        store: { load },
        p50s: [],
        p99s: [],
      });
      row.floors.push(
        floor(`floor: await of an async Map.get on a plain Map of ${n} keys`, async (k) => map.get(k)),
        floor(
          `floor without a Map: the same await, an Int32Array hash table of ${n} keys`,
          async (k) => find(k) ?? null,
        ),
      );
    }
    rows.push(row);
  }
  for (const [i, space] of spaces.entries()) await loads(space, rows[i]!.n, Math.min(SAMPLES, 2000), random); // warm-up
  for (let r = 0; r < ROUNDS; r++) {
    for (const [i, space] of spaces.entries()) {
      const row = rows[i]!;
      const took = await loads(space, row.n, SAMPLES, random);
      row.p50s.push(percentile(took, 50));
      row.p99s.push(percentile(took, 99));
      for (const floor of row.floors) {
        const took = await loads(floor, row.n, SAMPLES, random);
        floor.p50s.push(percentile(took, 50));
        floor.p99s.push(percentile(took, 99));
      }
    }
  }
} finally {
  for (const space of spaces) await space.close();
  await backend.close();
}

console.log(
  `${kind} store load latency: ${ROUNDS} interleaved rounds of ${SAMPLES} sequential loads of random live keys per size; medians of the rounds' p50 and p99`,
);
for (const row of rows) {
  for (const floor of row.floors) {
    console.log(
      `  ${String(row.n).padStart(9)} keys      p50 ${median(floor.p50s).toFixed(2).padStart(8)} µs  p99 ${median(floor.p99s).toFixed(2).padStart(8)} µs  (${floor.label})`,
    );
  }
  console.log(
    `  ${String(row.n).padStart(9)} sessions  p50 ${median(row.p50s).toFixed(2).padStart(8)} µs  p99 ${median(
      row.p99s,
    )
      .toFixed(2)
      .padStart(
        8,
      )} µs  (quietest round: p50 ${Math.min(...row.p50s).toFixed(2)}, p99 ${Math.min(...row.p99s).toFixed(2)}; filled in ${row.fillS.toFixed(1)} s; rounds' p50 ${row.p50s.map((x) => x.toFixed(2)).join(' ')}; p99 ${row.p99s.map((x) => x.toFixed(1)).join(' ')})`,
  );
}

const first = rows[0]!;
const last = rows.at(-1)!;
if (first.floors.length > 0 && rows.length > 1) {
  // What the store adds to a bare hash lookup, per size: a constant factor means that the growth
  // from 1k to 1M is the machine's (cache and TLB misses), which no store on one Map can avoid.
  const over = (r: Row, pick: (x: { p50s: number[]; p99s: number[] }) => number[]) =>
    median(pick(r)) / median(pick(r.floors[0]!));
  const grows = (i: number, pick: (x: Floor) => number[]) =>
    (median(pick(last.floors[i]!)) / median(pick(first.floors[i]!))).toFixed(2);
  console.log(
    `  the store over the floor: p50 ${rows.map((r) => `${over(r, (x) => x.p50s).toFixed(2)}x`).join(', ')}; p99 ${rows
      .map((r) => `${over(r, (x) => x.p99s).toFixed(2)}x`)
      .join(
        ', ',
      )} (at ${rows.map((r) => r.n).join(', ')}); the floor itself grows ${grows(0, (x) => x.p50s)}x (p50) and ${grows(0, (x) => x.p99s)}x (p99) from ${first.n} to ${last.n}`,
  );
  console.log(
    `  the floor without a Map grows ${grows(1, (x) => x.p50s)}x (p50) and ${grows(1, (x) => x.p99s)}x (p99) from ${first.n} to ${last.n}`,
  );
}
if (rows.length > 1) {
  for (const [label, pick] of [
    ['p50', (r: Row) => median(r.p50s)],
    ['p99', (r: Row) => median(r.p99s)],
  ] as const) {
    const ratio = pick(last) / pick(first);
    verdict(
      `${kind} load ${label} at ${last.n} within 1.5x of ${first.n}`,
      ratio <= 1.5,
      `${pick(first).toFixed(2)} -> ${pick(last).toFixed(2)} µs (${ratio.toFixed(2)}x)`,
    );
  }
}
for (const b of bytes.filter((x) => x.n >= 100_000 || x.n === MAX)) {
  verdict(
    `memory store bytes per small session at ${b.n} <= 600`,
    Math.max(b.filled, b.loaded) <= 600,
    `${b.filled.toFixed(0)} after the fill, ${b.loaded.toFixed(0)} after loads (heap + ArrayBuffers, after full GC)`,
  );
}
