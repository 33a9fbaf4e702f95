/**
 * The SQL stores (PostgreSQL, MySQL/MariaDB, SQLite), alone and behind node:http (issue 9):
 *
 *   ops   the store alone: CPU of this Node process and wall time per `load`, `commit` and
 *         `create`, 50 at a time, median of interleaved repetitions; and the statements (round
 *         trips) each operation costs.
 *   http  node:http + sessionflow + the store in a child process, driven by autocannon (50
 *         connections, one session each) from this one, against bare node:http in the same run:
 *         the server's CPU per request for reads, writes and new visitors whose session is
 *         written, as a ratio to bare (the targets: reads >= 0.25, writes >= 0.12 on PostgreSQL).
 *   fill  fills the table with bulk SQL (rows shaped like the records the manager writes) and
 *         reports `load` latency p50/p99 at 1k, 10k, 100k and 1M live sessions, each measured in
 *         rounds that alternate with a 1k table (the machine is shared).
 *   gc    N sessions, half of them expired, collected by `store.gc()` while loads and commits
 *         keep coming: gc time, and the event-loop delay (p99, max) and longest gc batch meanwhile.
 *
 *   npx tsx bench/sql.ts [--store postgres|mysql|sqlite]... [--mode ops|http|fill|gc]...
 *                        [--n 1000000] [--reps 7] [--ops 2000] [--concurrency 50]
 *                        [--duration 4] [--rounds 2] [--gc-batch <rows>] [--src <dir>]
 *                        [--sqlite-synchronous FULL|NORMAL|OFF] [--sqlite-autocheckpoint <pages>]
 *
 * `--sqlite-synchronous OFF` (no fsync at all, which no application should run with: a power cut
 * can corrupt the database) measures the floor of SQLite's gc without the disk's syncs.
 *
 * Default: every store, modes ops, http, fill and gc. Servers: PG_URL (default
 * postgres://postgres@127.0.0.1:5432/test) and MYSQL_URL (default mysql://root@127.0.0.1:3306/test);
 * SQLite in a temporary file in WAL mode. Every table is `sfbench_<random>` and is dropped at the
 * end (also on Ctrl-C). `--src` loads the stores from another checkout's `src` (before/after
 * comparisons on the same machine, the same minutes); the manager always comes from this one.
 */

import { fork } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import autocannon, { type Client } from 'autocannon';
import Database from 'better-sqlite3';
import mysql from 'mysql2/promise';
import pg from 'pg';
import type { SqlSessionStore, SqlStoreOptions } from '../src/stores/sql-common.js';
import type { StoredSession } from '../src/stores/store.js';
import { percentile } from './lib/stats.js';
import { verdict } from './lib/verdict.js';

// ---- options ----------------------------------------------------------------------------------

