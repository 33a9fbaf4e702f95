/**
 * `npm run bench`: sessionflow against its peers, in one run, printed as one table.
 *
 * Every scenario's server runs in its own child process on 127.0.0.1 (an ephemeral port it
 * reports over IPC); autocannon runs here, in the parent. Scenarios run one after another, so
 * on a 2-core machine one core serves and one core generates load. Ratios are taken against the
 * bare node:http server (and plain Express / plain Fastify) measured in the same run.
 *
 *   npx tsx bench/run.ts [--duration 4] [--connections 50] [--warmup 1] [--only <substring>]...
 *                        [--json results.json]
 */
import { type ChildProcess, fork, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import autocannon, { type Result } from 'autocannon';
import Table from 'cli-table3';
import { createClient } from 'redis';
import { dropTables, probePostgres } from './lib/postgres.js';
import { setupSessions } from './lib/sessions.js';
import { type MedianInterval, median, medianInterval } from './lib/stats.js';
import type { ServerConfig, ServerMessage, StoreKind } from './servers/_shared.js';

// ---- options ---------------------------------------------------------------------------------

const USAGE = `Usage: npm run bench -- [options]

  --duration <s>       measured seconds per row (default 4)
  --connections <n>    concurrent connections, each with its own session (default 50)
  --warmup <s>         unmeasured seconds before a server's first row, half of it before the
                       others (default 1)
  --only <substring>   run only rows whose id or label contains it (repeatable); the baselines
                       the selected rows are compared with always run too
  --rounds <n>         run everything n times: each row shows its best round, its ratios the
                       median of its rounds (default 1)
  --slices <n>         measure each row in n slices, each beside runs of its baselines
                       (default 4; with an even number a steady drift of the machine cancels out)
  --json <file>        also write the raw results as JSON
  --profile <dir>      run each server with --cpu-prof; V8 CPU profiles go to <dir>/<server>/
  --no-build           use dist/ as it is (by default the package is built first: the servers
                       run the compiled library, as users do)
  -h, --help           this text`;

function positive(name: string, raw: string, integer: boolean): number {
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    console.error(`--${name} must be a positive ${integer ? 'integer' : 'number'} (got ${raw})\n\n${USAGE}`);
    process.exit(2);
  }
  return n;
}

