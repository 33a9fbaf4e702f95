/**
 * FileStore alone, without HTTP: the cost of `load` and `commit` as the store sees them.
 *
 *   npx tsx bench/file-store.ts [--reps 5] [--seconds 1] [--only <substring>]...
 *                               [--impl <module path>]... [--dir <parent directory>]
 *
 * Scenarios (each a fixed number of concurrent callers looping for `--seconds`):
 *   load, 50 concurrent, distinct keys
 *   commit, 50 concurrent, distinct keys           (fsync true, fsync false)
 *   load + commit, 50 concurrent, distinct keys    (fsync true, fsync false: a write request)
 *   commit, 10 concurrent, ONE key                  (fsync true, fsync false)
 * Each line reports wall µs per operation (elapsed time / operations) and process CPU µs per
 * operation (`process.cpuUsage`, user + system, which counts the libuv thread pool too), the
 * median of `--reps` repetitions. Repetitions are interleaved (every scenario of every
 * implementation once, then again), so that a noisy neighbour on the machine weighs on all of
 * them alike. `--impl` (repeatable) names a module exporting `FileStore` to compare with the
 * one in src/ (for example a copy of an older src/stores/file.ts, its relative imports made
 * absolute), optionally with constructor options as a query (`src/stores/file.ts?io=async`):
 * each gets the same runs. The one-key scenario also checks that no acknowledged write was lost.
 *
 * To measure the version before a change:
 *   git show HEAD:src/stores/file.ts | sed -e "s#'\.\./errors\.js'#'$PWD/src/errors.js'#" \
 *     -e "s#'\./kit\.js'#'$PWD/src/stores/kit.js'#" -e "s#'\./store\.js'#'$PWD/src/stores/store.js'#" \
 *     > /tmp/file-before.ts
 *   npx tsx bench/file-store.ts --impl /tmp/file-before.ts --impl src/stores/file.ts
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { SessionStore, StoredSession } from '../src/stores/store.js';
import { median } from './lib/stats.js';

const { values: args } = parseArgs({
  options: {
    reps: { type: 'string', default: '5' },
    seconds: { type: 'string', default: '1' },
    only: { type: 'string', multiple: true },
    impl: { type: 'string', multiple: true },
    dir: { type: 'string', default: tmpdir() },
  },
});
const REPS = Number(args.reps);
const SECONDS = Number(args.seconds);
const ONLY = (args.only ?? []).map((s) => s.toLowerCase());

type StoreClass = new (options: {
  dir: string;
  fsync?: boolean;
}) => SessionStore & {
  close(): Promise<void>;
};
/** `--impl path[?option=value&…]`: the options are passed to the constructor (`?io=async`). */
const impls: { name: string; FileStore: StoreClass; options: Record<string, string | number> }[] = [];
for (const spec of args.impl?.length ? args.impl : ['src/stores/file.ts']) {
  const [path = '', query = ''] = spec.split('?');
  const mod = (await import(pathToFileURL(resolve(path)).href)) as { FileStore: StoreClass };
  impls.push({
    name: spec,
    FileStore: mod.FileStore,
    // Whole numbers as numbers (`?flushThreads=0`), the rest as text (`?io=async`).
    options: Object.fromEntries(
      [...new URLSearchParams(query)].map(([k, v]) => [k, /^\d+$/.test(v) ? Number(v) : v]),
    ),
  });
}

const HOUR = 3_600_000;
const keyOf = (i: number) => `bench${String(i).padStart(6, '0')}${'k'.repeat(32)}`;
/** About the size of a real session: handle hashes, a CSRF token, a few values. */
function record(i: number): StoredSession {
  const now = Date.now();
  return {
    meta: {
      createdAt: now,
      lastSeenAt: now,
      deadline: now + 12 * HOUR,
      h: 'h'.repeat(43),
      idAt: now,
    },
    values: { 'v:k': '"hello"', 's:csrf': `"${'c'.repeat(43)}"`, 'v:n': String(i) },
  };
}

interface Scenario {
  name: string;
  fsync: boolean;
  callers: number;
  /** One operation of caller `c` (its `n`th); resolves when it is acknowledged. */
  op: (store: SessionStore, c: number, n: number) => Promise<unknown>;
  keys: number;
  check?: (store: SessionStore, last: number[]) => Promise<string | null>;
}

