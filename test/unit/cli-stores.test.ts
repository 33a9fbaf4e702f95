import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import Memcached from 'memcached';
import mysql from 'mysql2/promise';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT, run } from '../../src/cli/main.js';
import { type SelectedStore, storeFromUrl } from '../../src/cli/store-from-url.js';
import type { SessionMeta, SessionStore } from '../../src/stores/store.js';
import { serverAvailable } from '../helpers/servers.js';
import { openReachable } from '../helpers/store-urls.js';

/**
 * The admin command against the real servers: every store the CLI can open, with non-default
 * names (--prefix, --table) so that these tests share nothing with the others. Read commands
 * must never create anything; unreachable servers must answer within the bound.
 */
const REDIS = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const CLUSTER = `redis-cluster://${process.env.REDIS_CLUSTER_NODES ?? '127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103'}`;
const MEMCACHED_SERVERS = process.env.MEMCACHED_SERVERS ?? '127.0.0.1:11211,127.0.0.1:11212';
const MEMCACHED = `memcached://${MEMCACHED_SERVERS}`;
const PG = process.env.PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const MYSQL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';

const scratch = await mkdtemp(join(tmpdir(), 'sessionflow-cli-stores-'));
const tag = randomBytes(4).toString('hex');
afterAll(() => rm(scratch, { recursive: true, force: true }));

