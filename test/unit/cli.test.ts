import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { EXIT, type RunOptions, run } from '../../src/cli/main.js';
import { FileStore, SessionManager } from '../../src/index.js';
import type { SessionMeta } from '../../src/stores/store.js';

const root = await mkdtemp(join(tmpdir(), 'sessionflow-cli-'));
// The library's default directory follows XDG_STATE_HOME: this file's own, so that `--store file`
// and `new FileStore()` meet in a scratch directory (each test file runs in its own worker).
const stateHome = join(root, 'state');
process.env.XDG_STATE_HOME = stateHome;
const defaultDir = join(stateHome, 'sessionflow');
afterAll(() => rm(root, { recursive: true, force: true }));
const secret = 'cli-test-secret-0123456789abcdefghijklmnopqr';

interface Result {
  code: number;
  out: string[];
  err: string[];
  /** stdout as one string */
  stdout: string;
  stderr: string;
}

async function cli(argv: string[], options: RunOptions = {}): Promise<Result> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await run(
    argv,
    (l) => out.push(l),
    (l) => err.push(l),
    { stdoutIsTTY: false, ...options },
  );
  return { code, out, err, stdout: out.join('\n'), stderr: err.join('\n') };
}

const json = (r: Result) => JSON.parse(r.stdout) as Record<string, unknown>;

/** Logs `userId` in through a real manager on `store`; returns the session's record id. */
async function loginAs(store: FileStore, userId: string): Promise<string> {
  const manager = new SessionManager({ secret, store });
  const session = await manager.load({ secure: true });
  await session.login(userId);
  await manager.commit(session, { secure: true });
  return session.id;
}

const key = () => randomBytes(32).toString('base64url');

/** A record written straight to the store: `ttlMs` <= 20 makes it expire right away. */
async function put(
  store: FileStore,
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
    : {};
  expect(await store.create(k, { meta, values }, options.ttlMs ?? 600_000)).toBe(true);
  return k;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every path under `dir` with its size, mode and mtime. */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { recursive: true })) {
    const st = await stat(join(dir, entry));
    out.push(`${entry} ${st.size} ${st.mode.toString(8)} ${st.mtimeMs}`);
  }
  return out.sort();
}

describe('sessionflow: the same default store as the library', () => {
  it('without --store (or with --store file) it reads new FileStore()’s directory, and never creates it', async () => {
    const missing = await cli(['sessions', '--user', '42']);
    expect(missing.code).toBe(EXIT.store);
    expect(missing.stderr).toContain(`no session directory at ${defaultDir}`);
    expect((await cli(['stats', '--store', 'file'])).code).toBe(EXIT.store);
    expect((await cli(['gc'])).code).toBe(EXIT.store);
    expect((await cli(['revoke', '--user', '42'])).code).toBe(EXIT.store);
    expect(existsSync(defaultDir)).toBe(false);

    // The application's store, built as the library builds it by default.
    const store = new FileStore();
    expect(store.dir).toBe(defaultDir);
    const sid = await loginAs(store, '42');
    const listed = await cli(['sessions', '--user', '42']);
    expect(listed.code).toBe(EXIT.ok);
    expect(listed.stdout).toContain(sid);
    const revoked = await cli(['revoke', '--store', 'file', '--user', '42']);
    expect(revoked.out).toEqual(['revoked 1 session(s) of user 42']);
    expect(revoked.code).toBe(EXIT.ok);
    expect(await store.load(sid)).toBeNull();
    await store.close();
  });
});