const { values: args } = parseArgs({
  options: {
    store: { type: 'string', multiple: true },
    mode: { type: 'string', multiple: true },
    n: { type: 'string', default: '1000000' },
    reps: { type: 'string', default: '7' },
    ops: { type: 'string', default: '2000' },
    concurrency: { type: 'string', default: '50' },
    src: { type: 'string', default: resolve(import.meta.dirname, '../src') },
    'gc-batch': { type: 'string' },
    'sqlite-synchronous': { type: 'string' },
    /** The handle's `wal_autocheckpoint`, as an application may set it (SQLite's default: 1000). */
    'sqlite-autocheckpoint': { type: 'string' },
    duration: { type: 'string', default: '4' },
    rounds: { type: 'string', default: '2' },
    /** Internal: run as the http mode's server child. */
    serve: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (args.help) {
  console.log(
    'npx tsx bench/sql.ts [--store postgres|mysql|sqlite]... [--mode ops|http|fill|gc]... [--n 1000000] [--reps 7] [--ops 2000] [--concurrency 50] [--duration 4] [--rounds 2] [--gc-batch <rows>] [--src <dir>] [--sqlite-synchronous FULL|NORMAL|OFF] [--sqlite-autocheckpoint <pages>]',
  );
  process.exit(0);
}
type EngineName = 'postgres' | 'mysql' | 'sqlite';
type Mode = 'ops' | 'http' | 'fill' | 'gc';
const STORES = (args.store ?? ['postgres', 'mysql', 'sqlite']) as EngineName[];
const MODES = (args.mode ?? ['ops', 'http', 'fill', 'gc']) as Mode[];
const N = Number(args.n);
const REPS = Number(args.reps);
const OPS = Number(args.ops);
const CONCURRENCY = Number(args.concurrency);
const SRC = resolve(args.src);
const GC_BATCH = args['gc-batch'] === undefined ? undefined : Number(args['gc-batch']);
const DURATION = Number(args.duration);
const ROUNDS = Number(args.rounds);
const AUTOCHECKPOINT = args['sqlite-autocheckpoint'];
if (AUTOCHECKPOINT !== undefined && !/^\d+$/.test(AUTOCHECKPOINT)) {
  console.error(`--sqlite-autocheckpoint takes a number of pages (0: off), not "${AUTOCHECKPOINT}"`);
  process.exit(2);
}
/** The manager and node:http integration: always this checkout's. */
const MAIN_SRC = resolve(import.meta.dirname, '../src');
const PG_URL = process.env.PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';

const HOUR = 3_600_000;
/** The end-to-end targets of issue 9 on PostgreSQL: server CPU per request as a share of bare node:http. */
const TARGETS = { read: 0.25, write: 0.12 } as const;

// ---- rows shaped like the manager's records ---------------------------------------------------

const md5 = (s: string) => createHash('md5').update(s).digest('hex');
/** The key of bulk row i: 43 hex characters (valid base64url), the same in SQL and here. */
const keyOf = (i: number) => md5(String(i)) + md5(`${i}x`).slice(0, 11);
const handleOf = (i: number) => md5(`${i}h`) + md5(`${i}hx`).slice(0, 11);
const newKey = () => randomBytes(32).toString('base64url');

function record(now: number): StoredSession {
  return {
    meta: {
      createdAt: now,
      deadline: now + 24 * HOUR,
      lastSeenAt: now,
      h: randomBytes(32).toString('base64url'),
      idAt: now,
    },
    values: { 'v:k': '"hello"' },
  };
}

/** Live rows expire an hour from now (spread over a second); expired ones up to an hour ago. */
const liveExpiry = (t: number, i: number) => t + HOUR + (i % 1000);
const deadExpiry = (t: number, i: number) => t - 1 - (i % HOUR);

// ---- engines -------------------------------------------------------------------------------------

interface Engine {
  name: EngineName;
  store(table: string, options?: SqlStoreOptions): SqlSessionStore;
  /** Inserts rows [from, to): every `expiredEvery`-th row (i % 2 === 0 for 2) already expired. */
  fill(table: string, from: number, to: number, t: number, expiredEvery?: number): Promise<void>;
  /** Refreshes planner statistics, as autovacuum / a background ANALYZE would. */
  analyze(table: string): Promise<void>;
  /** Bytes the table and its indexes take, if the engine says. */
  size(table: string): Promise<string>;
  drop(table: string): Promise<void>;
  close(): Promise<void>;
  /** Counts statements sent to the server while `fn` runs; undefined where there are none. */
  countTrips?(fn: () => Promise<void>): Promise<number>;
  /** Buffer pool misses while `fn` runs (MariaDB), to tell I/O from CPU. */
  poolMisses?(fn: () => Promise<void>): Promise<number>;
  /**
   * Starts counting the server process's CPU (MariaDB on this machine: its one process, found
   * through `@@pid_file`); the function returned gives the seconds used since, or undefined when
   * the server is elsewhere or its pid is unreadable.
   */
  serverCpu?(): Promise<() => number | undefined>;
}

/** CPU seconds (user + system) a local process has used so far, from /proc; undefined if unreadable. */
function processCpuSeconds(pid: number): number | undefined {
  try {
    // Fields after the command name, which is in parentheses and may hold spaces: utime is the
    // 14th field of the line, stime the 15th, in clock ticks (100 a second on Linux).
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return undefined;
  }
}

const storeModule = async <T>(file: string): Promise<T> =>
  (await import(pathToFileURL(join(SRC, 'stores', file)).href)) as T;

async function postgresEngine(): Promise<Engine> {
  const { PostgresStore } = await storeModule<typeof import('../src/stores/postgres.js')>('postgres.ts');
  const pool = new pg.Pool({ connectionString: PG_URL, max: 10, connectionTimeoutMillis: 2_000 });
  await pool.query('SELECT 1');
  const q = (t: string) => `"${t}"`;
  return {
    name: 'postgres',
    store: (table, options) => new PostgresStore(pool, { table, ...options }),
    fill: async (table, from, to, t, expiredEvery = 0) => {
      await pool.query(
        `INSERT INTO ${q(table)} (id, meta, data, expires_at)
         SELECT md5(i::text) || left(md5(i::text || 'x'), 11),
                jsonb_build_object('createdAt', $2::bigint, 'deadline', $2::bigint + 86400000,
                  'lastSeenAt', $2::bigint, 'h', md5(i::text || 'h') || left(md5(i::text || 'hx'), 11), 'idAt', $2::bigint),
                '{"v:k": "\\"hello\\""}'::jsonb,
                CASE WHEN $3::int > 0 AND i % $3::int = 0 THEN $2::bigint - 1 - i % ${HOUR}
                     ELSE $2::bigint + ${HOUR} + i % 1000 END
         FROM generate_series($1::int, $4::int - 1) AS i`,
        [from, t, expiredEvery, to],
      );
    },
    analyze: async (table) => {
      await pool.query(`VACUUM ANALYZE ${q(table)}`);
    },
    size: async (table) =>
      (await pool.query(`SELECT pg_size_pretty(pg_total_relation_size($1)) AS s`, [table])).rows[0].s,
    drop: async (table) => {
      await pool.query(`DROP TABLE IF EXISTS ${q(table)}`);
    },
    close: () => pool.end(),
    countTrips: async (fn) => {
      const proto = pg.Client.prototype as unknown as { query: (...a: unknown[]) => unknown };
      const original = proto.query;
      let n = 0;
      proto.query = function (this: unknown, ...a: unknown[]) {
        n++;
        return original.apply(this, a);
      };
      try {
        await fn();
      } finally {
        proto.query = original;
      }
      return n;
    },
  };
}

async function mysqlEngine(): Promise<Engine> {
  const { MySqlStore } = await storeModule<typeof import('../src/stores/mysql.js')>('mysql.ts');
  const pool = mysql.createPool({ uri: MYSQL_URL, connectionLimit: 10 });
  await pool.query('SELECT 1');
  const q = (t: string) => `\`${t}\``;
  const status = async (name: string) => {
    const [rows] = await pool.query<mysql.RowDataPacket[]>('SHOW GLOBAL STATUS LIKE ?', [name]);
    return Number(rows[0]?.Value ?? 0);
  };
  return {
    name: 'mysql',
    store: (table, options) => new MySqlStore(pool, { table, ...options }),
    fill: async (table, from, to, t, expiredEvery = 0) => {
      // MariaDB's SEQUENCE engine: seq_<from>_to_<to> is a table of integers.
      await pool.query(
        `INSERT INTO ${q(table)} (id, meta, data, expires_at)
         SELECT CONCAT(MD5(seq), LEFT(MD5(CONCAT(seq, 'x')), 11)),
                JSON_OBJECT('createdAt', ?, 'deadline', ? + 86400000, 'lastSeenAt', ?,
                  'h', CONCAT(MD5(CONCAT(seq, 'h')), LEFT(MD5(CONCAT(seq, 'hx')), 11)), 'idAt', ?),
                '{"v:k": "\\\\"hello\\\\""}',
                IF(? > 0 AND seq % ? = 0, ? - 1 - seq % ${HOUR}, ? + ${HOUR} + seq % 1000)
         FROM seq_${from}_to_${to - 1}`,
        [t, t, t, t, expiredEvery, expiredEvery || 1, t, t],
      );
    },
    analyze: async (table) => {
      await pool.query(`ANALYZE TABLE ${q(table)}`);
    },
    size: async (table) => {
      const [rows] = await pool.query<mysql.RowDataPacket[]>(
        `SELECT data_length + index_length AS b FROM information_schema.tables
         WHERE table_schema = DATABASE() AND table_name = ?`,
        [table],
      );
      return `${Math.round(Number(rows[0]?.b) / 2 ** 20)} MB`;
    },
    drop: async (table) => {
      await pool.query(`DROP TABLE IF EXISTS ${q(table)}`);
    },
    close: () => pool.end(),
    countTrips: async (fn) => {
      // mysql2/promise connections call the callback API's execute/query underneath.
      const { default: core } = (await import('mysql2')) as unknown as {
        default: { Connection: { prototype: Record<string, (...a: unknown[]) => unknown> } };
      };
      const proto = core.Connection.prototype;
      const originals = { execute: proto.execute!, query: proto.query! };
      let n = 0;
      for (const name of ['execute', 'query'] as const) {
        const original = originals[name];
        proto[name] = function (this: unknown, ...a: unknown[]) {
          n++;
          return original.apply(this, a);
        };
      }
      try {
        await fn();
      } finally {
        Object.assign(proto, originals);
      }
      return n;
    },
    poolMisses: async (fn) => {
      const before = await status('Innodb_buffer_pool_reads');
      await fn();
      return (await status('Innodb_buffer_pool_reads')) - before;
    },
    serverCpu: async () => {
      let pid: number | undefined;
      const host = new URL(MYSQL_URL).hostname;
      if (host === '127.0.0.1' || host === 'localhost' || host === '[::1]') {
        const [rows] = await pool.query<mysql.RowDataPacket[]>('SELECT @@pid_file AS f');
        try {
          pid = Number(readFileSync(String(rows[0]?.f), 'utf8').trim());
        } catch {
          // Not readable by this user: the row goes without the server's CPU.
        }
      }
      const before = pid === undefined ? undefined : processCpuSeconds(pid);
      return () => {
        const after = pid === undefined ? undefined : processCpuSeconds(pid);
        return before === undefined || after === undefined ? undefined : after - before;
      };
    },
  };
}

async function sqliteEngine(): Promise<Engine> {
  const { SqliteStore } = await storeModule<typeof import('../src/stores/sqlite.js')>('sqlite.ts');
  const dir = mkdtempSync(join(tmpdir(), 'sfbench-sqlite-'));
  const db = new Database(join(dir, 'sessions.db'));
  db.pragma('journal_mode = WAL');
  const synchronous = args['sqlite-synchronous'];
  if (synchronous !== undefined) db.pragma(`synchronous = ${synchronous.replace(/\W/g, '')}`);
  if (AUTOCHECKPOINT !== undefined) db.pragma(`wal_autocheckpoint = ${Number(AUTOCHECKPOINT)}`);
  const q = (t: string) => `"${t}"`;
  return {
    name: 'sqlite',
    store: (table, options) => new SqliteStore(db, { table, ...options }),
    fill: async (table, from, to, t, expiredEvery = 0) => {
      const insert = db.prepare(`INSERT INTO ${q(table)} (id, meta, data, expires_at) VALUES (?, ?, ?, ?)`);
      const data = JSON.stringify({ 'v:k': '"hello"' });
      // A large page cache while filling only (random keys); the measurements run with the default.
      const cache = db.pragma('cache_size', { simple: true });
      db.pragma('cache_size = -524288');
      db.transaction(() => {
        for (let i = from; i < to; i++) {
          const meta = `{"createdAt":${t},"deadline":${t + 24 * HOUR},"lastSeenAt":${t},"h":"${handleOf(i)}","idAt":${t}}`;
          const expired = expiredEvery > 0 && i % expiredEvery === 0;
          insert.run(keyOf(i), meta, data, expired ? deadExpiry(t, i) : liveExpiry(t, i));
        }
      })();
      db.pragma(`cache_size = ${Number(cache)}`);
    },
    analyze: async () => {
      db.exec('ANALYZE');
    },
    size: async (table) => {
      try {
        const row = db
          .prepare(`SELECT sum(pgsize) AS b FROM dbstat WHERE name = ? OR name LIKE ?`)
          .get(table, `${table}_%`) as { b: number };
        return `${Math.round(row.b / 2 ** 20)} MB`;
      } catch {
        const pages = db.pragma('page_count', { simple: true }) as number;
        return `${Math.round((pages * 4096) / 2 ** 20)} MB (whole file)`;
      }
    },
    drop: async (table) => {
      db.exec(`DROP TABLE IF EXISTS ${q(table)}`);
    },
    close: async () => {
      db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const ENGINES: Record<EngineName, () => Promise<Engine>> = {
  postgres: postgresEngine,
  mysql: mysqlEngine,
  sqlite: sqliteEngine,
};

// ---- helpers -------------------------------------------------------------------------------------

const tables: { engine: Engine; table: string }[] = [];
const newTable = (engine: Engine) => {
  const table = `sfbench_${randomBytes(5).toString('hex')}`;
  tables.push({ engine, table });
  return table;
};
async function dropAll(): Promise<void> {
  for (const { engine, table } of tables.splice(0)) await engine.drop(table).catch(() => undefined);
}
if (!args.serve)
  process.once('SIGINT', () => {
    void dropAll().finally(() => process.exit(130));
  });

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};
const us = (x: number) => `${x.toFixed(1)} µs`;
const ms = (x: number) => `${x.toFixed(2)} ms`;

/** Runs `count` operations, `concurrency` at a time. */
async function pump(count: number, concurrency: number, op: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) await op(next++);
    }),
  );
}

/** CPU (user + system) and wall microseconds per operation over one pump. */
async function measure(
  count: number,
  op: (i: number) => Promise<unknown>,
): Promise<{ cpu: number; wall: number }> {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await pump(count, CONCURRENCY, op);
  const wall = ((performance.now() - t0) * 1000) / count;
  const c = process.cpuUsage(cpu0);
  return { cpu: (c.user + c.system) / count, wall };
}

async function fillRange(engine: Engine, table: string, from: number, to: number, t: number, every = 0) {
  const chunk = 100_000;
  for (let i = from; i < to; i += chunk) await engine.fill(table, i, Math.min(to, i + chunk), t, every);
}

// ---- ops ---------------------------------------------------------------------------------------

async function opsMode(engine: Engine): Promise<void> {
  const table = newTable(engine);
  const store = engine.store(table);
  await store.migrate();
  const rows = 10_000;
  const t = Date.now();
  await fillRange(engine, table, 0, rows, t);
  await engine.analyze(table);
  const pick = () => keyOf(Math.floor(Math.random() * rows));
  let n = 0;
  const ops = {
    load: async () => {
      if (!(await store.load(pick()))) throw new Error('load missed a live row');
    },
    commit: async () => {
      const r = await store.commit(
        pick(),
        { set: { 'v:n': String(++n) }, unset: [], meta: { lastSeenAt: Date.now() } },
        HOUR,
        { userId: null },
      );
      if (r !== 'ok') throw new Error(`commit answered ${r}`);
    },
    create: async () => {
      if (!(await store.create(newKey(), record(Date.now()), HOUR))) throw new Error('create refused');
    },
  };
  type Op = keyof typeof ops;
  const names = Object.keys(ops) as Op[];
  // Warm-up: JIT, pooled connections, prepared statements.
  for (const name of names) await pump(OPS, CONCURRENCY, ops[name]);
  const samples: Record<Op, { cpu: number[]; wall: number[] }> = {
    load: { cpu: [], wall: [] },
    commit: { cpu: [], wall: [] },
    create: { cpu: [], wall: [] },
  };
  for (let r = 0; r < REPS; r++) {
    for (const name of names) {
      const m = await measure(OPS, ops[name]);
      samples[name].cpu.push(m.cpu);
      samples[name].wall.push(m.wall);
    }
  }
  const cpu = (name: Op) => median(samples[name].cpu);
  for (const name of names) {
    const s = samples[name];
    console.log(
      `  ${engine.name} ${name.padEnd(6)} CPU ${us(cpu(name))}/op (reps ${s.cpu.map((x) => x.toFixed(0)).join(' ')}), wall ${us(median(s.wall))}/op at ${CONCURRENCY} concurrent`,
    );
  }
  if (engine.countTrips) {
    for (const name of names) {
      const count = 100;
      const trips = await engine.countTrips(() => pump(count, 10, ops[name]));
      verdict(
        `${engine.name}: one round trip per ${name}`,
        trips / count <= 1,
        `${(trips / count).toFixed(2)} statements per ${name}`,
      );
    }
  }
}

// ---- http ------------------------------------------------------------------------------------

const SECRET = 'sfbench-sql-7c1e9a40d2b85f36-a94e0c17b2d5f8e3';

interface ServeConfig {
  engine: EngineName | 'bare';
  table?: string;
}

function reply(res: ServerResponse, body: string): void {
  res.writeHead(200, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

/**
 * The http mode's server (this file, forked with --serve): bare node:http, or node:http with
 * `withSession` and the store, on the routes of bench/servers: /setup writes k = "hello" (without
 * a cookie: a new visitor whose session is written), /read reads it, /write sets n.
 */
async function serveHttp(config: ServeConfig): Promise<void> {
  let handler: (req: IncomingMessage, res: ServerResponse) => void;
  let close = async () => {};
  if (config.engine === 'bare') {
    handler = (req, res) => reply(res, req.url === '/read' ? 'hello' : 'ok');
  } else {
    const engine = await ENGINES[config.engine]();
    const table = config.table!;
    const store = engine.store(table);
    await store.migrate();
    const { SessionManager } = (await import(
      pathToFileURL(join(MAIN_SRC, 'index.ts')).href
    )) as typeof import('../src/index.js');
    const { withSession } = (await import(
      pathToFileURL(join(MAIN_SRC, 'integrations/node.ts')).href
    )) as typeof import('../src/integrations/node.js');
    const manager = new SessionManager<{ k: string; n: number }>({
      secret: SECRET,
      cookie: { secure: false },
      store,
    });
    let counter = 0;
    handler = withSession(manager, (req, res, session) => {
      if (req.url === '/setup') {
        session.set('k', 'hello');
        return reply(res, 'ok');
      }
      if (req.url === '/write') {
        session.set('n', ++counter);
        return reply(res, 'ok');
      }
      return reply(res, session.get('k') ?? 'missing');
    });
    close = async () => {
      await manager.close();
      await engine.drop(table);
      await engine.close();
    };
  }
  const server = createServer(handler);
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const stop = async () => {
    server.closeAllConnections();
    server.close();
    await close().catch(() => undefined);
    process.exit(0);
  };
  process.on('message', (message) => {
    if (message === 'cpu') process.send!({ cpu: process.cpuUsage() });
    if (message === 'stop') void stop();
  });
  process.on('disconnect', () => void stop());
  process.send!({ port: (server.address() as AddressInfo).port });
}

interface Child {
  port: number;
  ask<T>(message: string): Promise<T>;
  stop(): Promise<void>;
}

async function startServer(config: ServeConfig): Promise<Child> {
  const child = fork(import.meta.filename, ['--serve', JSON.stringify(config), '--src', SRC], {
    execArgv: ['--import', 'tsx'],
  });
  const port = await new Promise<number>((done, fail) => {
    child.once('message', (m) => done((m as { port: number }).port));
    child.once('exit', (code) => fail(new Error(`server exited (${code})`)));
  });
  return {
    port,
    ask: (message) =>
      new Promise((done) => {
        child.once('message', (m) => done(m as never));
        child.send(message);
      }),
    stop: () =>
      new Promise((done) => {
        child.once('exit', () => done());
        child.send('stop');
      }),
  };
}

/** Server CPU µs per request and requests per second of one autocannon run. */
async function drive(server: Child, path: string, cookies: string[] | null) {
  let next = 0;
  const options = {
    url: `http://127.0.0.1:${server.port}${path}`,
    connections: 50,
    ...(cookies ? { setupClient: (c: Client) => c.setHeaders({ cookie: cookies[next++ % 50]! }) } : {}),
  };
  await autocannon({ ...options, duration: 1 });
  const before = await server.ask<{ cpu: NodeJS.CpuUsage }>('cpu');
  const result = await autocannon({ ...options, duration: DURATION });
  const after = await server.ask<{ cpu: NodeJS.CpuUsage }>('cpu');
  const cpu = after.cpu.user + after.cpu.system - before.cpu.user - before.cpu.system;
  if (result.errors + result.non2xx + result.timeouts > 0)
    throw new Error(
      `${path}: ${result.errors} errors, ${result.non2xx} non-2xx, ${result.timeouts} timeouts`,
    );
  return { us: cpu / result.requests.total, rps: result.requests.total / result.duration };
}

async function sessionsOf(server: Child): Promise<string[]> {
  const cookies: string[] = [];
  for (let i = 0; i < 50; i++) {
    const res = await fetch(`http://127.0.0.1:${server.port}/setup`);
    await res.arrayBuffer();
    cookies.push(res.headers.getSetCookie()[0]!.split(';')[0]!);
  }
  return cookies;
}

async function httpMode(engine: Engine): Promise<void> {
  const rows = { read: '/read', write: '/write', create: '/setup' } as const;
  type Row = keyof typeof rows;
  const ratios: Record<Row, number[]> = { read: [], write: [], create: [] };
  for (let round = 0; round < ROUNDS; round++) {
    const bare = await startServer({ engine: 'bare' });
    const base = await drive(bare, '/read', null);
    await bare.stop();
    // The server drops its table when it stops; the list drops it too if the server died.
    const table = newTable(engine);
    const server = await startServer({ engine: engine.name, table });
    try {
      const cookies = await sessionsOf(server);
      const line: string[] = [`bare ${base.us.toFixed(1)} µs/req`];
      for (const row of Object.keys(rows) as Row[]) {
        // A new visitor: no cookie, so every request creates (and writes) a session.
        const r = await drive(server, rows[row], row === 'create' ? null : cookies);
        ratios[row].push(base.us / r.us);
        line.push(
          `${row} ${r.us.toFixed(1)} µs/req (${(base.us / r.us).toFixed(3)} of bare by CPU, ${(r.rps / base.rps).toFixed(2)} by req/s)`,
        );
      }
      console.log(`  ${engine.name} round ${round + 1}: ${line.join('; ')}`);
    } finally {
      await server.stop();
    }
  }
  for (const row of Object.keys(rows) as Row[]) {
    const ratio = median(ratios[row]);
    const target = engine.name === 'postgres' && row !== 'create' ? TARGETS[row] : undefined;
    verdict(
      `${engine.name}: node:http ${row === 'create' ? 'new visitor' : row}s, server CPU per request vs bare${target ? ` >= ${target}` : ''}`,
      target === undefined ? undefined : ratio >= target,
      `${ratio.toFixed(3)} (median of ${ratios[row].length} rounds: ${ratios[row].map((x) => x.toFixed(3)).join(', ')})`,
    );
  }
}

// ---- fill ------------------------------------------------------------------------------------

async function latency(store: SqlSessionStore, rows: number, count: number) {
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const k = keyOf(Math.floor(Math.random() * rows));
    const t0 = performance.now();
    const r = await store.load(k);
    const dt = performance.now() - t0;
    if (!r) throw new Error('load missed a live row');
    times.push(dt * 1000);
  }
  times.sort((a, b) => a - b);
  return { p50: percentile(times, 50), p99: percentile(times, 99) };
}

/**
 * Load latency (one load at a time, random live keys) of the table at each size, measured in
 * rounds that alternate with a table of 1k sessions: the machine is shared, so the two are
 * compared within the same minutes. Median of the rounds' p50 and p99.
 */
async function fillMode(engine: Engine): Promise<void> {
  const t = Date.now();
  const refTable = newTable(engine);
  const ref = engine.store(refTable);
  await ref.migrate();
  await fillRange(engine, refTable, 0, 1_000, t);
  await engine.analyze(refTable);
  const table = newTable(engine);
  const store = engine.store(table);
  await store.migrate();
  const sizes = [1_000, 10_000, 100_000, 1_000_000].filter((s) => s <= N);
  if (!sizes.includes(N)) sizes.push(N);
  const rounds = 7;
  let last: { size: number; ref: Latency; big: Latency } | undefined;
  let filled = 0;
  for (const size of sizes) {
    const f0 = performance.now();
    await fillRange(engine, table, filled, size, t);
    filled = size;
    await engine.analyze(table);
    const fillMs = performance.now() - f0;
    await latency(store, size, 300); // warm-up
    const refRounds: Latency[] = [];
    const bigRounds: Latency[] = [];
    let misses = 0;
    const run = async () => {
      for (let r = 0; r < rounds; r++) {
        refRounds.push(await latency(ref, 1_000, 500));
        bigRounds.push(await latency(store, size, 500));
      }
    };
    if (engine.poolMisses) misses = await engine.poolMisses(run);
    else await run();
    const summary = (xs: Latency[]): Latency => ({
      p50: median(xs.map((x) => x.p50)),
      p99: median(xs.map((x) => x.p99)),
    });
    last = { size, ref: summary(refRounds), big: summary(bigRounds) };
    console.log(
      `  ${engine.name} ${String(size).padStart(8)} rows (${await engine.size(table)}, filled in ${(fillMs / 1000).toFixed(1)} s): load p50 ${us(last.big.p50)}, p99 ${us(last.big.p99)}; 1k table meanwhile p50 ${us(last.ref.p50)}, p99 ${us(last.ref.p99)}${engine.poolMisses ? `; buffer pool misses ${(misses / (rounds * 1000)).toFixed(2)}/load` : ''}`,
    );
  }
  if (!last) return;
  for (const p of ['p50', 'p99'] as const) {
    // A target for the server engines; SQLite's loads (a few µs, no round trip) are shown only.
    const ok = engine.name === 'sqlite' ? undefined : last.big[p] <= 1.5 * last.ref[p];
    verdict(
      `${engine.name}: load ${p} at ${last.size} sessions within 1.5x of 1k`,
      ok,
      `${us(last.ref[p])} -> ${us(last.big[p])} (${(last.big[p] / last.ref[p]).toFixed(2)}x)`,
    );
  }
}

interface Latency {
  p50: number;
  p99: number;
}

// ---- gc ----------------------------------------------------------------------------------------

async function gcMode(engine: Engine): Promise<void> {
  const table = newTable(engine);
  const store = engine.store(table, GC_BATCH === undefined ? {} : { gcBatchSize: GC_BATCH });
  await store.migrate();
  const t = Date.now();
  const f0 = performance.now();
  await fillRange(engine, table, 0, N, t, 2);
  await engine.analyze(table);
  console.log(
    `  ${engine.name} gc: ${N} rows, half expired, filled in ${((performance.now() - f0) / 1000).toFixed(1)} s (${await engine.size(table)})`,
  );
  // Time each gc batch: in SQLite a batch is synchronous, i.e. the event loop's block. A batch is
  // either through the expires_at index or, when the store walks the table in key order (MySQL
  // and MariaDB with most rows expired), a step of that walk.
  const batches: number[] = [];
  const paths = { index: 0, keyOrder: 0 };
  const target = store as unknown as Record<'deleteExpiredBatch' | 'deleteExpiredAfter', unknown>;
  for (const [name, path] of [
    ['deleteExpiredBatch', 'index'],
    ['deleteExpiredAfter', 'keyOrder'],
  ] as const) {
    if (typeof target[name] !== 'function') continue;
    const statement = (target[name] as (...a: unknown[]) => unknown).bind(store);
    target[name] = (...a: unknown[]) => {
      paths[path]++;
      const t0 = performance.now();
      const out = statement(...a);
      if (out instanceof Promise) return out.finally(() => batches.push(performance.now() - t0));
      batches.push(performance.now() - t0);
      return out;
    };
  }
  const live = (i: number) => keyOf(2 * (i % Math.floor(N / 2)) + 1);
  const delay = monitorEventLoopDelay({ resolution: 1 });
  const opTimes: number[] = [];
  let failures = 0;
  let i = 0;
  const load = setInterval(() => {
    const k = live(Math.floor(Math.random() * N));
    const t0 = performance.now();
    const op =
      ++i % 4 === 0
        ? store.commit(k, { set: { 'v:n': String(i) }, unset: [], meta: { lastSeenAt: t } }, HOUR)
        : store.load(k);
    op.then(
      () => opTimes.push(performance.now() - t0),
      () => failures++,
    );
  }, 1);
  // The same load without gc first: what the event loop sees anyway (in SQLite, every commit's
  // fsync runs on it too), to tell gc's own blocks from the rest.
  const quiet = monitorEventLoopDelay({ resolution: 1 });
  quiet.enable();
  await new Promise((r) => setTimeout(r, 3_000));
  quiet.disable();
  opTimes.length = 0;
  // The server's CPU meanwhile (MariaDB on this machine), beside this process's: which of the
  // two, or the disk, is the limit of gc here.
  const serverCpuSince = await engine.serverCpu?.();
  delay.enable();
  const g0 = performance.now();
  const cpu0 = process.cpuUsage();
  const removed = await store.gc(t);
  const gcMs = performance.now() - g0;
  const ownCpu = process.cpuUsage(cpu0);
  const serverCpu = serverCpuSince?.();
  delay.disable();
  clearInterval(load);
  await new Promise((r) => setTimeout(r, 50));
  opTimes.sort((a, b) => a - b);
  batches.sort((a, b) => a - b);
  const maxDelay = delay.max / 1e6;
  console.log(
    `  ${engine.name} gc: removed ${removed} in ${ms(gcMs)}, ${batches.length} batches (${paths.keyOrder ? 'in key order' : 'through the expires_at index'}; median ${ms(percentile(batches, 50))}, max ${ms(batches.at(-1) ?? 0)}); ` +
      `event-loop delay p99 ${ms(delay.percentile(99) / 1e6)}, max ${ms(maxDelay)} (the same load without gc: p99 ${ms(quiet.percentile(99) / 1e6)}, max ${ms(quiet.max / 1e6)}); ` +
      `${opTimes.length} loads/commits meanwhile, p50 ${ms(percentile(opTimes, 50))}, p99 ${ms(percentile(opTimes, 99))}, ${failures} failed`,
  );
  const cores = (seconds: number) => `${seconds.toFixed(1)} s, ${(seconds / (gcMs / 1000)).toFixed(2)} cores`;
  console.log(
    `  ${engine.name} gc: CPU meanwhile: this process ${cores((ownCpu.user + ownCpu.system) / 1e6)}` +
      (serverCpu === undefined ? '' : `; the database server ${cores(serverCpu)}`) +
      ` (the machine has ${availableParallelism()})`,
  );
  verdict(
    `${engine.name}: gc of ${N} sessions, half expired, < 10 s`,
    gcMs < 10_000 && removed === Math.ceil(N / 2),
    `${ms(gcMs)}, removed ${removed}`,
  );
  verdict(
    `${engine.name}: no event-loop block > 20 ms while gc runs under load`,
    maxDelay <= 20,
    `max delay ${ms(maxDelay)}, p99 ${ms(delay.percentile(99) / 1e6)}, longest batch ${ms(batches.at(-1) ?? 0)}`,
  );
}

// ---- main ----------------------------------------------------------------------------------------

if (args.serve) await serveHttp(JSON.parse(args.serve) as ServeConfig);
else await main();

async function main(): Promise<void> {
  console.log(
    `bench/sql.ts: stores ${STORES.join(', ')}; modes ${MODES.join(', ')}; n ${N}; src ${SRC}; node ${process.version}`,
  );
  try {
    for (const name of STORES) {
      let engine: Engine;
      try {
        engine = await ENGINES[name]();
      } catch (err) {
        verdict(`${name}`, undefined, `not reachable: ${(err as Error).message}`);
        continue;
      }
      try {
        for (const mode of MODES) {
          console.log(`${name} ${mode}`);
          if (mode === 'ops') await opsMode(engine);
          else if (mode === 'http') await httpMode(engine);
          else if (mode === 'fill') await fillMode(engine);
          else await gcMode(engine);
          await dropAll();
        }
      } finally {
        await dropAll();
        await engine.close();
      }
    }
  } finally {
    await dropAll();
  }
}