interface Result {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

async function cli(...argv: string[]): Promise<Result> {
  const out: string[] = [];
  const err: string[] = [];
  const started = Date.now();
  const code = await run(
    argv,
    (l) => out.push(l),
    (l) => err.push(l),
    { stdoutIsTTY: false },
  );
  return { code, stdout: out.join('\n'), stderr: err.join('\n'), ms: Date.now() - started };
}

const json = (r: Result) => JSON.parse(r.stdout) as Record<string, unknown>;
const key = () => randomBytes(32).toString('base64url');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Seeded {
  /** u1's three sessions; the first is the oldest, the second the largest. */
  u1: string[];
  u2: string;
  anonymous: string;
  all: string[];
}

async function put(
  store: SessionStore,
  options: { userId?: string; createdAt?: number; bytes?: number; ttlMs?: number } = {},
): Promise<string> {
  const k = key();
  const now = Date.now();
  const meta: SessionMeta = {
    createdAt: options.createdAt ?? now,
    lastSeenAt: now,
    deadline: now + 3_600_000,
  };
  if (options.userId !== undefined) meta.userId = options.userId;
  const values: Record<string, string> = options.bytes
    ? { blob: JSON.stringify('x'.repeat(options.bytes)) }
    : { n: '1' };
  expect(await store.create(k, { meta, values }, options.ttlMs ?? 600_000)).toBe(true);
  return k;
}

/** Five live sessions (u1 ×3, u2, one anonymous) and, where the store keeps them, one expired. */
async function seed(store: SessionStore): Promise<Seeded> {
  const u1 = [
    await put(store, { userId: 'u1', createdAt: Date.now() - 3_600_000 }),
    await put(store, { userId: 'u1', bytes: 6000 }),
    await put(store, { userId: 'u1' }),
  ];
  const u2 = await put(store, { userId: 'u2' });
  const anonymous = await put(store);
  const expired = await put(store, { userId: 'u2', ttlMs: 5 });
  await sleep(30);
  return { u1, u2, anonymous, all: [...u1, u2, anonymous, expired] };
}

/** The scenario every store that lists sessions goes through. */
async function listingScenario(url: string, names: string[], store: SessionStore, keepsExpired: boolean) {
  const s = await seed(store);
  const base = ['--store', url, ...names];

  const stats = await cli('stats', ...base, '--json');
  expect(stats.code, stats.stderr).toBe(EXIT.ok);
  expect(json(stats)).toMatchObject({
    enumerable: true,
    count: keepsExpired ? 6 : 5,
    live: 5,
    expired: keepsExpired ? 1 : null,
    authenticated: 4,
    anonymous: 1,
    users: 2,
    byUser: [
      { user: 'u1', sessions: 3 },
      { user: 'u2', sessions: 1 },
    ],
    oldest: { id: s.u1[0] },
  });
  const sizes = (json(stats) as { sizes: { count: number }[] }).sizes.map((b) => b.count);
  expect(sizes).toEqual([4, 0, 1, 0, 0, 0]);
  expect((json(stats) as { bytes: number }).bytes).toBeGreaterThan(6000);
  const top1 = await cli('stats', ...base, '--json', '--top', '1');
  expect((json(top1) as { byUser: unknown[] }).byUser).toEqual([{ user: 'u1', sessions: 3 }]);
  expect((await cli('stats', ...base)).stdout).toContain('sessions: ');

  const listed = await cli('sessions', ...base, '--user', 'u1', '--json');
  expect(listed.code, listed.stderr).toBe(EXIT.ok);
  expect((json(listed) as { sessions: { id: string }[] }).sessions.map((x) => x.id).sort()).toEqual(
    [...s.u1].sort(),
  );

  expect((await cli('revoke', ...base, '--id', s.u2)).code).toBe(EXIT.ok);
  expect(await store.load(s.u2)).toBeNull();
  expect((await cli('revoke', ...base, '--id', s.u2)).code).toBe(EXIT.nothingMatched);
  expect((await cli('sessions', ...base, '--user', 'u2')).code).toBe(EXIT.nothingMatched);

  const revoked = await cli('revoke', ...base, '--user', 'u1', '--except', s.u1[0]!, '--json');
  expect(json(revoked)).toMatchObject({ revoked: 2, countKnown: true });
  expect(await store.load(s.u1[0]!)).not.toBeNull();
  expect(await store.load(s.u1[1]!)).toBeNull();
  expect((await cli('revoke', ...base, '--user', 'u1', '--except', s.u1[0]!)).code).toBe(EXIT.nothingMatched);

  const gc = await cli('gc', ...base, '--json');
  expect(gc.code, gc.stderr).toBe(EXIT.ok);
  if (keepsExpired) expect(json(gc)).toMatchObject({ removed: 1 });
  else expect(json(gc)).toMatchObject({ removed: 0, selfExpiring: true });

  const after = await cli('stats', ...base, '--json');
  expect(json(after)).toMatchObject({ count: 2, live: 2, users: 1 });
  for (const k of s.all) await store.destroy(k);
}

// ---- Redis, Redis Cluster --------------------------------------------------------------------------

for (const [label, url] of [
  ['redis', REDIS],
  ['redis cluster', CLUSTER],
] as const) {
  describe(`sessionflow on ${label}`, async () => {
    const prefix = `sfcli-${tag}:`;
    let selected: SelectedStore | undefined;
    const skip = await serverAvailable(`${label} store`, async () => {
      selected = await openReachable(url, { prefix });
    });
    afterAll(() => selected?.close());

    it.skipIf(skip)('stats, sessions, revoke --id / --user, gc with --prefix', async () => {
      await listingScenario(url, ['--prefix', prefix], selected!.store, false);
    });

    it.skipIf(skip)('the default prefix does not see sessions under another prefix', async () => {
      const k = await put(selected!.store, { userId: `only-under-${tag}` });
      const r = await cli('sessions', '--store', url, '--user', `only-under-${tag}`);
      expect(r.code).toBe(EXIT.nothingMatched);
      expect(
        (await cli('sessions', '--store', url, '--prefix', prefix, '--user', `only-under-${tag}`)).code,
      ).toBe(EXIT.ok);
      await selected!.store.destroy(k);
    });
  });
}

// ---- Memcached -------------------------------------------------------------------------------------

describe('sessionflow on memcached', async () => {
  const prefix = `sfcli-${tag}:`;
  let selected: SelectedStore | undefined;
  const skip = await serverAvailable('memcached store', async () => {
    selected = await storeFromUrl(MEMCACHED, { prefix, admin: true });
  });
  afterAll(async () => {
    await selected?.close();
    // The user's revocation record has no expiry: removed by hand.
    const client = new Memcached(MEMCACHED_SERVERS.split(','));
    const userItem = `${prefix}u:${createHash('sha256').update('m1').digest('base64url')}`;
    await new Promise((r) => client.del(userItem, r));
    client.end();
  });

  it.skipIf(skip)('stats says what Memcached cannot give; revoke --user works, count unknown', async () => {
    const store = selected!.store;
    const base = ['--store', MEMCACHED, '--prefix', prefix];
    const a = await put(store, { userId: 'm1' });
    const b = await put(store, { userId: 'm1' });
    const anon = await put(store);

    const stats = await cli('stats', ...base, '--json');
    expect(stats.code).toBe(EXIT.ok);
    const s = json(stats) as { notes: string[]; servers: { items: number } };
    expect(s).toMatchObject({ enumerable: false, count: null, live: null, byUser: null });
    expect(s.notes[0]).toMatch(/cannot enumerate its keys/);
    expect(s.servers.items).toBeGreaterThanOrEqual(3);
    expect((await cli('stats', ...base)).stdout).toMatch(/not available: memcached .* cannot enumerate/);

    const list = await cli('sessions', ...base, '--user', 'm1');
    expect(list.code).toBe(EXIT.usage);
    expect(list.stderr).toMatch(/cannot list sessions/);

    const revoked = await cli('revoke', ...base, '--user', 'm1', '--json');
    expect(revoked.code).toBe(EXIT.ok);
    expect(json(revoked)).toMatchObject({ user: 'm1', revoked: null, countKnown: false });
    const text = await cli('revoke', ...base, '--user', 'm1');
    expect(text.stdout).toMatch(/how many were ended is unknown/);
    expect(await store.load(a)).toBeNull();
    expect(await store.load(b)).toBeNull();

    expect((await cli('revoke', ...base, '--id', anon)).code).toBe(EXIT.ok);
    expect(await store.load(anon)).toBeNull();
    expect((await cli('revoke', ...base, '--id', anon)).code).toBe(EXIT.nothingMatched);
    expect(json(await cli('gc', ...base, '--json'))).toMatchObject({ selfExpiring: true });
  });
});

// ---- PostgreSQL, MariaDB, SQLite ---------------------------------------------------------------------

describe('sessionflow on postgres', async () => {
  const table = `sf_cli_${tag}`;
  const absent = `sf_cli_absent_${tag}`;
  let selected: SelectedStore | undefined;
  let pool: pg.Pool | undefined;
  const skip = await serverAvailable('postgres store', async () => {
    pool = new pg.Pool({ connectionString: PG, max: 2 });
    await pool.query('SELECT 1');
    selected = await storeFromUrl(PG, { table });
  });
  const exists = async (name: string) =>
    (await pool!.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [name])).rows[0]?.t != null;
  afterAll(async () => {
    await selected?.close();
    await pool?.query(`DROP TABLE IF EXISTS "${table}"`);
    await pool?.end();
  });

  it.skipIf(skip)('stats, sessions, revoke --id / --user, gc with --table', async () => {
    await listingScenario(PG, ['--table', table], selected!.store, true);
  });

  it.skipIf(skip)(
    'read and write commands never create the table: "no sessions table", exit code 3',
    async () => {
      for (const argv of [['sessions', '--user', '1'], ['stats'], ['gc'], ['revoke', '--user', '1']]) {
        const r = await cli(...argv, '--store', PG, '--table', absent);
        expect(r.code, argv.join(' ')).toBe(EXIT.store);
        expect(r.stderr).toContain(`no sessions table "${absent}"`);
      }
      expect(await exists(absent)).toBe(false);
    },
  );

  it.skipIf(skip)('a database that does not exist is exit code 3 with the server’s reason', async () => {
    const r = await cli('stats', '--store', PG.replace(/\/[^/]*$/, `/no_such_db_${tag}`));
    expect(r.code).toBe(EXIT.store);
    expect(r.stderr).toMatch(/does not exist/);
  });
});