describe('sessionflow sessions | revoke on a file store', () => {
  it('SM-37: lists a user’s sessions and revokes all but one, on the file store named by URL', async () => {
    const dir = join(root, 'a');
    const store = new FileStore({ dir, fsync: false });
    const keep = await loginAs(store, 'u1');
    const other = await loginAs(store, 'u1');
    await loginAs(store, 'u2');
    const listed = await cli(['sessions', '--store', `file:${dir}`, '--user', 'u1']);
    expect(listed.code).toBe(EXIT.ok);
    expect(listed.out.at(-1)).toBe('2 live session(s) for user u1');
    expect(listed.stdout).toContain(keep);
    expect(listed.stdout).toContain(other);
    const revoked = await cli(['revoke', '--store', `file:${dir}`, '--user', 'u1', '--except', keep]);
    expect(revoked.out).toEqual(['revoked 1 session(s) of user u1']);
    expect(await store.load(other)).toBeNull();
    expect(await store.load(keep)).not.toBeNull();
    expect((await store.sessionsOf('u2')).length).toBe(1);
    expect((await cli(['revoke', '--store', `file:${dir}`, '--id', keep])).code).toBe(EXIT.ok);
    expect(await store.load(keep)).toBeNull();
  });

  it('revoke --id checks that the session exists: an unknown id is exit code 1, not "revoked"', async () => {
    const dir = join(root, 'unknown-id');
    const store = new FileStore({ dir, fsync: false });
    await loginAs(store, 'u1');
    const unknown = key();
    const r = await cli(['revoke', '--store', `file:${dir}`, '--id', unknown]);
    expect(r.code).toBe(EXIT.nothingMatched);
    expect(r.stdout).toBe(`no live session with id ${unknown} in file (${dir}); nothing revoked`);
    expect(r.stdout).not.toMatch(/^revoked/);
  });

  it('revoke --id follows ID changes like manager.revoke(): the record id ends every cookie the session had', async () => {
    const dir = join(root, 'renewed');
    const store = new FileStore({ dir, fsync: false });
    const manager = new SessionManager({ secret, store });
    const session = await manager.load({ secure: true });
    await session.login('u9');
    const first = await manager.commit(session, { secure: true });
    const id = session.id;
    // A later ID change (new cookie) keeps the record id.
    const again = await manager.load({ secure: true, cookieHeader: cookieHeaderOf(first) });
    await again.regenerateId();
    const second = await manager.commit(again, { secure: true });
    expect(again.id).toBe(id);
    expect(cookieHeaderOf(second)).not.toEqual(cookieHeaderOf(first));
    expect((await cli(['revoke', '--store', `file:${dir}`, '--id', id])).code).toBe(EXIT.ok);
    for (const cookieHeader of [cookieHeaderOf(first), cookieHeaderOf(second)]) {
      const back = await manager.load({ secure: true, cookieHeader });
      expect(back.userId).toBeUndefined();
    }
  });

  it('a session id that starts with a dash (1 in 64) is taken as the value of --id / --except', async () => {
    const dir = join(root, 'dash');
    const store = new FileStore({ dir, fsync: false });
    const now = Date.now();
    const meta = { createdAt: now, lastSeenAt: now, deadline: now + 60_000, userId: 'd' };
    const dashed = `-${key().slice(1)}`;
    const other = `-${key().slice(1)}`;
    await store.create(dashed, { meta, values: {} }, 60_000);
    await store.create(other, { meta, values: {} }, 60_000);
    const keep = await cli(['revoke', '--store', `file:${dir}`, '--user', 'd', '--except', dashed, '--json']);
    expect(json(keep)).toMatchObject({ revoked: 1, except: dashed });
    expect((await cli(['revoke', '--store', `file:${dir}`, '--id', dashed])).code).toBe(EXIT.ok);
    expect(await store.load(dashed)).toBeNull();
    // An option where the value should be is still a missing value.
    expect((await cli(['revoke', '--store', `file:${dir}`, '--id', '--json'])).code).toBe(EXIT.usage);
  });

  it('revoke --user that matches nothing is exit code 1; sessions for a user without any is exit code 1', async () => {
    const dir = join(root, 'nobody');
    await loginAs(new FileStore({ dir, fsync: false }), 'u1');
    const revoke = await cli(['revoke', '--store', `file:${dir}`, '--user', 'nobody']);
    expect(revoke.code).toBe(EXIT.nothingMatched);
    expect(revoke.stdout).toBe('no live session of user nobody; nothing revoked');
    const list = await cli(['sessions', '--store', `file:${dir}`, '--user', 'nobody']);
    expect(list.code).toBe(EXIT.nothingMatched);
    expect(list.out).toEqual(['0 live session(s) for user nobody']);
  });
});

