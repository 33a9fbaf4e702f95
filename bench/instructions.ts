/**
 * `npm run bench:instr`: the read rows of `npm run bench` (memory store on node:http, Express and
 * Fastify, the file, Redis and PostgreSQL stores on node:http and Express, their baselines; a
 * Redis or PostgreSQL row is n/a when its server does not answer), the anonymous visitor and
 * the new visitor whose session is made (memory store on node:http, and @fastify/session's
 * creation beside it, the peer the creation target names), measured in CPU instructions per
 * request instead of req/s. The file rows count the thread-pool path of the file store: under
 * valgrind its synchronous reads hold the thread long enough to count as stalls (bench/README.md).
 *
 * Each row's server (the same files in bench/servers/, same IPC protocol) runs under
 * `valgrind --tool=callgrind --instr-atstart=no`, in a fresh process: it answers `--warm`
 * requests uninstrumented (start-up, module loading and the JIT's warm-up, TurboFan included, are
 * over by then), `callgrind_control -i on` turns counting on for `--n` requests, and `-i off`
 * turns it off before the server stops. Instructions per request = the count / n. Unlike req/s on
 * a shared 2-core VM (±15 % from run to run), the count does not depend on how busy the machine
 * is: the same row measured twice agreed within 0.2 % (all threads) and 2 % (main thread).
 * Threads are counted apart (`--separate-threads=yes`): "main" is the event loop's thread alone,
 * the total adds the compiler and GC threads.
 *
 *   npx tsx bench/instructions.ts [--warm 10000] [--n 3000] [--only <substring>]... [--no-build]
 */