const { values: args } = (() => {
  try {
    return parseArgs({
      allowNegative: true,
      options: {
        duration: { type: 'string', default: '4' },
        connections: { type: 'string', default: '50' },
        warmup: { type: 'string', default: '1' },
        rounds: { type: 'string', default: '1' },
        slices: { type: 'string', default: '4' },
        only: { type: 'string', multiple: true },
        json: { type: 'string' },
        profile: { type: 'string' },
        build: { type: 'boolean', default: true },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    console.error(`${(err as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
})();
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}
const DURATION = positive('duration', args.duration, false);
const CONNECTIONS = positive('connections', args.connections, true);
const WARMUP = Number(args.warmup) === 0 ? 0 : positive('warmup', args.warmup, false);
const ROUNDS = positive('rounds', args.rounds, true);
const SLICES = positive('slices', args.slices, true);
const ONLY = (args.only ?? []).map((s) => s.toLowerCase());

// ---- scenarios -------------------------------------------------------------------------------

/**
 * read: a valid session, reads one key, changes nothing. write: sets a key on every request.
 * write1: like write, but every connection (ONE_SESSION_CONNECTIONS of them) writes the same
 * session. create: a new visitor (no cookie) whose session is written. anon: a visitor whose
 * session is never touched.
 */
type Mode = 'read' | 'write' | 'write1' | 'create' | 'anon';
type Family = 'http' | 'express' | 'fastify';

interface ServerSpec {
  /** File in bench/servers/. */
  file: string;
  store?: StoreKind;
  /** Needs a Redis server; `sessionflow` also needs src/stores/redis.ts. */
  redis?: 'peer' | 'sessionflow';
  /** Needs the PostgreSQL server (a table of its own, dropped at the end). */
  postgres?: true;
  /** Baselines answer without a session: no setup request. */
  baseline?: boolean;
  /**
   * A control: a baseline's server changed in one way (no session either, so no setup request),
   * measured against the baselines like a row, to show what that change alone costs.
   */
  control?: true;
  /** Express baseline only: a middleware that waits this long on a timer before each request. */
  waitMs?: number;
  /** Express baseline only: `req` and `res` put into V8's dictionary mode, as session() does. */
  dictionaryMode?: true;
  /** FileStore only: `fsync: false` (see the durability table in docs/stores.md). */
  fsync?: false;
}

const SERVERS = {
  bare: { file: 'bare.ts', baseline: true },
  sfHttpMemory: { file: 'sessionflow-http.ts', store: 'memory' },
  sfHttpFile: { file: 'sessionflow-http.ts', store: 'file' },
  sfHttpFileNoSync: { file: 'sessionflow-http.ts', store: 'file', fsync: false },
  sfHttpRedis: { file: 'sessionflow-http.ts', store: 'redis', redis: 'sessionflow' },
  sfHttpPostgres: { file: 'sessionflow-http.ts', store: 'postgres', postgres: true },
  express: { file: 'express.ts', baseline: true },
  // What Express alone pays when a middleware waits for I/O, as a store's load does: 5 ms is
  // about what PostgreSQL loads take under the Express + PostgreSQL row's load here.
  expressWait: { file: 'express.ts', control: true, waitMs: 5 },
  // What sessionflow's session() saves Express by moving `req` and `res` into V8's dictionary
  // mode, apart from what the session costs: the same move in plain Express, nothing else.
  expressDict: { file: 'express.ts', control: true, dictionaryMode: true },
  sfExpressMemory: { file: 'sessionflow-express.ts', store: 'memory' },
  sfExpressFile: { file: 'sessionflow-express.ts', store: 'file' },
  sfExpressRedis: { file: 'sessionflow-express.ts', store: 'redis', redis: 'sessionflow' },
  sfExpressPostgres: { file: 'sessionflow-express.ts', store: 'postgres', postgres: true },
  esMemory: { file: 'express-session.ts', store: 'memory' },
  esRedis: { file: 'express-session.ts', store: 'redis', redis: 'peer' },
  esFile: { file: 'express-session.ts', store: 'file' },
  fastify: { file: 'fastify.ts', baseline: true },
  sfFastifyMemory: { file: 'sessionflow-fastify.ts', store: 'memory' },
  fastifySession: { file: 'fastify-session.ts', store: 'memory' },
  iron: { file: 'iron-session.ts' },
} satisfies Record<string, ServerSpec>;
type ServerId = keyof typeof SERVERS;

interface RowSpec {
  id: string;
  label: string;
  server: ServerId;
  mode: Mode;
  family: Family;
}

/** Read, write and create: the modes of the stores and peers measured for new visitors too. */
const RWC: Mode[] = ['read', 'write', 'create'];

/** Display order. Rows of one server run together, whatever their place here. */
const ROWS: RowSpec[] = (
  [
    { id: 'bare', label: 'bare node:http (no session)', server: 'bare', mode: 'read', family: 'http' },
    row('sf-http-memory', 'sessionflow + node:http + MemoryStore', 'sfHttpMemory', 'http', RWC),
    row('sf-http-file', 'sessionflow + node:http + FileStore', 'sfHttpFile', 'http', [
      'read',
      'write',
      'write1',
      'create',
    ]),
    row(
      'sf-http-file-nofsync',
      'sessionflow + node:http + FileStore (fsync: false)',
      'sfHttpFileNoSync',
      'http',
      ['write', 'write1'],
    ),
    row('sf-http-redis', 'sessionflow + node:http + RedisStore', 'sfHttpRedis', 'http', RWC),
    row('sf-http-postgres', 'sessionflow + node:http + PostgresStore', 'sfHttpPostgres', 'http', RWC),
    {
      id: 'sf-http-anon',
      label: 'sessionflow anonymous visitor (node:http, memory)',
      server: 'sfHttpMemory',
      mode: 'anon',
      family: 'http',
    },
    {
      id: 'express',
      label: 'plain Express 5 (no session)',
      server: 'express',
      mode: 'read',
      family: 'express',
    },
    {
      id: 'express-wait-read',
      label: 'plain Express 5 + a 5 ms wait in a middleware (no session; control)',
      server: 'expressWait',
      mode: 'read',
      family: 'express',
    },
    {
      id: 'express-dict-read',
      label: 'plain Express 5, req and res in dictionary mode (no session; control)',
      server: 'expressDict',
      mode: 'read',
      family: 'express',
    },
    row('sf-express-memory', 'sessionflow + Express + MemoryStore', 'sfExpressMemory', 'express'),
    row('sf-express-file', 'sessionflow + Express + FileStore', 'sfExpressFile', 'express'),
    row('sf-express-redis', 'sessionflow + Express + RedisStore', 'sfExpressRedis', 'express'),
    row('sf-express-postgres', 'sessionflow + Express + PostgresStore', 'sfExpressPostgres', 'express', [
      'read',
    ]),
    row('express-session-memory', 'express-session + MemoryStore', 'esMemory', 'express', RWC),
    row('express-session-redis', 'express-session + connect-redis', 'esRedis', 'express'),
    row('express-session-file', 'express-session + session-file-store', 'esFile', 'express', [
      'read',
      'write',
      'write1',
    ]),
    {
      id: 'fastify',
      label: 'plain Fastify 5 (no session)',
      server: 'fastify',
      mode: 'read',
      family: 'fastify',
    },
    row('sf-fastify-memory', 'sessionflow + Fastify + MemoryStore', 'sfFastifyMemory', 'fastify', RWC),
    row('fastify-session', '@fastify/session + @fastify/cookie (memory)', 'fastifySession', 'fastify', RWC),
    row('iron-session', 'iron-session 8 (sealed cookie, node:http)', 'iron', 'http'),
  ] satisfies (RowSpec | RowSpec[])[]
).flat();

function row(
  id: string,
  label: string,
  server: ServerId,
  family: Family,
  modes: Mode[] = ['read', 'write'],
): RowSpec[] {
  return modes.map((mode) => ({ id: `${id}-${mode}`, label, server, mode, family }));
}

/** Connections of the write1 rows, all on one session (as a page firing parallel requests would). */
const ONE_SESSION_CONNECTIONS = 10;
/** In the order a server's rows run: reads see exactly what /setup left, writes go last. */
const MODE_ORDER: Mode[] = ['read', 'anon', 'create', 'write', 'write1'];
const PATH: Record<Mode, string> = {
  read: '/read',
  write: '/write',
  write1: '/write',
  create: '/setup',
  anon: '/anon',
};
/** What each route answers; autocannon counts anything else as a mismatch. */
const BODY: Record<Mode, string> = { read: 'hello', write: 'ok', write1: 'ok', create: 'ok', anon: 'anon' };
/** Baselines get a cookie of a session cookie's size, so requests weigh the same. */
const DUMMY_COOKIE = `id=${'x'.repeat(43)}.${'y'.repeat(43)}`;

/**
 * The performance targets (issue 9; listed in bench/README.md, "Targets"), checked against this
 * run's numbers. `peer`: a peer's row printed beside the verdict; `beat`: the target is met only
 * if the row is also at least as fast as that peer (same ratio base, same run); `control`: a
 * control row printed beside the verdict (it decides nothing).
 */
interface Target {
  label: string;
  row: string;
  of: 'bare' | 'express' | 'fastify';
  min: number;
  peer?: string;
  beat?: true;
  /** Control rows printed beside the verdict (they decide nothing). */
  controls?: string[];
}

const TARGETS: Target[] = [
  {
    label: 'node:http + memory store, read >= 0.75 of bare',
    row: 'sf-http-memory-read',
    of: 'bare',
    min: 0.75,
  },
  {
    label: 'node:http + file store, read >= 0.45 of bare',
    row: 'sf-http-file-read',
    of: 'bare',
    min: 0.45,
    peer: 'express-session-file-read',
  },
  // The file store's writes in each durability mode (docs/stores.md, "Durability"). fsync true,
  // the default: a power cut loses nothing acknowledged. fsync false: a process crash loses
  // nothing, a power cut the changes of the last seconds to minutes.
  ...([true, false] as const).flatMap((fsync): Target[] => {
    const mode = fsync
      ? 'fsync: true, a power cut loses nothing acknowledged'
      : 'fsync: false, a power cut loses the last seconds';
    const rows = fsync ? 'sf-http-file' : 'sf-http-file-nofsync';
    return [
      {
        label: `node:http + file store (${mode}), write (distinct sessions) >= 0.15 of bare`,
        row: `${rows}-write`,
        of: 'bare',
        min: 0.15,
        peer: 'express-session-file-write',
      },
      {
        label: `node:http + file store (${mode}), ${ONE_SESSION_CONNECTIONS} connections writing one session >= 0.05 of bare`,
        row: `${rows}-write1`,
        of: 'bare',
        min: 0.05,
        peer: 'express-session-file-write1',
      },
    ];
  }),
  {
    label: 'node:http + PostgreSQL, read >= 0.25 of bare',
    row: 'sf-http-postgres-read',
    of: 'bare',
    min: 0.25,
  },
  {
    label: 'node:http + PostgreSQL, write >= 0.12 of bare',
    row: 'sf-http-postgres-write',
    of: 'bare',
    min: 0.12,
  },
  {
    label: 'session creation (memory) >= 0.45 of bare and ahead of @fastify/session',
    row: 'sf-http-memory-create',
    of: 'bare',
    min: 0.45,
    peer: 'fastify-session-create',
    beat: true,
  },
  { label: 'node:http + Redis, read >= 0.35 of bare', row: 'sf-http-redis-read', of: 'bare', min: 0.35 },
  ...(['memory', 'file', 'redis', 'postgres'] as const).map(
    (store): Target => ({
      label: `Express + ${store} store, read >= 0.85 of plain Express`,
      row: `sf-express-${store}-read`,
      of: 'express',
      min: 0.85,
      ...(store === 'postgres' ? {} : { peer: `express-session-${store}-read` }),
      // What the dictionary mode alone saves plain Express is printed beside every store; beside
      // the stores that wait for a server, also what the wait alone costs Express.
      controls:
        store === 'redis' || store === 'postgres'
          ? ['express-dict-read', 'express-wait-read']
          : ['express-dict-read'],
    }),
  ),
  {
    label: 'Fastify + memory store, read >= 0.70 of plain Fastify',
    row: 'sf-fastify-memory-read',
    of: 'fastify',
    min: 0.7,
    peer: 'fastify-session-read',
  },
  { label: 'anonymous visitor >= 0.90 of bare', row: 'sf-http-anon', of: 'bare', min: 0.9 },
];

// ---- child processes and cleanup ---------------------------------------------------------------

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(HERE, '..');
const TSX_LOADER = import.meta.resolve('tsx');
const REDIS_URL = 'redis://127.0.0.1:6379';
const RUN_ID = `${process.pid}-${randomBytes(4).toString('hex')}`;
const REDIS_PREFIX = `sfbench:${RUN_ID}:`;
const PG_URL = process.env.SESSIONFLOW_BENCH_PG ?? 'postgres://postgres@127.0.0.1:5432/test';
/** Tables of this run (one per server): `sfbench_<pid>_<random>_<server>`, dropped at the end. */
const PG_TABLE = `sfbench_${RUN_ID.replace('-', '_')}`;
const pgTables = new Set<string>();

const children = new Set<ChildProcess>();
/** File-store directories of running servers (each server also removes its own on exit). */
const tempDirs = new Set<string>();
let redis: ReturnType<typeof createClient> | undefined;
let redisKeysWritten = false;

function killChildren(): void {
  for (const child of children) child.kill('SIGKILL');
  children.clear();
}

async function removeRedisKeys(): Promise<number> {
  if (!redis?.isOpen || !redisKeysWritten) return 0;
  let removed = 0;
  for await (const keys of redis.scanIterator({ MATCH: `${REDIS_PREFIX}*`, COUNT: 1000 })) {
    if (keys.length > 0) removed += await redis.unlink(keys);
  }
  return removed;
}

async function cleanup(): Promise<void> {
  killChildren();
  try {
    await dropTables(PG_URL, pgTables);
  } catch (err) {
    console.error(`could not drop the benchmark's tables (${PG_TABLE}_*): ${(err as Error).message}`);
  }
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
  try {
    await removeRedisKeys();
  } catch (err) {
    console.error(
      `could not remove the benchmark's Redis keys (${REDIS_PREFIX}*): ${(err as Error).message}`,
    );
  }
  if (redis?.isOpen) await redis.close().catch(() => undefined);
}

let exiting = false;
function abort(code: number, error?: unknown): void {
  if (exiting) return;
  exiting = true;
  if (error) console.error(error);
  setTimeout(() => process.exit(code), 3000).unref();
  cleanup().finally(() => process.exit(code));
}
process.on('exit', killChildren);
process.on('SIGINT', () => abort(130));
process.on('SIGTERM', () => abort(143));
process.on('uncaughtException', (err) => abort(1, err));
process.on('unhandledRejection', (err) => abort(1, err));

interface Running {
  child: ChildProcess;
  port: number;
}

/** One directory per server: Node writes one profile per thread (main + module loader). */
function profileName(spec: ServerSpec, config: ServerConfig): string {
  return `${spec.file.replace(/\.ts$/, '')}${config.store ? `-${config.store}` : ''}${config.waitMs ? `-wait${config.waitMs}` : ''}${config.dictionaryMode ? '-dict' : ''}`;
}

/** Forks a server and waits for its port; `unavailable` when the scenario cannot run here. */
function startServer(spec: ServerSpec, config: ServerConfig): Promise<Running | { unavailable: string }> {
  const child = fork(join(HERE, 'servers', spec.file), [JSON.stringify(config)], {
    cwd: ROOT,
    execArgv: [
      '--import',
      TSX_LOADER,
      ...(args.profile
        ? ['--cpu-prof', `--cpu-prof-dir=${join(args.profile, profileName(spec, config))}`]
        : []),
    ],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${spec.file} did not start within 30 s`));
    }, 30_000);
    const done = () => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
    };
    const onMessage = (message: ServerMessage) => {
      if (message.type === 'ready') {
        done();
        resolve({ child, port: message.port });
      } else if (message.type === 'unavailable') {
        done();
        resolve({ unavailable: message.reason });
      } else if (message.type === 'error') {
        done();
        reject(new Error(`${spec.file} failed to start:\n${message.message}`));
      }
    };
    const onExit = (code: number | null, signal: string | null) => {
      done();
      reject(new Error(`${spec.file} exited while starting (code ${code}, signal ${signal})`));
    };
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(timer);
}

/** The server's own CPU time (user + system, µs), asked over IPC. */
function serverCpu(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.off('message', onMessage);
      reject(new Error('server did not report its CPU usage'));
    }, 2000);
    const onMessage = (message: ServerMessage) => {
      if (message.type !== 'cpu') return;
      clearTimeout(timer);
      child.off('message', onMessage);
      resolve(message.usage.user + message.usage.system);
    };
    child.on('message', onMessage);
    child.send({ type: 'cpu' });
  });
}

/** Busy CPU time of the whole machine (all cores, all processes), in µs. */
function machineBusyUs(): number {
  let busy = 0;
  for (const { times } of cpus()) busy += times.user + times.nice + times.sys + times.irq;
  return busy * 1000;
}

/** CPU time the hypervisor gave to other guests (Linux `steal`) and all CPU time, in ticks. */
function stealTicks(): { steal: number; total: number } | undefined {
  try {
    const fields = readFileSync('/proc/stat', 'utf8')
      .split('\n', 1)[0]!
      .trim()
      .split(/\s+/)
      .slice(1, 9)
      .map(Number);
    return { steal: fields[7] ?? 0, total: fields.reduce((a, b) => a + b, 0) };
  } catch {
    return undefined; // not Linux
  }
}

/** Share of one core that processes other than this benchmark used, sampled while it is idle. */
async function otherLoad(ms: number): Promise<number> {
  const m0 = machineBusyUs();
  const own0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, ms));
  const own = process.cpuUsage(own0);
  return Math.max(0, machineBusyUs() - m0 - own.user - own.system) / (ms * 1000);
}

// ---- measuring -------------------------------------------------------------------------------

interface RowResult {
  id: string;
  label: string;
  mode: Mode;
  family: Family;
  status: 'ok' | 'n/a' | 'failed';
  reason?: string;
  /** Completed requests per second over the measured window. */
  rps?: number;
  /** Latency percentiles in milliseconds: the medians of the slices' (see `measure`). */
  p50?: number;
  p99?: number;
  errors?: number;
  timeouts?: number;
  non2xx?: number;
  mismatches?: number;
  /** Share of one core used by the server / by this process (the load generator). */
  serverCpu?: number;
  loadgenCpu?: number;
  /** Share of the machine's CPU time taken by the hypervisor for other guests (Linux only). */
  steal?: number;
  /** Server CPU time per completed request, in µs: what the server spends, whoever is the bottleneck. */
  serverUsPerRequest?: number;
  /** Share of one core used by everything else on the machine meanwhile (Redis, other jobs). */
  otherCpu?: number;
  vsBare?: number;
  vsFramework?: number;
  /**
   * Baselines measured right beside the row, in req/s: bare node:http (`bare`) and, for an
   * Express or Fastify row, plain Express or plain Fastify (`framework`). The row is measured in
   * `--slices` parts, each next to a run of every baseline (before one slice, after the next, in
   * the reverse order), the baselines together for as long as the row. The row's ratios are
   * taken against these, so a machine whose speed changes during the run (a shared host)
   * changes both sides alike.
   */
  beside?: { bare?: number; framework?: number };
  /** rps / beside; with --rounds > 1, the median over the rounds. */
  ratios?: { bare?: number; framework?: number };
  /** With --rounds > 1: req/s of every round (the row shows the best). */
  rounds?: number[];
  /** With --rounds > 1: the ratios of every round. */
  roundRatios?: { bare?: number; framework?: number }[];
  /**
   * Each slice's req/s over the run of the baseline next to it (every round's slices): how far
   * the ratio moved within the row, printed beside the verdicts.
   */
  sliceRatios?: { bare?: number[]; framework?: number[] };
}

function load(port: number, mode: Mode, cookies: string[] | null, seconds: number): Promise<Result> {
  let next = 0;
  return Promise.resolve(
    autocannon({
      url: `http://127.0.0.1:${port}${PATH[mode]}`,
      connections: mode === 'write1' ? ONE_SESSION_CONNECTIONS : CONNECTIONS,
      duration: seconds,
      // autocannon ends a run at its next sample after `duration`: samples every 100 ms keep a
      // half-second slice from lasting a whole second (it counts the time it really ran).
      sampleInt: 100,
      expectBody: BODY[mode],
      ...(cookies
        ? { setupClient: (client) => client.setHeaders({ cookie: cookies[next++ % cookies.length]! }) }
        : {}),
    }),
  );
}

async function measure(
  running: Running,
  spec: RowSpec,
  cookies: string[] | null,
  warmup: number,
  bases: Bases,
): Promise<RowResult> {
  if (warmup > 0) await load(running.port, spec.mode, cookies, warmup);
  // The host's speed changes within seconds (bench/README.md), so the row is measured in SLICES
  // parts, each next to a run of every baseline: baselines, row | row, baselines (reverse order)
  // | baselines, row | ... A change of the machine's speed then weighs on the row and its
  // baselines alike, and one that runs steadily through a pair of slices cancels out. The
  // baselines together get as much time as the row.
  const slice = DURATION / SLICES;
  const each = slice / (bases.framework ? 2 : 1);
  const baseRuns: Record<'bare' | 'framework', Result[]> = { bare: [], framework: [] };
  const runBases = async (order: readonly ('bare' | 'framework')[]) => {
    for (const name of order) {
      const base = bases[name];
      if (base) baseRuns[name].push(await load(base.port, 'read', [DUMMY_COOKIE], each));
    }
  };
  const parts: Result[] = [];
  let srvUs = 0;
  let wallUs = 0;
  let genUs = 0;
  let machine = 0;
  let steal = 0;
  let ticks = 0;
  for (let k = 0; k < SLICES; k++) {
    const basesFirst = k % 2 === 0;
    if (basesFirst) await runBases(['bare', 'framework']);
    const srv0 = await serverCpu(running.child);
    const gen0 = process.cpuUsage();
    const m0 = machineBusyUs();
    const s0 = stealTicks();
    const t0 = process.hrtime.bigint();
    parts.push(await load(running.port, spec.mode, cookies, slice));
    wallUs += Number(process.hrtime.bigint() - t0) / 1000;
    const gen = process.cpuUsage(gen0);
    genUs += gen.user + gen.system;
    machine += machineBusyUs() - m0;
    const s1 = stealTicks();
    if (s0 && s1 && s1.total > s0.total) {
      steal += s1.steal - s0.steal;
      ticks += s1.total - s0.total;
    }
    srvUs += (await serverCpu(running.child)) - srv0;
    if (!basesFirst) await runBases(['framework', 'bare']);
  }
  const sum = (results: Result[], of: (r: Result) => number) => results.reduce((a, r) => a + of(r), 0);
  const requests = sum(parts, (r) => r.requests.total);
  const rps = requests / sum(parts, (r) => r.duration);
  const beside: { bare?: number; framework?: number } = {};
  const ratios: { bare?: number; framework?: number } = {};
  const sliceRatios: { bare?: number[]; framework?: number[] } = {};
  const rate = (r: Result) => r.requests.total / r.duration;
  for (const name of ['bare', 'framework'] as const) {
    const runs = baseRuns[name];
    if (runs.length === 0) continue;
    beside[name] = sum(runs, (r) => r.requests.total) / sum(runs, (r) => r.duration);
    ratios[name] = rps / beside[name];
    // Slice k and the baseline runs next to it: runs[k] (one per slice).
    sliceRatios[name] = parts.map((part, k) => rate(part) / rate(runs[k]!));
  }
  return {
    id: spec.id,
    label: spec.label,
    mode: spec.mode,
    family: spec.family,
    status: 'ok',
    rps,
    ...(Object.keys(beside).length > 0 ? { beside, ratios, sliceRatios } : {}),
    p50: median(parts.map((r) => r.latency.p50)),
    p99: median(parts.map((r) => r.latency.p99)),
    errors: sum(parts, (r) => r.errors),
    timeouts: sum(parts, (r) => r.timeouts),
    non2xx: sum(parts, (r) => r.non2xx),
    mismatches: sum(parts, (r) => r.mismatches),
    serverCpu: srvUs / wallUs,
    loadgenCpu: genUs / wallUs,
    otherCpu: Math.max(0, machine - srvUs - genUs) / wallUs,
    serverUsPerRequest: srvUs / requests,
    ...(ticks > 0 ? { steal: steal / ticks } : {}),
  };
}

function selected(spec: RowSpec): boolean {
  return (
    ONLY.length === 0 ||
    ONLY.some((s) => spec.id.toLowerCase().includes(s) || spec.label.toLowerCase().includes(s))
  );
}

async function redisReachable(): Promise<string | null> {
  const client = createClient({ url: REDIS_URL, socket: { connectTimeout: 2000, reconnectStrategy: false } });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.ping();
    redis = client;
    return null;
  } catch (err) {
    await client.close().catch(() => undefined);
    return `redis not reachable at 127.0.0.1:6379: ${(err as Error).message}`;
  }
}

interface RunContext {
  redisProblem: string | null;
  postgresProblem: string | null;
  /** Baseline servers measured beside the rows, kept running to the end of the run. */
  bases: Map<ServerId, Promise<Running | null>>;
}

/** The baselines measured beside a row (see `RowResult.beside`). */
interface Bases {
  bare: Running | null;
  framework: Running | null;
}

/** A running baseline server (started and warmed at its first use, then kept). */
function baseline(id: 'bare' | 'express' | 'fastify', context: RunContext): Promise<Running | null> {
  let base = context.bases.get(id);
  if (!base) {
    base = startServer(SERVERS[id], {}).then(
      async (running) => {
        if ('unavailable' in running) return null;
        if (WARMUP > 0) await load(running.port, 'read', [DUMMY_COOKIE], WARMUP);
        return running;
      },
      () => null,
    );
    context.bases.set(id, base);
  }
  return base;
}

/** Starts one server, measures its rows in the given order, stops it and removes its files. */
async function runServer(
  serverId: ServerId,
  own: RowSpec[],
  context: RunContext,
  report: (row: RowSpec, result: RowResult) => void,
): Promise<void> {
  const spec: ServerSpec = SERVERS[serverId];
  const skip = (reason: string, status: 'n/a' | 'failed') => {
    for (const r of own)
      report(r, { id: r.id, label: r.label, mode: r.mode, family: r.family, status, reason });
  };
  if (spec.redis && context.redisProblem) return skip(context.redisProblem, 'n/a');
  if (spec.postgres && context.postgresProblem) return skip(context.postgresProblem, 'n/a');
  const config: ServerConfig = {};
  if (spec.store) config.store = spec.store;
  if (spec.fsync === false) config.fsync = false;
  if (spec.waitMs !== undefined) config.waitMs = spec.waitMs;
  if (spec.dictionaryMode) config.dictionaryMode = true;
  if (spec.store === 'file') {
    config.dir = mkdtempSync(join(tmpdir(), `sessionflow-bench-${serverId}-`));
    tempDirs.add(config.dir);
  }
  if (spec.redis) {
    config.redisUrl = REDIS_URL;
    config.prefix = `${REDIS_PREFIX}${serverId}:`;
    redisKeysWritten = true;
  }
  if (spec.postgres) {
    config.pgUrl = PG_URL;
    config.table = `${PG_TABLE}_${serverId.toLowerCase()}`;
    pgTables.add(config.table);
  }
  let running: Running | { unavailable: string };
  try {
    running = await startServer(spec, config);
  } catch (err) {
    console.error((err as Error).message);
    return skip(`server failed: ${(err as Error).message.split('\n')[0]}`, 'failed');
  }
  if ('unavailable' in running) return skip(running.unavailable, 'n/a');
  try {
    let sessions: string[] | undefined;
    for (const [index, r] of own.entries()) {
      let result: RowResult;
      try {
        let cookies: string[] | null = null;
        if (spec.baseline || spec.control)
          cookies = r.mode === 'anon' || r.mode === 'create' ? null : [DUMMY_COOKIE];
        else if (r.mode !== 'anon' && r.mode !== 'create') {
          sessions ??= await setupSessions(running.port, CONNECTIONS, BODY.read);
          cookies = r.mode === 'write1' ? [sessions[0]!] : sessions;
        }
        const bases: Bases = {
          bare: spec.baseline ? null : await baseline('bare', context),
          framework: spec.baseline || r.family === 'http' ? null : await baseline(r.family, context),
        };
        // The server is warm after its first row: later rows only warm their own route.
        result = await measure(running, r, cookies, index === 0 ? WARMUP : WARMUP / 2, bases);
      } catch (err) {
        const reason = (err as Error).message;
        result = { id: r.id, label: r.label, mode: r.mode, family: r.family, status: 'failed', reason };
      }
      report(r, result);
    }
  } finally {
    await stopServer(running.child);
    if (config.dir) {
      rmSync(config.dir, { recursive: true, force: true });
      tempDirs.delete(config.dir);
    }
  }
}

/** Builds dist/ (the servers load the compiled library); exits if the build fails. */
function build(): void {
  if (!args.build) return;
  process.stderr.write('building dist/ (npm run build; --no-build skips it)\n');
  const built = spawnSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: 'inherit' });
  if (built.status !== 0) {
    console.error('npm run build failed: the benchmark runs the compiled library and needs a build.');
    process.exit(1);
  }
}

async function main(): Promise<void> {
  build();
  const picked = ROWS.filter(selected);
  if (picked.length === 0) {
    console.error(`--only ${ONLY.join(', ')} matches no row; row ids: ${ROWS.map((r) => r.id).join(', ')}`);
    process.exit(2);
  }
  // Ratios need their baselines measured in the same run.
  const wanted = new Set(picked.map((r) => r.id));
  wanted.add('bare');
  if (picked.some((r) => r.family === 'express')) wanted.add('express');
  if (picked.some((r) => r.family === 'fastify')) wanted.add('fastify');
  const rows = ROWS.filter((r) => wanted.has(r.id));

  const cpu = cpus();
  const machine = {
    cpus: cpu.length,
    cpuModel: cpu[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    os: `${process.platform} ${release()}`,
    loadAverage: loadavg().map((n) => Math.round(n * 100) / 100),
    otherLoadBeforeRun: 0,
  };
  console.log(
    `sessionflow bench: ${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, Node ${machine.node}, ${machine.os}`,
  );
  console.log(
    `${rows.length} rows${ROUNDS > 1 ? ` × ${ROUNDS} rounds (best req/s shown, median ratio)` : ''}, ${CONNECTIONS} connections, ${WARMUP} s warm-up + ${DURATION} s measured each, in ${SLICES} slice${SLICES > 1 ? 's' : ''} between runs of its baselines; load average at start ${machine.loadAverage.join(' ')}`,
  );
  if (machine.cpus < 2)
    console.log('warning: fewer than 2 cores: the server and the load generator share one.');
  const idleOther = await otherLoad(1000);
  machine.otherLoadBeforeRun = idleOther;
  console.log(`other processes used ${fmtPct(idleOther)} of a core just before the run`);
  if (idleOther > 0.15)
    console.log(
      'warning: the machine is busy with other work; numbers will be lower and noisier than usual.',
    );

  const redisProblem = rows.some((r) => 'redis' in SERVERS[r.server]) ? await redisReachable() : null;
  const postgresProblem = rows.some((r) => 'postgres' in SERVERS[r.server])
    ? await probePostgres(PG_URL)
    : null;

  const runs = new Map<string, RowResult[]>(rows.map((r) => [r.id, []]));
  const order: ServerId[] = [...new Set(rows.map((r) => r.server))];
  const total = rows.length * ROUNDS;
  let done = 0;
  const context: RunContext = { redisProblem, postgresProblem, bases: new Map() };
  const outcome = (result: RowResult) =>
    result.status === 'ok' ? `${fmtInt(result.rps!)} req/s` : result.reason!;
  for (let round = 0; round < ROUNDS; round++) {
    for (const serverId of order) {
      const own = rows
        .filter((r) => r.server === serverId)
        .sort((a, b) => MODE_ORDER.indexOf(a.mode) - MODE_ORDER.indexOf(b.mode));
      await runServer(serverId, own, context, (r, result) => {
        runs.get(r.id)!.push(result);
        progress(++done, total, r, outcome(result));
      });
    }
  }
  // Background load only ever slows a run down: with several rounds, keep each row's best.
  const results = new Map<string, RowResult>();
  for (const [id, list] of runs) {
    const ok = list.filter((r) => r.status === 'ok');
    const best = ok.length > 0 ? ok.reduce((a, b) => (b.rps! > a.rps! ? b : a)) : list[0]!;
    const ratios: { bare?: number; framework?: number } = {};
    const sliceRatios: { bare?: number[]; framework?: number[] } = {};
    for (const name of ['bare', 'framework'] as const) {
      const each = ok.flatMap((r) => (r.ratios?.[name] === undefined ? [] : [r.ratios[name]]));
      if (each.length > 0) ratios[name] = median(each);
      const slices = ok.flatMap((r) => r.sliceRatios?.[name] ?? []);
      if (slices.length > 0) sliceRatios[name] = slices;
    }
    results.set(
      id,
      ROUNDS > 1 && ok.length > 0
        ? {
            ...best,
            rounds: ok.map((r) => r.rps!),
            ...(best.ratios ? { ratios, roundRatios: ok.map((r) => r.ratios ?? {}), sliceRatios } : {}),
          }
        : best,
    );
  }
  for (const base of context.bases.values()) {
    const running = await base;
    if (running) await stopServer(running.child);
  }
  // The machine may be shared: measure the baseline again to show how much it drifted.
  let drift: { start: number; end: number } | undefined;
  const bareStart = runs.get('bare')?.[0]?.rps;
  if (bareStart !== undefined) {
    await runServer('bare', [{ ...ROWS[0]!, id: 'bare-again' }], context, (r, result) => {
      progress(done, total, { ...r, label: `${r.label}, again` }, outcome(result));
      if (result.rps !== undefined) drift = { start: bareStart, end: result.rps };
    });
  }

  const ordered = rows.map((r) => results.get(r.id)!);
  addRatios(ordered);
  console.log();
  console.log(renderTable(ordered));
  const targets = evaluateTargets(ordered);
  console.log();
  console.log(
    'Performance targets (read: a valid session, one key read, nothing changed; create: a new visitor whose session is written):',
  );
  for (const t of targets) console.log(`  ${t.verdict.padEnd(7)} ${t.label}: ${t.detail}`);
  const judged = targets.filter((t) => t.verdict !== 'n/a');
  if (judged.length > 0) {
    const open = judged.filter((t) => t.decided === false);
    console.log(
      `  ${judged.filter((t) => t.verdict === 'MET').length} of ${judged.length} met${open.length > 0 ? `; ${open.length} verdict${open.length > 1 ? 's' : ''} not decided by this run (the bar inside the interval of the slices' median): rerun ${open.length > 1 ? 'those rows' : 'that row'} with --only and --rounds 3` : ''}`,
    );
  }
  if (drift) {
    const change = drift.end / drift.start - 1;
    console.log();
    console.log(
      `baseline drift: bare node:http ${fmtInt(drift.start)} req/s at the start, ${fmtInt(drift.end)} at the end (${change >= 0 ? '+' : ''}${(change * 100).toFixed(0)}%)${Math.abs(change) > 0.1 ? ' -- over 10%: the machine was not quiet; each ratio is to baselines measured beside its row, but rerun with --rounds 3 before trusting a single row' : ''}`,
    );
  }
  // How far the baselines measured beside the rows spread: the machine's own variation.
  for (const [name, label] of [
    ['bare', 'bare node:http'],
    ['express', 'plain Express'],
    ['fastify', 'plain Fastify'],
  ] as const) {
    const beside = [...runs.values()].flat().flatMap((r) => {
      const rps = name === 'bare' ? r.beside?.bare : r.family === name ? r.beside?.framework : undefined;
      return rps === undefined ? [] : [rps];
    });
    if (beside.length < 2) continue;
    const low = Math.min(...beside);
    const high = Math.max(...beside);
    console.log(
      `${label} measured beside the rows: ${fmtInt(low)} to ${fmtInt(high)} req/s (${((high / low - 1) * 100).toFixed(0)}% apart); each row's ratios are to the baselines measured beside it`,
    );
  }
  const stolen = ordered.filter((r) => (r.steal ?? 0) > 0.05);
  if (stolen.length > 0) {
    console.log();
    console.log(
      `hypervisor steal over 5% during: ${stolen.map((r) => `${r.id} (${fmtPct(r.steal)})`).join(', ')}; those rows ran on a shared host`,
    );
  }
  const invalid = ordered.filter((r) => r.status === 'ok' && problems(r));
  if (invalid.length > 0) {
    console.log();
    console.log(
      `! rows with errors, non-2xx answers or wrong bodies: ${invalid.map((r) => r.id).join(', ')}`,
    );
  }

  if (args.json) {
    const options = {
      duration: DURATION,
      connections: CONNECTIONS,
      warmup: WARMUP,
      rounds: ROUNDS,
      slices: SLICES,
      only: ONLY,
    };
    writeFileSync(
      args.json,
      `${JSON.stringify({ date: new Date().toISOString(), machine, options, rows: ordered, targets, baselineDrift: drift ?? null }, null, 2)}\n`,
    );
    console.log(`\nraw results written to ${args.json}`);
  }
}

// ---- reporting -------------------------------------------------------------------------------

function progress(done: number, total: number, r: RowSpec, outcome: string): void {
  process.stderr.write(`[${String(done).padStart(2)}/${total}] ${r.label} (${r.mode}): ${outcome}\n`);
}

function addRatios(rows: RowResult[]): void {
  const rpsOf = (id: string) => rows.find((r) => r.id === id && r.status === 'ok')?.rps;
  const bare = rpsOf('bare');
  const framework: Partial<Record<Family, number | undefined>> = {
    express: rpsOf('express'),
    fastify: rpsOf('fastify'),
  };
  for (const r of rows) {
    if (r.status !== 'ok' || r.rps === undefined) continue;
    // Against the baselines measured beside the row (the baseline rows themselves have none).
    if (bare) r.vsBare = r.ratios?.bare ?? r.rps / bare;
    const base = framework[r.family];
    if (base) r.vsFramework = r.ratios?.framework ?? r.rps / base;
  }
}

function problems(r: RowResult): string {
  const parts: string[] = [];
  if (r.errors) parts.push(`${r.errors} errors`);
  if (r.timeouts) parts.push(`${r.timeouts} timeouts`);
  if (r.non2xx) parts.push(`${r.non2xx} non-2xx`);
  if (r.mismatches) parts.push(`${r.mismatches} wrong bodies`);
  return parts.join(', ');
}

const fmtInt = (n: number) => Math.round(n).toLocaleString('en-US');
const fmtMs = (n: number | undefined) =>
  n === undefined ? '' : n < 10 ? n.toFixed(1) : String(Math.round(n));
const fmtRatio = (n: number | undefined) => (n === undefined ? '' : n.toFixed(2));
const fmtPct = (n: number | undefined) => (n === undefined ? '?' : `${Math.round(n * 100)}%`);

function renderTable(rows: RowResult[]): string {
  const table = new Table({
    head: [
      'Scenario',
      'Mode',
      'req/s',
      'p50 ms',
      'p99 ms',
      'vs bare',
      'vs framework',
      'srv µs/req',
      'CPU srv/gen/other',
    ],
    colAligns: ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
    style: { head: [], border: [] },
  });
  for (const r of rows) {
    if (r.status !== 'ok') {
      table.push([
        r.label,
        r.mode,
        { colSpan: 7, content: r.status === 'n/a' ? `n/a (${r.reason})` : `failed: ${r.reason}` },
      ]);
      continue;
    }
    const issues = problems(r);
    table.push([
      issues ? `${r.label} (! ${issues})` : r.label,
      r.mode,
      fmtInt(r.rps!),
      fmtMs(r.p50),
      fmtMs(r.p99),
      fmtRatio(r.vsBare),
      r.family === 'http' ? '' : fmtRatio(r.vsFramework),
      fmtInt(r.serverUsPerRequest!),
      `${fmtPct(r.serverCpu)}/${fmtPct(r.loadgenCpu)}/${fmtPct(r.otherCpu)}`,
    ]);
  }
  return table.toString();
}

interface TargetResult {
  label: string;
  verdict: 'MET' | 'MISSED' | 'n/a';
  measured?: number;
  /** Baseline's server CPU per request / this row's: the ratio with the server as the bottleneck. */
  cpuRatio?: number;
  /** The peer's ratio on the same base, measured in the same run. */
  peer?: number;
  /** The control rows' ratios on the same base, measured in the same run, by row id. */
  controls?: Record<string, number>;
  /** Where the median of the row's slice ratios lies (`medianInterval`, 90 % asked for). */
  interval?: MedianInterval;
  /** False when the bar lies inside `interval`: the run's noise, not the code, decided the verdict. */
  decided?: boolean;
  detail: string;
}

/** Below this share of a core, a control row's server was waiting more than working. */
const CONTROL_BUSY = 0.9;

function evaluateTargets(rows: RowResult[]): TargetResult[] {
  return TARGETS.map((t) => {
    const r = rows.find((x) => x.id === t.row);
    if (!r) return { label: t.label, verdict: 'n/a', detail: 'not run (--only)' };
    if (r.status !== 'ok') return { label: t.label, verdict: 'n/a', detail: r.reason ?? r.status };
    const ratio = t.of === 'bare' ? r.vsBare : r.vsFramework;
    if (ratio === undefined) return { label: t.label, verdict: 'n/a', detail: `no ${t.of} baseline` };
    const issues = problems(r);
    const slices = r.sliceRatios?.[t.of === 'bare' ? 'bare' : 'framework'] ?? [];
    // The slices' spread, and an interval for their median: a bar inside it is not decided here.
    const interval = medianInterval(slices);
    const decided = interval ? !(interval.low <= t.min && t.min <= interval.high) : undefined;
    const spread = interval
      ? `; its ${slices.length} slices ${Math.min(...slices).toFixed(2)}-${Math.max(...slices).toFixed(2)}, their median within ${interval.low.toFixed(2)}-${interval.high.toFixed(2)} (${(interval.coverage * 100).toFixed(0)} %)${decided ? '' : `, which holds the bar ${t.min}: not decided by this run`}`
      : '';
    // What the ratio would be if the server, not the load generator, were the bottleneck.
    const baseUs = rows.find((x) => x.id === t.of && x.status === 'ok')?.serverUsPerRequest;
    const byCpu = (row: RowResult) =>
      baseUs && row.serverUsPerRequest ? baseUs / row.serverUsPerRequest : undefined;
    const cpuRatio = byCpu(r);
    // Another row on the same base (a peer or a control): its ratio, and the text printed for it.
    const beside = (kind: 'peer' | 'control', id: string | undefined) => {
      if (!id) return { ratio: undefined, text: '' };
      const other = rows.find((x) => x.id === id && x.status === 'ok');
      const otherRatio = other ? (t.of === 'bare' ? other.vsBare : other.vsFramework) : undefined;
      let text =
        otherRatio === undefined
          ? `; ${kind} ${id}: not run`
          : `; ${kind} ${other!.label}: ${otherRatio.toFixed(2)}`;
      // A control waits on a timer: with every connection waiting, its req/s is bounded by the
      // wait (connections / latency), not by work, and its server is not busy. Then only its
      // server CPU per request compares it with the baseline.
      const cpu = kind === 'control' && other && otherRatio !== undefined ? byCpu(other) : undefined;
      if (cpu !== undefined) {
        const idle =
          other!.serverCpu !== undefined && other!.serverCpu < CONTROL_BUSY
            ? `; its server ${fmtPct(other!.serverCpu)} busy: its req/s is bounded by its wait, not its work`
            : '';
        text += ` (by server CPU per request ${cpu.toFixed(2)}${idle})`;
      }
      return { ratio: otherRatio, text };
    };
    // The peer's ratio is printed, and with `beat` it must not be ahead; a control only printed.
    const { ratio: peerRatio, text: peerText } = beside('peer', t.peer);
    const controls: Record<string, number> = {};
    let controlText = '';
    for (const id of t.controls ?? []) {
      const { ratio: controlRatio, text } = beside('control', id);
      if (controlRatio !== undefined) controls[id] = controlRatio;
      controlText += text;
    }
    const beaten = t.beat && peerRatio !== undefined && peerRatio > ratio;
    return {
      label: t.label,
      verdict: ratio >= t.min && !issues && !beaten ? 'MET' : 'MISSED',
      measured: ratio,
      ...(cpuRatio === undefined ? {} : { cpuRatio }),
      ...(peerRatio === undefined ? {} : { peer: peerRatio }),
      ...(Object.keys(controls).length === 0 ? {} : { controls }),
      ...(interval ? { interval, decided } : {}),
      detail: `${ratio.toFixed(2)} (${fmtInt(r.rps!)} req/s${spread}${cpuRatio === undefined ? '' : `; by server CPU per request ${cpuRatio.toFixed(2)}`}${peerText}${controlText})${issues ? `, invalid run: ${issues}` : ''}`,
    };
  });
}

main()
  .then(() => cleanup())
  .catch((err: unknown) => abort(1, err));
