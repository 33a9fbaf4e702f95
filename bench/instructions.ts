/**
 * `npm run bench:instr`: the read rows of `npm run bench` (memory store on node:http, Express and
 * Fastify, their baselines and the anonymous visitor), measured in CPU instructions per request
 * instead of req/s.
 *
 * Each row's server (the same files in bench/servers/, same IPC protocol) runs under
 * `valgrind --tool=callgrind` twice, each time in a fresh process: once answering N1 requests, once
 * N2. Stopped with SIGINT, the server exits and callgrind writes its totals. Instructions per
 * request = (I(N2) - I(N1)) / (N2 - N1): start-up, module loading and most of the JIT's warm-up
 * are in both runs and cancel out. Unlike req/s on a shared 2-core VM (±15 % from run to run),
 * the count does not depend on how busy the machine is. It still varies from run to run by a few
 * per cent: V8 keeps optimizing (TurboFan, on background threads) well past N1 requests. Threads
 * are counted apart (`--separate-threads=yes`): "main" is the event loop's thread alone, the
 * total adds the compiler and GC threads.
 *
 *   npx tsx bench/instructions.ts [--n1 1000] [--n2 4000] [--only <substring>]... [--no-build]
 */
import { type ChildProcess, fork, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import autocannon, { type Options, type Result } from 'autocannon';
import Table from 'cli-table3';
import { setupSessions } from './lib/sessions.js';
import type { ServerConfig, ServerMessage } from './servers/_shared.js';

// ---- options ---------------------------------------------------------------------------------

const USAGE = `Usage: npm run bench:instr -- [options]

Counts the CPU instructions a server spends per request, with valgrind's callgrind
(instructions per request = (I(n2) - I(n1)) / (n2 - n1), two fresh processes per row).

  --n1 <n>             requests of the first run of each row (default 1000)
  --n2 <n>             requests of the second run, more than --n1 (default 4000)
  --only <substring>   run only rows whose id or label contains it (repeatable); the baselines
                       the selected rows are compared with always run too
  --no-build           use dist/ as it is (by default the package is built first: the servers
                       run the compiled library, as users do)
  -h, --help           this text

Needs valgrind (Debian/Ubuntu: apt-get install valgrind).`;

function usageError(message: string): never {
  console.error(`${message}\n\n${USAGE}`);
  process.exit(2);
}

const { values: args } = (() => {
  try {
    return parseArgs({
      allowNegative: true,
      options: {
        n1: { type: 'string', default: '1000' },
        n2: { type: 'string', default: '4000' },
        only: { type: 'string', multiple: true },
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
const N1 = count('n1', args.n1);
const N2 = count('n2', args.n2);
if (N2 <= N1) usageError(`--n2 (${N2}) must be larger than --n1 (${N1})`);
const ONLY = (args.only ?? []).map((s) => s.toLowerCase());

// ---- rows ------------------------------------------------------------------------------------

type Mode = 'read' | 'anon';
type Base = 'bare' | 'express' | 'fastify';

interface Row {
  /** The row's id in bench/run.ts. */
  id: string;
  label: string;
  /** File in bench/servers/. */
  file: string;
  store?: 'memory';
  mode: Mode;
  /** The baseline row this one's ratio is taken against (a baseline names itself). */
  of: Base;
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
  { id: 'express', label: 'plain Express 5 (no session)', file: 'express.ts', mode: 'read', of: 'express' },
  {
    id: 'sf-express-memory-read',
    label: 'sessionflow + Express + MemoryStore',
    file: 'sessionflow-express.ts',
    store: 'memory',
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

const PATH: Record<Mode, string> = { read: '/read', anon: '/anon' };
const BODY: Record<Mode, string> = { read: 'hello', anon: 'anon' };
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
  process.exit(code);
}
process.on('exit', cleanup);
process.on('SIGINT', () => abort(130));
process.on('SIGTERM', () => abort(143));
process.on('uncaughtException', (err) => abort(1, err));
process.on('unhandledRejection', (err) => abort(1, err));

/** Exits with a clear message when valgrind is not installed. */
function checkValgrind(): string {
  const probe = spawnSync('valgrind', ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    console.error(
      `valgrind not found (${probe.error?.message ?? `exit code ${probe.status}`}).\n` +
        'This benchmark counts instructions with valgrind --tool=callgrind; install it first:\n' +
        '  apt-get install valgrind   (Debian/Ubuntu; dnf install valgrind on Fedora)',
    );
    process.exit(1);
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
  const child = fork(join(HERE, 'servers', row.file), [JSON.stringify(config)], {
    cwd: ROOT,
    execPath: 'valgrind',
    execArgv: [
      '--tool=callgrind',
      `--callgrind-out-file=${outFile}`,
      '--trace-children=no',
      '--separate-threads=yes',
      '--quiet',
      process.execPath,
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
    const line = /^summary:\s*(\d+)/m.exec(text) ?? /^totals:\s*(\d+)/m.exec(text);
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

/** One fresh server under callgrind, `amount` requests, stopped; its total instruction count. */
async function sample(row: Row, amount: number, dir: string): Promise<Sample> {
  const t0 = performance.now();
  const outFile = join(dir, `${row.id}-${amount}.callgrind`);
  const running = await startServer(row, outFile);
  let requests: number;
  try {
    let cookies: string[] | null = null;
    if (row.mode === 'read')
      cookies = row.store ? await setupSessions(running.port, CONNECTIONS, BODY.read) : [DUMMY_COOKIE];
    requests = await load(running.port, row.mode, cookies, amount);
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
  status: 'ok' | 'failed';
  reason?: string;
  first?: Sample;
  second?: Sample;
  /** All threads, and the main thread alone. */
  perRequest?: number;
  mainPerRequest?: number;
  ratio?: number;
  mainRatio?: number;
}

async function measure(row: Row, dir: string): Promise<RowResult> {
  try {
    const first = await sample(row, N1, dir);
    const second = await sample(row, N2, dir);
    const requests = second.requests - first.requests;
    const perRequest = (second.instructions - first.instructions) / requests;
    const mainPerRequest = (second.main - first.main) / requests;
    // Start-up varies by a few tens of millions of instructions: with too few requests between
    // the two runs, that noise is all the difference measures.
    if (perRequest <= 0 || mainPerRequest <= 0)
      throw new Error(
        `I(${N2}) - I(${N1}) = ${fmtInt(second.instructions - first.instructions)}: start-up noise outweighs the requests; raise --n2`,
      );
    return { row, status: 'ok', first, second, perRequest, mainPerRequest };
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
      table.push([r.row.label, r.row.mode, { colSpan: 6, content: `failed: ${r.reason!.split('\n')[0]}` }]);
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
      `${Math.round(r.first!.seconds + r.second!.seconds)} s`,
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
      `${N1} and ${N2} requests on ${CONNECTIONS} connections, a fresh server process for each`,
  );
  workDir = mkdtempSync(join(tmpdir(), 'sessionflow-bench-instr-'));
  const t0 = performance.now();
  const results: RowResult[] = [];
  for (const [index, row] of rows.entries()) {
    const result = await measure(row, workDir);
    results.push(result);
    const outcome =
      result.status === 'ok'
        ? `${fmtInt(result.perRequest!)} instructions/request (${Math.round(result.first!.seconds + result.second!.seconds)} s)`
        : `failed: ${result.reason}`;
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
    `instr/req = (I(${N2}) - I(${N1})) / (${N2} - ${N1}), I = instructions of the server process in user space, ` +
      'all threads; main thread: the event loop thread alone (no JIT compiler or GC helper threads);\n' +
      'vs baseline = baseline instr/req / row instr/req (1.00: as cheap as the baseline)',
  );
  console.log();
  // No verdicts here: the counts move by several per cent between runs (JIT warm-up under
  // valgrind), and instructions leave the kernel's share out. `npm run bench` gives the verdicts.
  console.log(`took ${Math.round((performance.now() - t0) / 1000)} s`);
  if (results.some((r) => r.status !== 'ok')) process.exitCode = 1;
}

main()
  .then(() => cleanup())
  .catch((err: unknown) => abort(1, err));