import { type ChildProcess, fork, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import autocannon, { type Options, type Result } from 'autocannon';
import Table from 'cli-table3';
import { dropTables, probePostgres } from './lib/postgres.js';
import { setupSessions } from './lib/sessions.js';
import { closeRedis, connectRedis, type ServerConfig, type ServerMessage } from './servers/_shared.js';

// ---- options ---------------------------------------------------------------------------------

const USAGE = `Usage: npm run bench:instr -- [options]

Counts the CPU instructions a server spends per request, with valgrind's callgrind: a fresh
server process per row answers --warm requests uncounted, then --n requests counted.

  --warm <n>           requests before counting starts (default 10000): start-up and JIT warm-up
  --n <n>              requests counted (default 3000)
  --only <substring>   run only rows whose id or label contains it (repeatable); the baselines
                       the selected rows are compared with always run too
  --keep <dir>         write callgrind's files into <dir> and keep them (one per row and
                       thread: <row id>.callgrind-01 is the main thread), for callgrind_annotate
  --node-flag <flag>   pass a flag to the servers' node (repeatable), e.g.
                       --node-flag=--no-concurrent-recompilation
  --no-build           use dist/ as it is (by default the package is built first: the servers
                       run the compiled library, as users do)
  -h, --help           this text

Needs valgrind, with its callgrind_control (Debian/Ubuntu: apt-get install valgrind).`;

function usageError(message: string): never {
  console.error(`${message}\n\n${USAGE}`);
  process.exit(2);
}

const { values: args } = (() => {
  try {
    return parseArgs({
      allowNegative: true,
      options: {
        warm: { type: 'string', default: '10000' },
        n: { type: 'string', default: '3000' },
        only: { type: 'string', multiple: true },
        keep: { type: 'string' },
        'node-flag': { type: 'string', multiple: true },
        build: { type: 'boolean', default: true },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    return usageError((err as Error).message);
  }
})();
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}

/** Connections of the load generator; each session row gives each one its own session. */
const CONNECTIONS = 10;

function count(name: string, raw: string): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < CONNECTIONS)
    usageError(
      `--${name} must be an integer of at least ${CONNECTIONS} (one request per connection; got ${raw})`,
    );
  return n;
}
const WARM = count('warm', args.warm);
const N = count('n', args.n);
const ONLY = (args.only ?? []).map((s) => s.toLowerCase());

// ---- rows ------------------------------------------------------------------------------------

type Mode = 'read' | 'anon' | 'create';
type Base = 'bare' | 'express' | 'fastify';

interface Row {
  /** The row's id in bench/run.ts. */
  id: string;
  label: string;
  /** File in bench/servers/. */
  file: string;
  store?: 'memory' | 'file' | 'redis' | 'postgres';
  mode: Mode;
  /** The baseline row this one's ratio is taken against (a baseline names itself). */
  of: Base;
  /** Plain Express only: each request waits this many milliseconds on a timer (the control row). */
  waitMs?: number;
  /** Plain Express only: `req` and `res` put into V8's dictionary mode, as session() does. */
  dictionaryMode?: true;
}

/** The rows of bench/run.ts measured here, in its display order. */
const ROWS: Row[] = [
  { id: 'bare', label: 'bare node:http (no session)', file: 'bare.ts', mode: 'read', of: 'bare' },
  {
    id: 'sf-http-memory-read',
    label: 'sessionflow + node:http + MemoryStore',
    file: 'sessionflow-http.ts',
    store: 'memory',
    mode: 'read',
    of: 'bare',
  },
  {
    id: 'sf-http-anon',
    label: 'sessionflow anonymous visitor (node:http, memory)',
    file: 'sessionflow-http.ts',
    store: 'memory',
    mode: 'anon',
    of: 'bare',
  },
  {
    id: 'sf-http-memory-create',
    label: 'sessionflow + node:http + MemoryStore (new visitor, session made)',
    file: 'sessionflow-http.ts',
    store: 'memory',
    mode: 'create',
    of: 'bare',
  },
  {
    // The peer of the creation target (bench/run.ts), on Fastify with its default memory store.
    id: 'fastify-session-create',
    label: '@fastify/session (new visitor, session made; peer)',
    file: 'fastify-session.ts',
    mode: 'create',
    of: 'bare',
  },
  {
    id: 'sf-http-file-read',
    label: 'sessionflow + node:http + FileStore',
    file: 'sessionflow-http.ts',
    store: 'file',
    mode: 'read',
    of: 'bare',
  },
  {
    id: 'sf-http-redis-read',
    label: 'sessionflow + node:http + RedisStore',
    file: 'sessionflow-http.ts',
    store: 'redis',
    mode: 'read',
    of: 'bare',
  },
  {
    id: 'sf-http-postgres-read',
    label: 'sessionflow + node:http + PostgresStore',
    file: 'sessionflow-http.ts',
    store: 'postgres',
    mode: 'read',
    of: 'bare',
  },
  { id: 'express', label: 'plain Express 5 (no session)', file: 'express.ts', mode: 'read', of: 'express' },
  {
    // bench/run.ts's control row: no session, but every request waits on a timer as a store's
    // load waits for its server, so many requests are under way at once. What Express itself
    // costs more then is in every row of a store with a round trip.
    id: 'express-wait-read',
    label: 'plain Express 5, each request waiting 5 ms (control)',
    file: 'express.ts',
    mode: 'read',
    of: 'express',
    waitMs: 5,
  },
  {
    // The other control of bench/run.ts: plain Express with the one change session() makes to
    // Express's objects. The Express rows against it show what the session itself costs.
    id: 'express-dict-read',
    label: 'plain Express 5, req and res in dictionary mode (control)',
    file: 'express.ts',
    mode: 'read',
    of: 'express',
    dictionaryMode: true,
  },
  {
    id: 'sf-express-memory-read',
    label: 'sessionflow + Express + MemoryStore',
    file: 'sessionflow-express.ts',
    store: 'memory',
    mode: 'read',
    of: 'express',
  },
  {
    id: 'sf-express-file-read',
    label: 'sessionflow + Express + FileStore',
    file: 'sessionflow-express.ts',
    store: 'file',
    mode: 'read',
    of: 'express',
  },
  {
    id: 'sf-express-redis-read',
    label: 'sessionflow + Express + RedisStore',
    file: 'sessionflow-express.ts',
    store: 'redis',
    mode: 'read',
    of: 'express',
  },
  {
    id: 'sf-express-postgres-read',
    label: 'sessionflow + Express + PostgresStore',
    file: 'sessionflow-express.ts',
    store: 'postgres',
    mode: 'read',
    of: 'express',
  },
  { id: 'fastify', label: 'plain Fastify 5 (no session)', file: 'fastify.ts', mode: 'read', of: 'fastify' },
  {
    id: 'sf-fastify-memory-read',
    label: 'sessionflow + Fastify + MemoryStore',
    file: 'sessionflow-fastify.ts',
    store: 'memory',
    mode: 'read',
    of: 'fastify',
  },
];

const PATH: Record<Mode, string> = { read: '/read', anon: '/anon', create: '/setup' };
const BODY: Record<Mode, string> = { read: 'hello', anon: 'anon', create: 'ok' };
/** Baselines get a cookie of a session cookie's size, so requests weigh the same (as in run.ts). */
const DUMMY_COOKIE = `id=${'x'.repeat(43)}.${'y'.repeat(43)}`;

// ---- child processes and cleanup ---------------------------------------------------------------

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(HERE, '..');
const TSX_LOADER = import.meta.resolve('tsx');
/** Valgrind starts slowly and runs node 20-50x slower: generous limits. */
const START_TIMEOUT_MS = 300_000;
const STOP_TIMEOUT_MS = 120_000;

const children = new Set<ChildProcess>();
let workDir: string | undefined;

const REDIS_URL = 'redis://127.0.0.1:6379';
const PG_URL = process.env.SESSIONFLOW_BENCH_PG ?? 'postgres://postgres@127.0.0.1:5432/test';
const RUN_ID = `${process.pid}_${randomBytes(4).toString('hex')}`;
const REDIS_PREFIX = `sfinstr:${RUN_ID}:`;
const PG_TABLE = `sfinstr_${RUN_ID}`;
const pgTables = new Set<string>();

/** A row of Redis ran: its keys are removed at the end. */
let redisUsed = false;

/** Null if the row's server (Redis, PostgreSQL) answers, else why not; the row is then n/a. */
async function storeProblem(row: Row): Promise<string | null> {
  if (row.store === 'postgres') return probePostgres(PG_URL);
  if (row.store !== 'redis') return null;
  try {
    await closeRedis(await connectRedis(REDIS_URL), undefined);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

/** The Redis keys and PostgreSQL tables of this run (a server killed mid-row leaves its own). */
async function removeServerData(): Promise<void> {
  try {
    await dropTables(PG_URL, pgTables);
  } catch (err) {
    console.error(`could not drop the tables ${PG_TABLE}_*: ${(err as Error).message}`);
  }
  if (!redisUsed) return;
  const client = await connectRedis(REDIS_URL).catch(() => undefined);
  if (client) await closeRedis(client, REDIS_PREFIX).catch(() => undefined);
}

function killChildren(): void {
  for (const child of children) child.kill('SIGKILL');
  children.clear();
}

function cleanup(): void {
  killChildren();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
  workDir = undefined;
}

let exiting = false;
function abort(code: number, error?: unknown): void {
  if (exiting) return;
  exiting = true;
  if (error) console.error(error);
  cleanup();
  setTimeout(() => process.exit(code), 3000).unref();
  removeServerData().finally(() => process.exit(code));
}
process.on('exit', cleanup);
process.on('SIGINT', () => abort(130));
process.on('SIGTERM', () => abort(143));
process.on('uncaughtException', (err) => abort(1, err));
process.on('unhandledRejection', (err) => abort(1, err));

/** Exits with a clear message when valgrind is not installed. */
function checkValgrind(): string {
  const probe = spawnSync('valgrind', ['--version'], { encoding: 'utf8' });
  // callgrind_control (valgrind's own script) turns counting on and off in the running server.
  const control = spawnSync('callgrind_control', ['--version'], { encoding: 'utf8' });
  for (const [name, r] of [
    ['valgrind', probe],
    ['callgrind_control', control],
  ] as const) {
    if (r.error || r.status !== 0) {
      console.error(
        `${name} not found (${r.error?.message ?? `exit code ${r.status}`}).\n` +
          'This benchmark counts instructions with valgrind --tool=callgrind; install it first:\n' +
          '  apt-get install valgrind   (Debian/Ubuntu; dnf install valgrind on Fedora)',
      );
      process.exit(1);
    }
  }
  return probe.stdout.trim();
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

/** The last `max` characters of a stream, for error messages. */
function tail(stream: NodeJS.ReadableStream | null, max = 4000): () => string {
  let text = '';
  stream?.setEncoding('utf8');
  stream?.on('data', (chunk: string) => {
    text = (text + chunk).slice(-max);
  });
  return () => text.trim();
}

interface Running {
  child: ChildProcess;
  port: number;
  output: () => string;
}

/**
 * Starts a server under callgrind. `fork` with valgrind as its executable runs
 * `valgrind <callgrind options> node --import tsx <server> <config>`: node itself (not a tsx
 * wrapper process) is the measured process, and it keeps the IPC channel of `serve()`.
 */
function startServer(row: Row, outFile: string): Promise<Running> {
  const config: ServerConfig = row.store ? { store: row.store } : {};
  if (row.waitMs !== undefined) config.waitMs = row.waitMs;
  if (row.dictionaryMode) config.dictionaryMode = true;
  // The file store's directory: a fresh one under the run's directory (the server removes it on exit).
  if (row.store === 'file') config.dir = mkdtempSync(join(dirname(outFile), `${row.id}-sessions-`));
  // Redis keys and PostgreSQL tables of their own, removed by the server as it stops and again
  // by `removeServerData` at the end.
  // Under valgrind a store call can take longer than the stores' 1 s default (the JIT still
  // warming, pooled connections opening, a pause with all 10 connections' loads in flight: the
  // Express + Redis row once failed with 10 timeouts); counting instructions needs no outage
  // detection.
  if (row.store === 'redis') {
    redisUsed = true;
    Object.assign(config, {
      redisUrl: REDIS_URL,
      prefix: `${REDIS_PREFIX}${row.id}:`,
      storeTimeoutMs: 60_000,
    });
  }
  if (row.store === 'postgres') {
    const table = `${PG_TABLE}_${row.id.replaceAll('-', '_')}`;
    pgTables.add(table);
    Object.assign(config, { pgUrl: PG_URL, table, storeTimeoutMs: 60_000 });
  }
  const child = fork(join(HERE, 'servers', row.file), [JSON.stringify(config)], {
    cwd: ROOT,
    execPath: 'valgrind',
    execArgv: [
      '--tool=callgrind',
      `--callgrind-out-file=${outFile}`,
      '--trace-children=no',
      '--separate-threads=yes',
      '--instr-atstart=no',
      '--quiet',
      process.execPath,
      ...(args['node-flag'] ?? []),
      '--import',
      TSX_LOADER,
    ],
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const output = (() => {
    const out = tail(child.stdout);
    const err = tail(child.stderr);
    return () => [out(), err()].filter(Boolean).join('\n');
  })();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${row.file} did not start within ${START_TIMEOUT_MS / 1000} s\n${output()}`));
    }, START_TIMEOUT_MS);
    const done = () => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
      child.off('error', onError);
    };
    const onMessage = (message: ServerMessage) => {
      if (message.type === 'ready') {
        done();
        resolve({ child, port: message.port, output });
      } else if (message.type === 'unavailable' || message.type === 'error') {
        done();
        child.kill('SIGKILL');
        reject(
          new Error(`${row.file} failed to start: ${'reason' in message ? message.reason : message.message}`),
        );
      }
    };
    const onExit = (code: number | null, signal: string | null) => {
      done();
      reject(new Error(`${row.file} exited while starting (code ${code}, signal ${signal})\n${output()}`));
    };
    const onError = (err: Error) => {
      done();
      reject(new Error(`could not start valgrind: ${err.message}`));
    };
    child.on('message', onMessage);
    child.once('exit', onExit);
    child.once('error', onError);
  });
}

/** SIGINT: `serve()` closes the server and exits, and callgrind writes its file on the way out. */
async function stopServer(running: Running): Promise<void> {
  const { child } = running;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  child.kill('SIGINT');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  const { code, signal } = await exited;
  clearTimeout(timer);
  if (code !== 0)
    throw new Error(`server did not exit cleanly (code ${code}, signal ${signal})\n${running.output()}`);
}

/**
 * Instructions counted by callgrind with `--separate-threads=yes`: one file per thread, `<F>-01`
 * (the main thread, where JavaScript runs), `<F>-02`, ...; each with a `summary:` (or `totals:`)
 * line. Returns all threads' sum and the main thread's count.
 */
function instructionsIn(outFile: string): { total: number; main: number } {
  const prefix = `${basename(outFile)}-`;
  const files = readdirSync(dirname(outFile)).filter((name) => name.startsWith(prefix));
  let total = 0;
  let main: number | undefined;
  for (const name of files) {
    const text = readFileSync(join(dirname(outFile), name), 'utf8');
    // `totals:` is what this file counted; `summary:` is 0 when instrumentation started off.
    const line = /^totals:\s*(\d+)/m.exec(text) ?? /^summary:\s*(\d+)/m.exec(text);
    if (!line) throw new Error(`no summary: or totals: line in ${name}`);
    total += Number(line[1]);
    if (/^thread:\s*1$/m.test(text)) main = Number(line[1]);
  }
  if (main === undefined) throw new Error(`callgrind wrote no file for the main thread (${prefix}01)`);
  return { total, main };
}

// ---- measuring -------------------------------------------------------------------------------

/** autocannon's `amount` (exactly that many requests), missing from bench/types.d.ts. */
interface AmountOptions extends Options {
  amount: number;
}

async function load(port: number, mode: Mode, cookies: string[] | null, amount: number): Promise<number> {
  let next = 0;
  const options: AmountOptions = {
    url: `http://127.0.0.1:${port}${PATH[mode]}`,
    connections: CONNECTIONS,
    amount,
    // Under valgrind the first requests wait for the JIT: no client-side timeouts.
    timeout: 120,
    expectBody: BODY[mode],
    ...(cookies
      ? { setupClient: (client) => client.setHeaders({ cookie: cookies[next++ % cookies.length]! }) }
      : {}),
  };
  const r: Result = await autocannon(options);
  const issues = [
    r.errors && `${r.errors} errors`,
    r.timeouts && `${r.timeouts} timeouts`,
    r.non2xx && `${r.non2xx} non-2xx`,
    r.mismatches && `${r.mismatches} wrong bodies`,
  ].filter(Boolean);
  if (issues.length > 0) throw new Error(`load of ${amount} requests: ${issues.join(', ')}`);
  return r['2xx'];
}

interface Sample {
  /** All threads. */
  instructions: number;
  /** The main thread alone. */
  main: number;
  /** Requests the load generator got a correct answer to (autocannon's amount, checked). */
  requests: number;
  seconds: number;
}

/** `callgrind_control -i on|off <pid>`: instrumentation of a running server on or off. */
function instrument(running: Running, on: boolean): void {
  const r = spawnSync('callgrind_control', ['-i', on ? 'on' : 'off', String(running.child.pid)], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  if (r.status !== 0)
    throw new Error(
      `callgrind_control -i ${on ? 'on' : 'off'} failed: ${(r.stderr || r.stdout || String(r.error)).trim()}`,
    );
}

/**
 * One server under callgrind with instrumentation off from the start: `warm` requests, then
 * instrumentation on for `amount` requests, then off again. Counts only those requests.
 */
async function sample(row: Row, warm: number, amount: number, dir: string): Promise<Sample> {
  const t0 = performance.now();
  const outFile = join(dir, `${row.id}.callgrind`);
  const running = await startServer(row, outFile);
  let requests: number;
  try {
    let cookies: string[] | null = null;
    if (row.mode === 'read')
      cookies = row.store ? await setupSessions(running.port, CONNECTIONS, BODY.read) : [DUMMY_COOKIE];
    await load(running.port, row.mode, cookies, warm);
    instrument(running, true);
    requests = await load(running.port, row.mode, cookies, amount);
    instrument(running, false);
  } catch (err) {
    running.child.kill('SIGKILL');
    throw err;
  }
  await stopServer(running);
  const { total, main } = instructionsIn(outFile);
  return { instructions: total, main, requests, seconds: (performance.now() - t0) / 1000 };
}

interface RowResult {
  row: Row;
  status: 'ok' | 'failed' | 'n/a';
  reason?: string;
  sample?: Sample;
  /** All threads, and the main thread alone. */
  perRequest?: number;
  mainPerRequest?: number;
  ratio?: number;
  mainRatio?: number;
}

async function measure(row: Row, dir: string): Promise<RowResult> {
  const problem = await storeProblem(row);
  if (problem) return { row, status: 'n/a', reason: problem };
  try {
    const counted = await sample(row, WARM, N, dir);
    if (counted.instructions <= 0 || counted.main <= 0)
      throw new Error('callgrind counted nothing: did callgrind_control reach the server?');
    return {
      row,
      status: 'ok',
      sample: counted,
      perRequest: counted.instructions / counted.requests,
      mainPerRequest: counted.main / counted.requests,
    };
  } catch (err) {
    return { row, status: 'failed', reason: (err as Error).message };
  }
}

// ---- reporting -------------------------------------------------------------------------------

const fmtInt = (n: number) => Math.round(n).toLocaleString('en-US');

function renderTable(results: RowResult[]): string {
  const table = new Table({
    head: ['Scenario', 'Mode', 'instr/req', 'vs baseline', 'main thread', 'vs baseline', 'baseline', 'time'],
    colAligns: ['left', 'left', 'right', 'right', 'right', 'right', 'left', 'right'],
    style: { head: [], border: [] },
  });
  for (const r of results) {
    if (r.status !== 'ok') {
      table.push([
        r.row.label,
        r.row.mode,
        { colSpan: 6, content: `${r.status}: ${r.reason!.split('\n')[0]}` },
      ]);
      continue;
    }
    table.push([
      r.row.label,
      r.row.mode,
      fmtInt(r.perRequest!),
      r.ratio === undefined ? '' : r.ratio.toFixed(2),
      fmtInt(r.mainPerRequest!),
      r.mainRatio === undefined ? '' : r.mainRatio.toFixed(2),
      r.row.of,
      `${Math.round(r.sample!.seconds)} s`,
    ]);
  }
  return table.toString();
}

function selected(row: Row): boolean {
  return (
    ONLY.length === 0 ||
    ONLY.some((s) => row.id.toLowerCase().includes(s) || row.label.toLowerCase().includes(s))
  );
}

async function main(): Promise<void> {
  const picked = ROWS.filter(selected);
  if (picked.length === 0)
    usageError(`--only ${ONLY.join(', ')} matches no row; row ids: ${ROWS.map((r) => r.id).join(', ')}`);
  const valgrind = checkValgrind();
  build();
  // Ratios need their baselines.
  const wanted = new Set(picked.map((r) => r.id));
  for (const r of picked) wanted.add(r.of);
  const rows = ROWS.filter((r) => wanted.has(r.id));

  console.log(
    `sessionflow bench:instr: ${valgrind} (callgrind), Node ${process.version}; ${rows.length} rows, ` +
      `${WARM} requests uncounted, then ${N} counted, on ${CONNECTIONS} connections; a fresh server process for each`,
  );
  let dir: string;
  if (args.keep) {
    dir = resolve(args.keep);
    mkdirSync(dir, { recursive: true });
  } else {
    dir = workDir = mkdtempSync(join(tmpdir(), 'sessionflow-bench-instr-'));
  }
  const t0 = performance.now();
  const results: RowResult[] = [];
  for (const [index, row] of rows.entries()) {
    const result = await measure(row, dir);
    results.push(result);
    const outcome =
      result.status === 'ok'
        ? `${fmtInt(result.perRequest!)} instructions/request (${Math.round(result.sample!.seconds)} s)`
        : `${result.status}: ${result.reason}`;
    process.stderr.write(`[${index + 1}/${rows.length}] ${row.label} (${row.mode}): ${outcome}\n`);
  }
  for (const r of results) {
    const base = results.find((b) => b.row.id === r.row.of && b.status === 'ok');
    if (r.status !== 'ok' || !base) continue;
    r.ratio = base.perRequest! / r.perRequest!;
    r.mainRatio = base.mainPerRequest! / r.mainPerRequest!;
  }

  console.log();
  console.log(renderTable(results));
  console.log(
    `instr/req = I / ${N}, I = instructions of the server process in user space while it answered the ${N} counted requests, ` +
      'all threads; main thread: the event loop thread alone (no JIT compiler or GC helper threads);\n' +
      'vs baseline = baseline instr/req / row instr/req (1.00: as cheap as the baseline)',
  );
  console.log();
  // No verdicts here: instructions leave the kernel's share of a request out (syscalls, the
  // cross-CPU wake-ups), so they are not the req/s the targets are set in. `npm run bench` gives
  // the verdicts; this is for comparing two versions of the code.
  console.log(`took ${Math.round((performance.now() - t0) / 1000)} s`);
  if (results.some((r) => r.status === 'failed')) process.exitCode = 1;
}

main()
  .then(() => removeServerData())
  .then(() => cleanup())
  .catch((err: unknown) => abort(1, err));