describe('sessionflow on mariadb', async () => {
  const table = `sf_cli_${tag}`;
  const absent = `sf_cli_absent_${tag}`;
  let selected: SelectedStore | undefined;
  let pool: mysql.Pool | undefined;
  const skip = await serverAvailable('mariadb store', async () => {
    pool = mysql.createPool(MYSQL);
    await pool.query('SELECT 1');
    selected = await storeFromUrl(MYSQL, { table });
  });
  const exists = async (name: string) => {
    const [rows] = await pool!.query(
      'SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?',
      [name],
    );
    return Number((rows as { n: number }[])[0]?.n) > 0;
  };
  afterAll(async () => {
    await selected?.close();
    await pool?.query(`DROP TABLE IF EXISTS \`${table}\``);
    await pool?.end();
  });

  it.skipIf(skip)('stats, sessions, revoke --id / --user, gc with --table', async () => {
    await listingScenario(MYSQL, ['--table', table], selected!.store, true);
  });

  it.skipIf(skip)(
    'read and write commands never create the table: "no sessions table", exit code 3',
    async () => {
      for (const argv of [['sessions', '--user', '1'], ['stats'], ['gc']]) {
        const r = await cli(...argv, '--store', MYSQL, '--table', absent);
        expect(r.code, argv.join(' ')).toBe(EXIT.store);
        expect(r.stderr).toContain(`no sessions table "${absent}"`);
      }
      expect(await exists(absent)).toBe(false);
    },
  );
});