/** The cookies a commit set, as the `Cookie` header of the next request. */
function cookieHeaderOf(outcome: { setCookie: string[] }): string {
  return outcome.setCookie.map((c) => c.split(';')[0]).join('; ');
}

describe('sessionflow: a mistyped or foreign directory', () => {
  it('a file: path that does not exist is exit code 3 for every command, and is never created', async () => {
    const typo = join(root, 'no-such-dir', 'sessions');
    for (const argv of [
      ['gc'],
      ['stats'],
      ['sessions', '--user', '1'],
      ['revoke', '--user', '1'],
      ['revoke', '--id', key()],
    ]) {
      const r = await cli([...argv, '--store', `file:${typo}`]);
      expect(r.code, argv.join(' ')).toBe(EXIT.store);
      expect(r.stderr).toContain(`no such directory: ${typo}`);
    }
    expect(existsSync(join(root, 'no-such-dir'))).toBe(false);
  });

  it('a directory of another program is refused and left as it was (gc deletes nothing)', async () => {
    const dir = join(root, 'project');
    await mkdir(dir);
    for (const name of ['yarn.lock', 'Cargo.lock', '.tmp-upload-123', 'production_settings.json']) {
      await writeFile(join(dir, name), 'keep me');
    }
    const before = (await readdir(dir)).sort();
    for (const argv of [['gc'], ['stats'], ['sessions', '--user', '1']]) {
      const r = await cli([...argv, '--store', `file:${dir}`]);
      expect(r.code).toBe(EXIT.store);
      expect(r.stderr).toContain('is not a sessionflow session directory');
    }
    expect((await readdir(dir)).sort()).toEqual(before);
  });

  it('read commands leave a session directory exactly as it was (even one from before the marker)', async () => {
    const dir = join(root, 'untouched');
    const store = new FileStore({ dir, fsync: false });
    await loginAs(store, 'u1');
    await put(store, { userId: 'u1', ttlMs: 1 }); // expired: a read must not collect it
    await store.close();
    await rm(join(dir, '.sessionflow-store')); // a directory written before the marker existed
    await sleep(30);
    const before = await snapshot(dir);
    const listed = await cli(['sessions', '--store', `file:${dir}`, '--user', 'u1']);
    expect(listed.code).toBe(EXIT.ok);
    expect(listed.out.at(-1)).toBe('1 live session(s) for user u1');
    expect((await cli(['stats', '--store', `file:${dir}`])).code).toBe(EXIT.ok);
    expect((await cli(['sessions', '--store', `file:${dir}`, '--user', 'nobody'])).code).toBe(
      EXIT.nothingMatched,
    );
    expect(await snapshot(dir)).toEqual(before);
  });

  it('an empty directory reads as an empty store and is left empty', async () => {
    const dir = join(root, 'empty');
    await mkdir(dir);
    const stats = await cli(['stats', '--store', `file:${dir}`, '--json']);
    expect(stats.code).toBe(EXIT.ok);
    expect(json(stats)).toMatchObject({ count: 0, live: 0, expired: 0, oldest: null, byUser: [] });
    expect((json(stats) as { sizes: unknown[] }).sizes).toHaveLength(6);
    expect((await cli(['sessions', '--store', `file:${dir}`, '--user', '1'])).code).toBe(EXIT.nothingMatched);
    expect((await cli(['gc', '--store', `file:${dir}`])).code).toBe(EXIT.ok);
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('sessionflow: help and usage errors', () => {
  it('--help on every command prints its usage on stdout, exit code 0', async () => {
    for (const argv of [['--help'], ['-h'], ['help'], ['gc', '--help'], ['help', 'gc']]) {
      const r = await cli(argv);
      expect(r.code, argv.join(' ')).toBe(EXIT.ok);
      expect(r.stdout).toMatch(/^usage: sessionflow/);
      expect(r.err).toEqual([]);
    }
    for (const command of ['gc', 'sessions', 'revoke', 'stats']) {
      const r = await cli([command, '--help']);
      expect(r.code).toBe(EXIT.ok);
      expect(r.stdout).toMatch(new RegExp(`^usage: sessionflow ${command}`));
      expect(r.stdout).toContain('exit codes: 0 done, 1 nothing matched, 2 usage error, 3 store unusable');
      // Help wins even with other mistakes on the line.
      expect((await cli([command, '--bogus', '-h'])).code).toBe(EXIT.ok);
    }
  });

  it('an unknown command or flag prints the usage on stderr, exit code 2', async () => {
    for (const argv of [
      [],
      ['frobnicate'],
      ['toString'],
      ['help', 'constructor'],
      ['gc', '--bogus'],
      ['gc', '--user', '1'],
      ['stats', 'extra'],
      ['sessions'],
      ['revoke'],
      ['revoke', '--id', key(), '--user', '1'],
      ['revoke', '--id', 'not a session id'],
      ['revoke', '--id', key(), '--except', key()],
      ['stats', '--top', '0'],
      ['gc', '--timeout', 'soon'],
      ['help', 'nope'],
    ]) {
      const r = await cli(argv);
      expect(r.code, argv.join(' ')).toBe(EXIT.usage);
      expect(r.out, argv.join(' ')).toEqual([]);
      expect(r.stderr, argv.join(' ')).toMatch(/usage: sessionflow/);
    }
    expect((await cli(['sessions', '--store', 'memory'])).stderr).toMatch(/sessions needs --user/);
  });

  it('a bad store URL or an option the store does not take is a clear usage error (password never shown)', async () => {
    const ftp = await cli(['gc', '--store', 'ftp://user:hunter2@host/x']);
    expect(ftp.code).toBe(EXIT.usage);
    expect(ftp.stderr).toMatch(/not supported/);
    expect(ftp.stderr).not.toContain('hunter2');
    const cases: [string[], RegExp][] = [
      [['--store', 'redis://user:hunter2@:notaport'], /not a valid URL/],
      [['--store', 'memcached://'], /needs at least one host:port/],
      [['--store', 'memcached://localhost'], /is not host:port/],
      [['--store', 'redis-cluster://h:1,h:x'], /is not host:port/],
      [['--store', 'mysql://root@127.0.0.1:3306'], /names no database/],
      [['--store', 'sqlite:'], /needs a database file/],
      [['--store', 'memory'], /inside the application's process/],
      [['--store', `file:${root}`, '--prefix', 'x:'], /prefix applies to Redis and Memcached/],
      [['--store', 'redis://127.0.0.1:6379', '--table', 't'], /table name applies to SQL stores/],
      [['--store', 'postgres://u@127.0.0.1/db', '--table', 'bad-name'], /table name "bad-name" is invalid/],
      [['--store', 'redis://127.0.0.1:6379', '--prefix', 'a{b}'], /prefix/],
    ];
    for (const [argv, message] of cases) {
      const r = await cli(['stats', ...argv]);
      expect(r.code, argv.join(' ')).toBe(EXIT.usage);
      expect(r.stderr, argv.join(' ')).toMatch(message);
      expect(r.stderr).not.toContain('hunter2');
    }
  });
});

describe('sessionflow --json', () => {
  it('every command answers one JSON object on stdout; errors are a JSON object on stderr', async () => {
    const dir = join(root, 'json');
    const store = new FileStore({ dir, fsync: false });
    const a = await loginAs(store, 'ann');
    const b = await loginAs(store, 'ann');
    await put(store, { ttlMs: 1 });
    await sleep(30);
    const s = ['--store', `file:${dir}`, '--json'];

    const listed = await cli(['sessions', ...s, '--user', 'ann']);
    expect(listed.code).toBe(EXIT.ok);
    const list = json(listed) as { sessions: { id: string; user: string; createdAt: string }[] };
    expect(list).toMatchObject({ command: 'sessions', user: 'ann', count: 2 });
    expect(list.sessions.map((x) => x.id).sort()).toEqual([a, b].sort());
    expect(list.sessions[0]!.user).toBe('ann');
    expect(Date.parse(list.sessions[0]!.createdAt)).toBeGreaterThan(0);

    const stats = await cli(['stats', ...s]);
    expect(json(stats)).toMatchObject({ command: 'stats', count: 3, live: 2, expired: 1, users: 1 });

    const gc = await cli(['gc', ...s]);
    expect(json(gc)).toMatchObject({ command: 'gc', removed: 1 });

    const one = await cli(['revoke', ...s, '--id', a]);
    expect(json(one)).toEqual({
      command: 'revoke',
      store: `file (${dir})`,
      id: a,
      user: 'ann',
      revoked: true,
    });
    const gone = await cli(['revoke', ...s, '--id', a]);
    expect(gone.code).toBe(EXIT.nothingMatched);
    expect(json(gone)).toMatchObject({ id: a, revoked: false });

    const all = await cli(['revoke', ...s, '--user', 'ann']);
    expect(json(all)).toMatchObject({ command: 'revoke', user: 'ann', revoked: 1, countKnown: true });
    const none = await cli(['revoke', ...s, '--user', 'ann']);
    expect(none.code).toBe(EXIT.nothingMatched);
    expect(json(none)).toMatchObject({ revoked: 0 });

    const usage = await cli(['frobnicate', '--json']);
    expect(usage.code).toBe(EXIT.usage);
    expect(usage.out).toEqual([]);
    expect(JSON.parse(usage.stderr)).toMatchObject({ error: { exitCode: 2, reason: 'usage' } });
    const missing = await cli(['stats', '--store', `file:${join(root, 'typo')}`, '--json']);
    expect(JSON.parse(missing.stderr)).toMatchObject({ error: { exitCode: 3, reason: 'not-found' } });
  });
});

describe('sessionflow stats on a file store', () => {
  it('counts live and expired, anonymous and authenticated, sizes, the oldest session and the top users', async () => {
    const dir = join(root, 'stats');
    const store = new FileStore({ dir, fsync: false });
    const now = Date.now();
    const oldest = await put(store, { userId: 'carol', createdAt: now - 86_400_000 });
    for (let i = 0; i < 3; i++) await put(store, { userId: 'alice' });
    await put(store, { userId: 'bob', bytes: 5000 });
    await put(store, { userId: 'bob', bytes: 20_000 });
    await put(store, {});
    await put(store, { userId: 'alice', ttlMs: 1 });
    await put(store, { ttlMs: 1 });
    await sleep(30);

    const r = await cli(['stats', '--store', `file:${dir}`, '--json', '--top', '2']);
    expect(r.code).toBe(EXIT.ok);
    const s = json(r) as {
      count: number;
      sizes: { label: string; count: number }[];
      oldest: { id: string; ageSeconds: number };
      byUser: unknown[];
    };
    expect(s).toMatchObject({
      count: 9,
      live: 7,
      expired: 2,
      corrupt: 0,
      authenticated: 6,
      anonymous: 1,
      users: 3,
      enumerable: true,
    });
    expect(s.byUser).toEqual([
      { user: 'alice', sessions: 3 },
      { user: 'bob', sessions: 2 },
    ]);
    expect(s.oldest.id).toBe(oldest);
    expect(s.oldest.ageSeconds).toBeGreaterThanOrEqual(86_400);
    // 5,000 and 20,000 bytes of value, plus the record around them.
    expect(s.sizes.map((b) => b.count)).toEqual([5, 0, 1, 1, 0, 0]);
    expect(s.sizes.map((b) => b.label)).toEqual([
      '< 1 KiB',
      '1 KiB – 4 KiB',
      '4 KiB – 16 KiB',
      '16 KiB – 64 KiB',
      '64 KiB – 256 KiB',
      '≥ 256 KiB',
    ]);

    const text = await cli(['stats', '--store', `file:${dir}`]);
    expect(text.stdout).toContain('sessions: 9 stored: 7 live, 2 expired (gc removes them)');
    expect(text.stdout).toContain('live: 6 authenticated (3 user(s)), 1 anonymous');
    expect(text.stdout).toContain(`oldest: ${oldest}`);
    expect(text.stdout).toMatch(/top users \(of 3\):\n\s+3 {2}alice\n\s+2 {2}bob\n\s+1 {2}carol/);
    // A read command: nothing was collected.
    expect((await readdir(dir)).filter((n) => n.endsWith('.json'))).toHaveLength(9);
  });
});

/** A terminal stand-in: what cli-progress draws on it. */
function fakeTerminal(): { stream: NodeJS.WritableStream; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      chunks.push(String(chunk));
      done();
    },
  }) as Writable & { isTTY: boolean; columns: number };
  stream.isTTY = true;
  stream.columns = 100;
  return { stream, text: () => chunks.join('') };
}

describe('sessionflow gc', () => {
  it('removes expired sessions only', async () => {
    const dir = join(root, 'b');
    const store = new FileStore({ dir });
    const expired = await put(store, { ttlMs: 10 });
    const live = await put(store);
    await sleep(40);
    const result = await cli(['gc', '--store', `file:${dir}`]);
    expect(result.code).toBe(EXIT.ok);
    expect(result.out[0]).toMatch(/removed 1 expired session\(s\)$/);
    expect(await store.load(live)).not.toBeNull();
    expect(existsSync(join(dir, `${expired}.json`))).toBe(false);
  });

  it('a long run draws a progress bar (cli-progress) when stdout is a terminal, never with --json', async () => {
    const dir = join(root, 'progress');
    const store = new FileStore({ dir, fsync: false });
    const n = 300;
    await Promise.all(Array.from({ length: n }, () => put(store, { ttlMs: 20 })));
    await put(store);
    await sleep(40);
    const terminal = fakeTerminal();
    const r = await cli(['gc', '--store', `file:${dir}`], {
      stdoutIsTTY: true,
      progressStream: terminal.stream,
      progressAfterMs: 0,
    });
    expect(r.code).toBe(EXIT.ok);
    expect(r.out).toEqual([`file (${dir}): removed ${n} expired session(s)`]);
    expect(terminal.text()).toContain(`${n}/${n} expired sessions`);
    expect(terminal.text()).toContain('100%');

    // Not a terminal, or --json: no bar at all.
    await Promise.all(Array.from({ length: 20 }, () => put(store, { ttlMs: 20 })));
    await sleep(40);
    const quiet = fakeTerminal();
    const piped = await cli(['gc', '--store', `file:${dir}`], {
      stdoutIsTTY: false,
      progressStream: quiet.stream,
      progressAfterMs: 0,
    });
    expect(piped.out).toEqual([`file (${dir}): removed 20 expired session(s)`]);
    await Promise.all(Array.from({ length: 20 }, () => put(store, { ttlMs: 20 })));
    await sleep(40);
    const asJson = await cli(['gc', '--store', `file:${dir}`, '--json'], {
      stdoutIsTTY: true,
      progressStream: quiet.stream,
      progressAfterMs: 0,
    });
    expect(json(asJson)).toMatchObject({ removed: 20 });
    expect(quiet.text()).toBe('');
  });
});