const ONE = 10;
const load: Scenario = {
  name: 'load, 50 concurrent, distinct keys',
  fsync: true,
  callers: 50,
  keys: 50,
  op: async (store, c) => {
    if (!(await store.load(keyOf(c)))) throw new Error('load found nothing');
  },
};
/** Caller `c` commits a change to its own session. */
const commitOwn: Scenario['op'] = async (store, c, n) => {
  const delta = { set: { 'v:n': String(n) }, unset: [], meta: { lastSeenAt: Date.now() } };
  const result = await store.commit(keyOf(c), delta, HOUR, { userId: null });
  if (result !== 'ok') throw new Error(`commit answered ${result}`);
};
const scenarios: Scenario[] = [
  load,
  ...[true, false].flatMap((fsync): Scenario[] => [
    {
      name: `commit, 50 concurrent, distinct keys, fsync ${fsync}`,
      fsync,
      callers: 50,
      keys: 50,
      op: commitOwn,
    },
    {
      // What a write request does: the manager loads the session, then commits its change.
      name: `load + commit, 50 concurrent, distinct keys, fsync ${fsync}`,
      fsync,
      callers: 50,
      keys: 50,
      op: async (store, c, n) => {
        await load.op(store, c, n);
        await commitOwn(store, c, n);
      },
    },
    {
      name: `commit, ${ONE} concurrent, ONE key, fsync ${fsync}`,
      fsync,
      callers: ONE,
      keys: 1,
      op: async (store, c, n) => {
        const delta = { set: { [`v:c${c}`]: String(n) }, unset: [], meta: { lastSeenAt: Date.now() } };
        const result = await store.commit(keyOf(0), delta, HOUR, { userId: null });
        if (result !== 'ok') throw new Error(`commit answered ${result}`);
      },
      check: async (store, last) => {
        const values = (await store.load(keyOf(0)))?.values ?? {};
        const lost = last.filter((n, c) => n >= 0 && values[`v:c${c}`] !== String(n));
        return lost.length ? `${lost.length} callers' last acknowledged write is missing` : null;
      },
    },
  ]),
].filter((s) => ONLY.length === 0 || ONLY.some((o) => s.name.toLowerCase().includes(o)));

/** One store per implementation and fsync mode, with every session created up front. */
const root = mkdtempSync(join(args.dir, 'sessionflow-file-bench-'));
process.on('exit', () => rmSync(root, { recursive: true, force: true }));
const stores = new Map<string, SessionStore & { close(): Promise<void> }>();
async function storeFor(impl: number, fsync: boolean) {
  const id = `${impl}-${fsync}`;
  let store = stores.get(id);
  if (!store) {
    store = new impls[impl]!.FileStore({ ...impls[impl]!.options, dir: join(root, id), fsync });
    await Promise.all(Array.from({ length: 50 }, (_, i) => store!.create(keyOf(i), record(i), HOUR)));
    stores.set(id, store);
  }
  return store;
}

interface Sample {
  wall: number;
  cpu: number;
  ops: number;
}

async function run(scenario: Scenario, store: SessionStore): Promise<Sample> {
  const last = Array.from({ length: scenario.callers }, () => -1);
  let ops = 0;
  const deadline = performance.now() + SECONDS * 1000;
  const cpu = process.cpuUsage();
  const started = performance.now();
  await Promise.all(
    last.map(async (_, c) => {
      for (let n = 0; performance.now() < deadline; n++) {
        await scenario.op(store, c, n);
        last[c] = n;
        ops++;
      }
    }),
  );
  const elapsed = performance.now() - started;
  const used = process.cpuUsage(cpu);
  const problem = await scenario.check?.(store, last);
  if (problem) throw new Error(`${scenario.name}: ${problem}`);
  return { wall: (elapsed * 1000) / ops, cpu: (used.user + used.system) / ops, ops };
}

const samples = new Map<string, Sample[]>();
// One unmeasured round first (JIT, page cache, directory entries).
for (let rep = -1; rep < REPS; rep++) {
  for (const scenario of scenarios) {
    for (let impl = 0; impl < impls.length; impl++) {
      const store = await storeFor(impl, scenario.fsync);
      const sample = await run(scenario, store);
      if (rep < 0) continue;
      const id = `${scenario.name}|${impl}`;
      samples.set(id, [...(samples.get(id) ?? []), sample]);
    }
  }
}

console.log(
  `FileStore alone: median of ${REPS} interleaved runs of ${SECONDS} s each (wall µs/op | process CPU µs/op, ops per run)`,
);
for (const scenario of scenarios) {
  console.log(`\n${scenario.name}`);
  for (let impl = 0; impl < impls.length; impl++) {
    const s = samples.get(`${scenario.name}|${impl}`) ?? [];
    const wall = median(s.map((x) => x.wall));
    const cpu = median(s.map((x) => x.cpu));
    const ops = median(s.map((x) => x.ops));
    console.log(
      `  ${impls[impl]!.name.padEnd(40)} wall ${wall.toFixed(1).padStart(8)} µs/op   cpu ${cpu.toFixed(1).padStart(7)} µs/op   (${ops} ops)`,
    );
  }
}
for (const store of stores.values()) await store.close();