describe('sessionflow on sqlite', () => {
  const file = join(scratch, 'sessions.db');
  const table = `sf_cli_${tag}`;
  let selected: SelectedStore;
  beforeAll(async () => {
    selected = await storeFromUrl(`sqlite:${file}`, { table });
  });
  afterAll(() => selected.close());

  it('stats, sessions, revoke --id / --user, gc with --table', async () => {
    await listingScenario(`sqlite:${file}`, ['--table', table], selected.store, true);
  });

  it('a missing database file is never created; a database without the table gets no table', async () => {
    const typo = join(scratch, 'typo', 'sessions.db');
    for (const argv of [['stats'], ['gc'], ['sessions', '--user', '1']]) {
      const r = await cli(...argv, '--store', `sqlite:${typo}`);
      expect(r.code).toBe(EXIT.store);
      expect(r.stderr).toContain(`no such database file: ${typo}`);
    }
    expect(existsSync(join(scratch, 'typo'))).toBe(false);
    const r = await cli('stats', '--store', `sqlite:${file}`, '--table', 'sf_cli_absent');
    expect(r.code).toBe(EXIT.store);
    expect(r.stderr).toContain('no sessions table "sf_cli_absent"');
    const db = new Database(file, { readonly: true });
    expect(db.prepare("SELECT name FROM sqlite_master WHERE name = 'sf_cli_absent'").all()).toEqual([]);
    db.close();
  });
});

// ---- unreachable servers ---------------------------------------------------------------------------

describe('sessionflow: an unreachable server is a clear error within the bound', () => {
  let stalled: Server;
  let port = 0;
  const sockets = new Set<Socket>();
  beforeAll(async () => {
    // Accepts connections and never answers: a server that hangs, or a network that drops.
    stalled = createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => stalled.listen(0, '127.0.0.1', resolve));
    port = (stalled.address() as { port: number }).port;
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => stalled.close(r));
  });

  const urls = (p: number) => [
    `redis://127.0.0.1:${p}`,
    `redis-cluster://127.0.0.1:${p}`,
    `memcached://127.0.0.1:${p}`,
    `postgres://postgres@127.0.0.1:${p}/test`,
    `mysql://root@127.0.0.1:${p}/test`,
  ];

  it('a server that accepts but never answers: exit code 3 after --timeout (1 s), not a hang', async () => {
    for (const url of urls(port)) {
      const r = await cli('stats', '--store', url, '--timeout', '1');
      expect(r.code, `${url}: ${r.stderr}`).toBe(EXIT.store);
      expect(r.ms, url).toBeLessThan(2500);
      expect(r.stderr, url).toMatch(/no answer from .* within 1 s|timeout|timed out|ETIMEDOUT/i);
    }
  });

  it('a refused connection: exit code 3 at once, saying the server is not running', async () => {
    for (const url of urls(1)) {
      const r = await cli('sessions', '--store', url, '--user', '1');
      expect(r.code, `${url}: ${r.stderr}`).toBe(EXIT.store);
      expect(r.ms, url).toBeLessThan(3500);
      expect(r.stderr, url).toMatch(/ECONNREFUSED|Is the (server|cluster) running|no answer/);
    }
  });

  it('the default bound is a few seconds', async () => {
    const r = await cli('stats', '--store', `redis://127.0.0.1:${port}`, '--json');
    expect(r.code).toBe(EXIT.store);
    expect(r.ms).toBeGreaterThanOrEqual(2900);
    expect(r.ms).toBeLessThan(4500);
    expect(JSON.parse(r.stderr)).toMatchObject({ error: { exitCode: 3, reason: 'unreachable' } });
  });
});
