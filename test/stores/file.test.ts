import { createHash } from 'node:crypto';
import nodeFs, { promises as fsp, readlinkSync } from 'node:fs';
import {
  chmod,
  chown,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { defaultSessionDir, FileStore } from '../../src/stores/file.js';
import { decodeRecord } from '../../src/stores/kit.js';
import type { CommitGuard, SessionDelta } from '../../src/stores/store.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sessionflow-test-'));
  dirs.push(dir);
  return join(dir, 'sessions');
}

describeStoreConformance(
  'FileStore',
  async () => {
    const dir = await tempDir();
    return { store: new FileStore({ dir }), cleanup: () => rm(dir, { recursive: true, force: true }) };
  },
  { runner: { describe, it, beforeAll, afterAll } },
);

/** The store instances' owner files (`owners/` also holds the `.wants` directory). */
const ownerIds = async (dir: string) =>
  (await readdir(join(dir, 'owners'))).filter((n) => /^[0-9a-f]{16}$/.test(n));
const userDir = (userId: string) => createHash('sha256').update(userId).digest('base64url');
const meta = () => ({ createdAt: Date.now(), lastSeenAt: Date.now(), deadline: Date.now() + 3_600_000 });

describe('FileStore specifics', () => {
  it('SM-60: a private 0700 directory, 0600 files named by the hashed key', async () => {
    const dir = await tempDir();
    const store = new FileStore({ dir });
    const token = newToken();
    const key = storageKey(token);
    await store.create(key, { meta: meta(), values: { 'v:a': '1' } }, 60_000);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    const names = await readdir(dir);
    expect(names).toContain(`${key}.json`);
    expect(names.some((n) => n.includes(token))).toBe(false);
    expect((await stat(join(dir, `${key}.json`))).mode & 0o777).toBe(0o600);
  });

  it('SM-60: a truncated or corrupt file is treated as absent and reported, never a crash', async () => {
    const dir = await tempDir();
    const reported: string[] = [];
    const store = new FileStore({ dir, onCorrupt: (file) => reported.push(file) });
    const key = storageKey(newToken());
    await store.create(key, { meta: meta(), values: { 'v:a': '1' } }, 60_000);
    const file = join(dir, `${key}.json`);
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.slice(0, text.length / 2));
    expect(await store.load(key)).toBeNull();
    expect(reported).toEqual([file]);
    expect(await store.commit(key, { set: { 'v:b': '1' }, unset: [] }, 60_000)).toBe('gone');
  });

  it('SM-60: without onCorrupt, a corrupt file is reported through the warn the manager attached', async () => {
    const dir = await tempDir();
    const store = new FileStore({ dir });
    const warnings: string[] = [];
    store.setWarn((message) => warnings.push(message));
    const key = storageKey(newToken());
    await store.create(key, { meta: meta(), values: { 'v:secret': '"s3cr3t"' } }, 60_000);
    const file = join(dir, `${key}.json`);
    await writeFile(file, '{"meta":{"createdAt":"x"},"values":{"v:secret":"\\"s3cr3t\\""}}');
    expect(await store.load(key)).toBeNull();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('FileStore');
    expect(warnings[0]).toContain(file);
    expect(warnings[0]).not.toContain('s3cr3t');
    // Treated as absent: a new record may take the key.
    expect(await store.create(key, { meta: meta(), values: {} }, 60_000)).toBe(true);
    expect(await store.load(key)).not.toBeNull();
  });

  it('the file holds the shared record JSON and its mtime is the expiry', async () => {
    const dir = await tempDir();
    let now = 1_700_000_000_123;
    const store = new FileStore({ dir, now: () => now });
    const key = storageKey(newToken());
    const record = { meta: { createdAt: 1, lastSeenAt: 2, deadline: 3, h: 'h0' }, values: { 'v:a': '1' } };
    await store.create(key, record, 60_001);
    const file = join(dir, `${key}.json`);
    expect(decodeRecord(await readFile(file, 'utf8'))).toEqual(record);
    expect(Math.round((await stat(file)).mtimeMs)).toBe(1_700_000_060_124);
    now = 1_700_000_060_123;
    expect(await store.load(key)).not.toBeNull();
    now = 1_700_000_060_124;
    expect(await store.load(key)).toBeNull();
    expect(await readdir(dir)).not.toContain(`${key}.json`);
  });

  // The expiry in the mtime is in the future, and under relatime (Linux's default) a plain read
  // of such a file writes its access time every time: a dirty inode per request.
  for (const io of ['auto', 'async'] as const) {
    it(`a load leaves the file's access time alone (io: '${io}')`, async (ctx) => {
      const dir = await tempDir();
      const store = new FileStore({ dir, io });
      const key = storageKey(newToken());
      await store.create(key, { meta: meta(), values: { 'v:a': '1' } }, 60_000);
      const file = join(dir, `${key}.json`);
      const { mtime } = await stat(file);
      const past = new Date(Math.floor(Date.now() / 1000) * 1000 - 3_600_000); // whole seconds: exact
      await utimes(file, past, mtime);
      await readFile(file);
      // A file system mounted noatime (or lazytime, strictatime...) would not show the difference.
      if ((await stat(file)).atimeMs === past.getTime()) ctx.skip();
      await utimes(file, past, mtime);
      for (let i = 0; i < 3; i++) expect(await store.load(key)).not.toBeNull();
      const after = await stat(file);
      expect(after.atimeMs).toBe(past.getTime());
      expect(Math.round(after.mtimeMs)).toBe(mtime.getTime());
    });
  }

  it("a file the kernel will not open with O_NOATIME (another user's) is read without it", async () => {
    const dir = await tempDir();
    // No file kept open: every read opens the path.
    const store = new FileStore({ dir, openFiles: 0 });
    const key = storageKey(newToken());
    await store.create(key, { meta: meta(), values: { 'v:a': '1' } }, 60_000);
    const noatime = nodeFs.constants.O_NOATIME ?? 0;
    const refused: number[] = [];
    const refuse = (flags: unknown) => {
      if (typeof flags === 'number' && noatime !== 0 && (flags & noatime) !== 0) {
        refused.push(flags);
        throw Object.assign(new Error('EPERM: operation not permitted'), { code: 'EPERM' });
      }
    };
    const openSync = nodeFs.openSync.bind(nodeFs);
    vi.spyOn(nodeFs, 'openSync').mockImplementation(((path: string, flags: unknown, ...rest: unknown[]) => {
      refuse(flags);
      return (openSync as (...args: unknown[]) => number)(path, flags, ...rest);
    }) as typeof nodeFs.openSync);
    const open = nodeFs.open.bind(nodeFs);
    vi.spyOn(nodeFs, 'open').mockImplementation(((path: string, flags: unknown, ...rest: unknown[]) => {
      try {
        refuse(flags);
      } catch (err) {
        const callback = rest.at(-1) as (err: Error) => void;
        process.nextTick(() => callback(err as Error));
        return;
      }
      (open as (...args: unknown[]) => void)(path, flags, ...rest);
    }) as typeof nodeFs.open);
    try {
      expect((await store.load(key))?.values).toEqual({ 'v:a': '1' });
      expect(await store.commit(key, { set: { 'v:b': '2' }, unset: [] }, 60_000)).toBe('ok');
      const viaPool = new FileStore({ dir, io: 'async' });
      expect((await viaPool.load(key))?.values).toEqual({ 'v:a': '1', 'v:b': '2' });
      if (noatime !== 0) expect(refused.length).toBeGreaterThanOrEqual(3);
    } finally {
      vi.restoreAllMocks();
    }
  });

  // io: 'auto' runs cheap calls synchronously on a local disk and moves them to the thread pool
  // when the disk stalls. No file is kept open (openFiles: 0): every load opens it, and the
  // open is made to hold the thread 5 ms when `hold` is set. `loadVia` says which way a load went.
  async function ioMode() {
    const dir = await tempDir();
    const store = new FileStore({ dir, openFiles: 0 });
    const key = storageKey(newToken());
    await store.create(key, { meta: meta(), values: { 'v:a': '1' } }, 60_000);
    const calls = { sync: 0, pool: 0 };
    const state: { hold?: () => void } = {};
    const openSync = nodeFs.openSync.bind(nodeFs);
    vi.spyOn(nodeFs, 'openSync').mockImplementation(((...args: unknown[]) => {
      calls.sync++;
      const hold = state.hold;
      state.hold = undefined;
      hold?.();
      return (openSync as (...a: unknown[]) => number)(...args);
    }) as typeof nodeFs.openSync);
    const open = nodeFs.open.bind(nodeFs);
    vi.spyOn(nodeFs, 'open').mockImplementation(((...args: unknown[]) => {
      calls.pool++;
      (open as (...a: unknown[]) => void)(...args);
    }) as typeof nodeFs.open);
    const loadVia = async (): Promise<'sync' | 'pool'> => {
      const before = { ...calls };
      expect((await store.load(key))?.values).toEqual({ 'v:a': '1' });
      if (calls.pool > before.pool) return 'pool';
      expect(calls.sync).toBeGreaterThan(before.sync);
      return 'sync';
    };
    return { state, loadVia };
  }

  // The thread's times come from the scheduler, which a loaded machine makes imprecise (the run-
  // queue wait of a sample taken before the call is counted against it). So a trial runs on a new
  // store up to three times, and the test fails if none shows the behaviour; an implementation
  // without it fails every trial. Synchronous calls happen only on a local file system of Linux:
  // elsewhere there is nothing to test.
  async function inTrials(
    ctx: { skip: () => void },
    trial: (mode: Awaited<ReturnType<typeof ioMode>>) => Promise<void>,
  ): Promise<void> {
    let failure: unknown;
    for (let i = 0; i < 3; i++) {
      let local = true;
      try {
        const mode = await ioMode();
        local = (await mode.loadVia()) === 'sync';
        if (local) return await trial(mode);
      } catch (err) {
        failure = err;
      } finally {
        vi.restoreAllMocks();
      }
      if (!local) return ctx.skip();
    }
    throw failure;
  }

  // A lone stall (the thread blocked 5 ms once, as a page fault behind the garbage collector
  // does) must not move calls to the thread pool; a second one within a second must.
  it("io: 'auto': one stall keeps calls synchronous, a second within a second sends them to the thread pool", async (ctx) => {
    const sleeper = new Int32Array(new SharedArrayBuffer(4));
    // Asleep, neither running nor waiting for a CPU: what a wait for the disk looks like.
    const block = () => Atomics.wait(sleeper, 0, 0, 5);
    await inTrials(ctx, async ({ state, loadVia }) => {
      state.hold = block;
      expect(await loadVia()).toBe('sync'); // the stall
      expect(await loadVia()).toBe('sync');
      expect(await loadVia()).toBe('sync');
      state.hold = block;
      expect(await loadVia()).toBe('sync'); // the second stall, well within a second
      expect(await loadVia()).toBe('pool');
      expect(await loadVia()).toBe('pool');
    });
  });

  // Holds the thread on the CPU for 5 ms. It reads the clock every 10,000 additions only, so it
  // allocates next to nothing: a garbage collection in the spin could put the thread to sleep,
  // waiting for the collector's helper threads.
  const spin = () => {
    const until = performance.now() + 5;
    let sum = 0;
    do for (let i = 0; i < 10_000; i++) sum += i;
    while (performance.now() < until);
    return sum;
  };

  // A call held on the CPU (a VM's host running another guest, whose stolen time the guest
  // counts as the thread's) would hold a thread-pool thread as long: the thread pool saves
  // nothing, and such holds, however many, keep calls synchronous.
  it.runIf(process.platform === 'linux')(
    "io: 'auto': calls held on the CPU, not blocked, keep them synchronous",
    async (ctx) => {
      await inTrials(ctx, async ({ state, loadVia }) => {
        for (let i = 0; i < 4; i++) {
          state.hold = spin;
          expect(await loadVia()).toBe('sync');
        }
        expect(await loadVia()).toBe('sync');
      });
    },
  );

  // The thread's times are sampled at most every 5 ms (and at the end of a slow call): a call
  // held on the CPU 3 ms after the last one, the event loop waiting for a timer in between, is
  // measured from the sample taken before that wait, which is not the call's.
  it.runIf(process.platform === 'linux')(
    "io: 'auto': the event loop's wait before a call held on the CPU is not a stall",
    async (ctx) => {
      await inTrials(ctx, async ({ state, loadVia }) => {
        for (let i = 0; i < 4; i++) {
          state.hold = spin;
          expect(await loadVia()).toBe('sync');
          await new Promise((resolve) => setTimeout(resolve, 3));
          state.hold = spin;
          expect(await loadVia()).toBe('sync');
        }
        expect(await loadVia()).toBe('sync');
      });
    },
  );

  it('SM-13: a key that is not base64url never reaches the file system', async () => {
    const store = new FileStore({ dir: await tempDir() });
    await expect(store.load('../../etc/passwd')).rejects.toMatchObject({ code: 'INVALID_KEY' });
    await expect(store.commit('../x', { set: {}, unset: [] }, 1000, { handle: 'h' })).rejects.toMatchObject({
      code: 'INVALID_KEY',
    });
    await expect(store.destroy('a/b')).rejects.toMatchObject({ code: 'INVALID_KEY' });
  });

  it('login by guarded commit with retain moves the session in the user index; a conflict leaves it', async () => {
    const dir = await tempDir();
    const store = new FileStore({ dir });
    const key = storageKey(newToken());
    await store.create(key, { meta: { ...meta(), h: 'h0' }, values: { 'v:pre': '1' } }, 60_000);
    const login = { set: { 'v:a': '1' }, unset: [], retain: [], meta: { h: 'h1', userId: 'alice' } };
    expect(await store.commit(key, login, 60_000, { handle: 'h0', userId: null })).toBe('ok');
    expect((await store.sessionsOf('alice')).map((s) => s.key)).toEqual([key]);
    expect({ ...(await store.load(key))?.values }).toEqual({ 'v:a': '1' });
    const steal = { set: {}, unset: [], meta: { h: 'h2', userId: 'mallory' } };
    expect(await store.commit(key, steal, 60_000, { handle: 'h0' })).toBe('conflict');
    expect(await store.sessionsOf('mallory')).toEqual([]);
    const logout = { set: {}, unset: [], retain: [], meta: { h: 'h3', userId: undefined } };
    expect(await store.commit(key, logout, 60_000, { handle: 'h1', userId: 'alice' })).toBe('ok');
    expect(await store.sessionsOf('alice')).toEqual([]);
    expect(await readdir(join(dir, 'users', userDir('alice')))).toEqual([]);
    expect((await store.load(key))?.meta).not.toHaveProperty('userId');
  });

  it('SM-60: gc with a clock past the expiry deletes only expired files and leaves no user index behind', async () => {
    const dir = await tempDir();
    const store = new FileStore({ dir });
    const short = storageKey(newToken());
    const long = storageKey(newToken());
    await store.create(short, { meta: { ...meta(), userId: 'gc-user' }, values: {} }, 60_000);
    await store.create(long, { meta: { ...meta(), userId: 'gc-user' }, values: {} }, 3_600_000);
    expect(await store.gc(Date.now() + 120_000)).toBe(1);
    const names = await readdir(dir);
    expect(names).toContain(`${long}.json`);
    expect(names).not.toContain(`${short}.json`);
    expect((await store.sessionsOf('gc-user')).map((s) => s.key)).toEqual([long]);
  });

  it('two FileStore instances on one directory (two processes) still merge concurrent commits', async () => {
    const dir = await tempDir();
    const a = new FileStore({ dir });
    const b = new FileStore({ dir });
    const key = storageKey(newToken());
    await a.create(key, { meta: meta(), values: {} }, 60_000);
    await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        (i % 2 ? a : b).commit(key, { set: { [`v:k${i}`]: String(i) }, unset: [] }, 60_000),
      ),
    );
    const loaded = await a.load(key);
    expect(Object.keys(loaded!.values).length).toBe(20);
  });

  it('two FileStore instances on one directory: of parallel ID changes from one handle exactly one wins', async () => {
    const dir = await tempDir();
    const a = new FileStore({ dir });
    const b = new FileStore({ dir });
    const key = storageKey(newToken());
    await a.create(key, { meta: { ...meta(), h: 'h0' }, values: {} }, 60_000);
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        (i % 2 ? a : b).commit(
          key,
          { set: { [`v:${i}`]: '1' }, unset: [], meta: { h: `h${i + 1}` } },
          60_000,
          {
            handle: 'h0',
          },
        ),
      ),
    );
    expect(results.filter((r) => r === 'ok')).toHaveLength(1);
    const winner = results.indexOf('ok');
    const loaded = await b.load(key);
    expect(loaded?.meta.h).toBe(`h${winner + 1}`);
    expect({ ...loaded?.values }).toEqual({ [`v:${winner}`]: '1' });
  });
});

const isRoot = process.getuid?.() === 0;
const record = (values: Record<string, string> = {}) => ({ meta: meta(), values });
/** A value that makes a record too large for a slot: such a record is a file of one version. */
const LARGE = JSON.stringify('x'.repeat(5_000));

/** The two slots of a session file: each one's sequence number (null: empty or not whole). */
async function slots(file: string): Promise<[number | null, number | null]> {
  const bytes = await readFile(file);
  const seq = (at: number): number | null => {
    const end = bytes.indexOf(0x0a, at);
    if (at >= bytes.length || end < 0 || end > at + 4096) return null;
    const text = bytes.toString('utf8', at, end);
    const found = /^\{"c":"([A-Za-z0-9_-]{22})",("q":(\d+),.*)$/.exec(text);
    if (!found) return null;
    const sum = createHash('sha256').update(found[2]!).digest('base64url').slice(0, 22);
    return sum === found[1] ? Number(found[3]) : null;
  };
  return [seq(0), seq(4096)];
}

/** Makes `method` fail for the descriptors of `file` (compared by inode) with `code`. */
function failOn(file: string, method: 'writeSync' | 'fdatasync', code: 'ENOSPC' | 'EIO') {
  const ino = nodeFs.statSync(file).ino;
  const error = () => Object.assign(new Error(`${code}: simulated, ${method}`), { code });
  if (method === 'writeSync') {
    const write = nodeFs.writeSync.bind(nodeFs) as (...args: unknown[]) => number;
    vi.spyOn(nodeFs, 'writeSync').mockImplementation(((fd: number, ...rest: unknown[]) => {
      if (nodeFs.fstatSync(fd).ino === ino) throw error();
      return write(fd, ...rest);
    }) as typeof nodeFs.writeSync);
  } else {
    const datasync = nodeFs.fdatasync.bind(nodeFs);
    vi.spyOn(nodeFs, 'fdatasync').mockImplementation(((fd: number, callback: (err: Error | null) => void) => {
      if (nodeFs.fstatSync(fd).ino === ino) setImmediate(() => callback(error()));
      else datasync(fd, callback);
    }) as typeof nodeFs.fdatasync);
  }
}

/** A fresh directory that exists (tempDir's does not yet). */
async function existingDir(mode = 0o700): Promise<string> {
  const dir = await tempDir();
  await mkdir(dir, { mode });
  await chmod(dir, mode);
  return dir;
}

describe('FileStore: the default directory', () => {
  const saved = { XDG_STATE_HOME: process.env.XDG_STATE_HOME, HOME: process.env.HOME };
  afterEach(() => {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });

  it('is $XDG_STATE_HOME/sessionflow, else ~/.local/state/sessionflow; no home is a clear error', () => {
    expect(defaultSessionDir({ XDG_STATE_HOME: '/srv/state', HOME: '/home/u' })).toBe(
      '/srv/state/sessionflow',
    );
    expect(defaultSessionDir({ XDG_STATE_HOME: 'relative', HOME: '/home/u' })).toBe(
      '/home/u/.local/state/sessionflow',
    );
    expect(defaultSessionDir({ HOME: '/home/u' })).toBe('/home/u/.local/state/sessionflow');
    for (const HOME of ['', 'not/absolute']) {
      expect(() => defaultSessionDir({ HOME })).toThrow(
        expect.objectContaining({
          code: 'INVALID_OPTION',
          message: expect.stringMatching(/no usable home directory/),
        }),
      );
    }
  });

  it('new FileStore() creates a private directory (0700, marked as its own) that outlives the process', async () => {
    const state = await existingDir();
    process.env.XDG_STATE_HOME = state;
    const store = new FileStore({ fsync: false });
    const dir = join(state, 'sessionflow');
    expect(store.dir).toBe(dir);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect(await readdir(dir)).toEqual(expect.arrayContaining(['.sessionflow-store', 'users']));
    const key = storageKey(newToken());
    await store.create(key, record({ 'v:a': '1' }), 60_000);
    // A restart: a new store finds the session where the last one left it.
    expect((await new FileStore().load(key))?.values).toEqual({ 'v:a': '1' });
  });

  it('the same default without XDG_STATE_HOME: under the home directory', async () => {
    const home = await existingDir();
    delete process.env.XDG_STATE_HOME;
    process.env.HOME = home;
    expect(new FileStore().dir).toBe(join(home, '.local', 'state', 'sessionflow'));
    expect((await stat(join(home, '.local', 'state', 'sessionflow'))).mode & 0o777).toBe(0o700);
  });

  /** new FileStore() on a default directory prepared by `arrange`: the error it throws at once. */
  async function refusal(arrange: (state: string, dir: string) => Promise<void>): Promise<Error> {
    const state = await existingDir();
    process.env.XDG_STATE_HOME = state;
    await arrange(state, join(state, 'sessionflow'));
    try {
      new FileStore();
    } catch (err) {
      expect(err).toMatchObject({ name: 'SessionError', code: 'INVALID_OPTION' });
      expect((err as Error).message).toContain(join(state, 'sessionflow'));
      return err as Error;
    }
    throw new Error('FileStore accepted an unsafe default directory');
  }

  it('refuses a default directory that is a symbolic link (to a directory another user may control)', async () => {
    const err = await refusal(async (state, dir) => {
      await mkdir(join(state, 'elsewhere'), { mode: 0o700 });
      await symlink(join(state, 'elsewhere'), dir);
    });
    expect(err.message).toMatch(/symbolic link/);
  });

  it('refuses a default directory open to other users (mode 0750)', async () => {
    const err = await refusal(async (_, dir) => {
      await mkdir(dir);
      await chmod(dir, 0o750);
    });
    expect(err.message).toMatch(/mode 0750/);
  });

  it('refuses a default directory under a parent that other users can write to', async () => {
    const err = await refusal(async (state) => chmod(state, 0o777));
    expect(err.message).toMatch(/writable by other users \(mode 0777\)/);
  });

  it.skipIf(!isRoot)('refuses a default directory created first by another user', async () => {
    const err = await refusal(async (_, dir) => {
      await mkdir(dir, { mode: 0o700 });
      await chown(dir, 12345, 12345);
    });
    expect(err.message).toMatch(/belongs to uid 12345/);
  });
});

describe('FileStore: a directory of its own', () => {
  const foreignFiles = ['yarn.lock', 'Cargo.lock', '.tmp-upload-123', 'production_settings.json'];

  async function addForeignFiles(dir: string): Promise<void> {
    const long_ago = new Date(1_000_000);
    for (const name of foreignFiles) {
      await writeFile(join(dir, name), name === 'production_settings.json' ? '{"db":"prod"}' : 'x');
      await utimes(join(dir, name), long_ago, long_ago);
    }
  }

  it('gc in a directory shared with other files deletes only its own expired sessions and leaves the mode alone', async () => {
    const dir = await tempDir();
    const store = new FileStore({ dir, fsync: false });
    const short = storageKey(newToken());
    const long = storageKey(newToken());
    await store.create(short, record(), 60_000);
    await store.create(long, record(), 3_600_000);
    await addForeignFiles(dir);
    await chmod(dir, 0o750);
    expect(await store.gc(Date.now() + 120_000)).toBe(1);
    const names = await readdir(dir);
    expect(names).toEqual(expect.arrayContaining([...foreignFiles, `${long}.json`]));
    expect(names).not.toContain(`${short}.json`);
    expect((await stat(dir)).mode & 0o777).toBe(0o750);
    expect(await readFile(join(dir, 'production_settings.json'), 'utf8')).toBe('{"db":"prod"}');
  });

  it('refuses a non-empty directory it did not create, with a message naming it and what is there', async () => {
    const dir = await existingDir();
    await addForeignFiles(dir);
    const store = new FileStore({ dir, fsync: false });
    const key = storageKey(newToken());
    for (const attempt of [
      () => store.create(key, record(), 60_000),
      () => store.gc(),
      () => store.load(key),
    ]) {
      await expect(attempt()).rejects.toMatchObject({
        code: 'INVALID_OPTION',
        message: expect.stringMatching(/not empty and was not created by sessionflow.*"yarn\.lock"/),
      });
    }
    await expect(store.load(key)).rejects.toThrow(dir);
    expect((await readdir(dir)).sort()).toEqual([...foreignFiles].sort());
  });

  it('adopts an empty directory, and one that holds only its own files (from before the marker)', async () => {
    const empty = await existingDir();
    const key = storageKey(newToken());
    await new FileStore({ dir: empty, fsync: false }).create(key, record(), 60_000);
    expect(await readdir(empty)).toContain('.sessionflow-store');

    const legacy = await existingDir();
    await mkdir(join(legacy, 'users'));
    await writeFile(join(legacy, `${key}.json`), JSON.stringify(record({ 'v:a': '1' })));
    await writeFile(join(legacy, `${key}.json.lock`), '');
    await utimes(join(legacy, `${key}.json`), new Date(), new Date(Date.now() + 60_000));
    const store = new FileStore({ dir: legacy, fsync: false });
    expect((await store.load(key))?.values).toEqual({ 'v:a': '1' });
    expect(await readdir(legacy)).toContain('.sessionflow-store');
  });

  it('refuses a directory other users can write to, and (root) one owned by another user', async () => {
    const open = await existingDir(0o777);
    await expect(new FileStore({ dir: open }).load(storageKey(newToken()))).rejects.toMatchObject({
      code: 'INVALID_OPTION',
      message: expect.stringMatching(/mode 0777 lets other users write into it/),
    });
    if (!isRoot) return;
    const theirs = await existingDir();
    await chown(theirs, 12345, 12345);
    await expect(new FileStore({ dir: theirs }).load(storageKey(newToken()))).rejects.toMatchObject({
      code: 'INVALID_OPTION',
      message: expect.stringMatching(/belongs to uid 12345/),
    });
  });

  it('create: false refuses a missing directory and creates nothing', async () => {
    const dir = await tempDir();
    await expect(new FileStore({ dir, create: false }).sessionsOf('u')).rejects.toMatchObject({
      code: 'INVALID_OPTION',
      message: expect.stringMatching(/does not exist/),
    });
    await expect(stat(dir)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('FileStore: a failed write', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  /** Makes the temp file's `method` fail with ENOSPC, as on a full disk. */
  function diskFullOn(method: 'writeFile' | 'datasync') {
    const open = fsp.open.bind(fsp);
    vi.spyOn(fsp, 'open').mockImplementation((async (...args: Parameters<typeof fsp.open>) => {
      const handle = await open(...args);
      if (String(args[0]).includes('.tmp-')) {
        handle[method] = async () => {
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        };
      }
      return handle;
    }) as typeof fsp.open);
  }

  for (const method of ['writeFile', 'datasync'] as const) {
    it(`a record too large for a slot: removes its temp file at once and keeps the old record (ENOSPC in ${method})`, async () => {
      const dir = await tempDir();
      const store = new FileStore({ dir });
      const key = storageKey(newToken());
      await store.create(key, record({ 'v:a': '1', 'v:large': LARGE }), 60_000);
      diskFullOn(method);
      await expect(store.commit(key, { set: { 'v:a': '2' }, unset: [] }, 60_000)).rejects.toMatchObject({
        code: 'ENOSPC',
      });
      vi.restoreAllMocks();
      expect((await readdir(dir)).filter((n) => n.startsWith('.tmp-') || n.endsWith('.lock'))).toEqual([]);
      expect((await store.load(key))?.values).toEqual({ 'v:a': '1', 'v:large': LARGE });
    });
  }

  for (const [method, code] of [
    ['writeSync', 'ENOSPC'],
    ['fdatasync', 'EIO'],
  ] as const) {
    for (const io of ['auto', 'async'] as const) {
      it(`a write in place that fails (${code} in ${method}, io ${io}) leaves the record as it was; the next write works`, async () => {
        const dir = await tempDir();
        const store = new FileStore({ dir, io });
        const key = storageKey(newToken());
        const file = join(dir, `${key}.json`);
        await store.create(key, record({ 'v:a': '1' }), 60_000);
        expect(await store.commit(key, { set: { 'v:a': '2' }, unset: [] }, 60_000)).toBe('ok');
        const before = await slots(file);
        expect(before).toEqual([1, 2]);
        // io 'async' writes through nodeFs.write: make that fail too.
        if (method === 'writeSync' && io === 'async') {
          const ino = nodeFs.statSync(file).ino;
          const write = nodeFs.write.bind(nodeFs) as (...args: unknown[]) => void;
          vi.spyOn(nodeFs, 'write').mockImplementation(((fd: number, ...rest: unknown[]) => {
            const callback = rest.at(-1) as (err: Error | null) => void;
            if (nodeFs.fstatSync(fd).ino === ino)
              setImmediate(() => callback(Object.assign(new Error('ENOSPC: simulated'), { code: 'ENOSPC' })));
            else write(fd, ...rest);
          }) as typeof nodeFs.write);
        } else {
          failOn(file, method, code);
        }
        await expect(store.commit(key, { set: { 'v:a': '3' }, unset: [] }, 60_000)).rejects.toMatchObject({
          code,
        });
        vi.restoreAllMocks();
        // The slot it wrote is spoiled (or untouched): the version before is the record.
        expect((await slots(file))[1]).toBe(2);
        expect([null, 1]).toContain((await slots(file))[0]);
        expect((await store.load(key))?.values).toEqual({ 'v:a': '2' });
        expect((await readdir(dir)).filter((n) => n.startsWith('.tmp-') || n.endsWith('.lock'))).toEqual([]);
        expect(await store.commit(key, { set: { 'v:a': '4' }, unset: [] }, 60_000)).toBe('ok');
        expect(await slots(file)).toEqual([3, 2]);
        expect((await new FileStore({ dir }).load(key))?.values).toEqual({ 'v:a': '4' });
      });
    }
  }
});

describe('FileStore: gc follows the sessions that ended, not the live ones', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  const files = async (dir: string) => (await readdir(dir)).filter((n) => n.endsWith('.json'));

  it('1,000 live and 10 expired sessions: gc looks at the 10, never lists the directory, and keeps the event loop free', async () => {
    const dir = await tempDir();
    let now = Date.now();
    const store = new FileStore({ dir, fsync: false, now: () => now });
    const live = Array.from({ length: 1000 }, () => storageKey(newToken()));
    const ending = Array.from({ length: 10 }, () => storageKey(newToken()));
    for (let i = 0; i < live.length; i += 100) {
      await Promise.all(live.slice(i, i + 100).map((key) => store.create(key, record(), 3_600_000)));
    }
    for (const key of ending) await store.create(key, record(), 60_000);
    now += 120_000;
    const stat = vi.spyOn(fsp, 'stat');
    const opendir = vi.spyOn(fsp, 'opendir');
    const readdirSpy = vi.spyOn(fsp, 'readdir');
    const delay = monitorEventLoopDelay({ resolution: 1 });
    delay.enable();
    const started = performance.now();
    expect(await store.gc()).toBe(10);
    const ms = performance.now() - started;
    delay.disable();
    console.log(
      `[file gc] 1,000 live + 10 expired: ${ms.toFixed(1)} ms, ${stat.mock.calls.length} stat, ${readdirSpy.mock.calls.length} readdir, ${opendir.mock.calls.length} opendir; event-loop delay max ${(delay.max / 1e6).toFixed(1)} ms`,
    );
    expect(opendir).not.toHaveBeenCalled();
    expect(stat.mock.calls.length).toBeLessThanOrEqual(20);
    expect(readdirSpy.mock.calls.length).toBeLessThanOrEqual(5);
    vi.restoreAllMocks();
    expect((await files(dir)).sort()).toEqual(live.map((key) => `${key}.json`).sort());
    // Later, the live ones expire in turn and go the same way.
    now += 4_000_000; // past the end of their bucket
    expect(await store.gc()).toBe(1000);
    expect(await files(dir)).toEqual([]);
    expect(await readdir(join(dir, 'expiry'))).toEqual(['.indexed']);
  });

  it('a session renewed into a later bucket keeps living; gc drops only its stale index marker', async () => {
    const dir = await tempDir();
    let now = Date.now();
    const store = new FileStore({ dir, fsync: false, now: () => now });
    const key = storageKey(newToken());
    await store.create(key, { meta: { ...meta(), userId: 'renewed' }, values: {} }, 60_000);
    expect(await store.commit(key, { set: { 'v:a': '1' }, unset: [] }, 3_600_000)).toBe('ok');
    const markers = async () => (await readdir(join(dir, 'expiry'))).filter((n) => n !== '.indexed');
    expect(await markers()).toHaveLength(2);
    now += 600_000;
    expect(await store.gc()).toBe(0);
    expect(await markers()).toHaveLength(1);
    expect((await store.load(key))?.values).toEqual({ 'v:a': '1' });
    expect((await store.sessionsOf('renewed')).map((s) => s.key)).toEqual([key]);
  });

  it('a directory from before the expiry index is indexed by one full scan, then gc is by index', async () => {
    const dir = await existingDir();
    const old = storageKey(newToken());
    const young = storageKey(newToken());
    await mkdir(join(dir, 'users'));
    for (const [key, expiry] of [
      [old, Date.now() - 1000],
      [young, Date.now() + 600_000],
    ] as const) {
      await writeFile(join(dir, `${key}.json`), JSON.stringify(record({ 'v:a': '1' })));
      await utimes(join(dir, `${key}.json`), new Date(), new Date(expiry));
    }
    const store = new FileStore({ dir, fsync: false });
    expect(await store.gc()).toBe(1);
    expect(await readdir(join(dir, 'expiry'))).toContain('.indexed');
    const opendir = vi.spyOn(fsp, 'opendir');
    expect(await store.gc(Date.now() + 1_200_000)).toBe(1);
    expect(opendir).not.toHaveBeenCalled();
    expect(await files(dir)).toEqual([]);
  });

  it('temp files: a live writer keeps its own; one with no owner to ask goes once old', async () => {
    const dir = await tempDir();
    const store = new FileStore({ dir, fsync: false, staleLockMs: 1000 });
    const key = storageKey(newToken());
    await store.create(key, record(), 60_000);
    const [id] = await ownerIds(dir);
    const mine = join(dir, `.tmp-${key}-${id}-0123abcd`);
    const legacy = join(dir, `.tmp-${key}-0123456789ab`);
    const fresh = join(dir, `.tmp-${key}-ba9876543210`);
    for (const path of [mine, legacy, fresh]) await writeFile(path, 'x');
    const long_ago = new Date(Date.now() - 60_000);
    for (const path of [mine, legacy]) await utimes(path, long_ago, long_ago);
    // A store process that ended (its owner file left behind) makes gc look for leftovers.
    await writeFile(
      join(dir, 'owners', 'fedcba9876543210'),
      JSON.stringify({ scope: 'x', pid: 1, start: '', id: 'fedcba9876543210' }),
    );
    await utimes(join(dir, 'owners', 'fedcba9876543210'), long_ago, long_ago);
    await store.gc();
    const left = await readdir(dir);
    expect(left).toContain(mine.slice(dir.length + 1));
    expect(left).toContain(fresh.slice(dir.length + 1));
    expect(left).not.toContain(legacy.slice(dir.length + 1));
    expect(await ownerIds(dir)).toEqual([id]);
  });
});

describeStoreConformance(
  'FileStore (io: async, every call through the thread pool)',
  async () => {
    const dir = await tempDir();
    return {
      store: new FileStore({ dir, io: 'async' }),
      cleanup: () => rm(dir, { recursive: true, force: true }),
    };
  },
  { runner: { describe, it, beforeAll, afterAll } },
);

describe('FileStore: group commit (commits queued for one session share one write)', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  /**
   * A store with one session (handle h0, anonymous), its lock held by "another store" of this
   * process (a live owner), so that every commit asked for now waits for it. `release()` removes
   * that lock: the commits that queued meanwhile then run, in order, as one batch.
   */
  async function held(extra: { userId?: string } = {}) {
    const dir = await tempDir();
    const store = new FileStore({ dir });
    const key = storageKey(newToken());
    await store.create(key, { meta: { ...meta(), h: 'h0', ...extra }, values: { 'v:base': '0' } }, 60_000);
    const [id] = await ownerIds(dir);
    const owner = JSON.parse(await readFile(join(dir, 'owners', id!), 'utf8'));
    const lock = join(dir, `${key}.json.lock`);
    await writeFile(lock, JSON.stringify({ ...owner, id: 'abcdef0123456789' }));
    return { dir, store, key, release: () => rm(lock) };
  }

  it('each queued commit gets the answer its own guard gives against the record as merged so far; one write', async () => {
    const { dir, store, key, release } = await held();
    const commit = (delta: Partial<SessionDelta>, guard?: CommitGuard, ttl = 60_000) =>
      store.commit(key, { set: {}, unset: [], ...delta }, ttl, guard);
    const results = Promise.all([
      commit({ set: { 'v:a': '1' }, meta: { h: 'h1', ph: 'h0' } }, { handle: 'h0' }), // ID change: wins
      commit({ set: { 'v:lost': '1' }, meta: { h: 'h2' } }, { handle: 'h0' }), // same handle, too late
      commit({ set: { 'v:b': '1' } }, { userId: null }), // a plain write, anonymous: holds
      commit({ set: { 'v:c': '1' }, retain: ['v:a'], meta: { userId: 'alice' } }, { handle: 'h1' }), // login
      commit({ set: { 'v:pre': '1' } }, { userId: null }), // loaded before the login: refused
      commit({ set: { 'v:d': '1' }, unset: ['v:c'] }, { userId: 'alice' }), // after the login: holds
      commit({ meta: { lastSeenAt: 42 } }), // unguarded (touch)
    ]);
    const rename = vi.spyOn(fsp, 'rename');
    await release();
    expect(await results).toEqual(['ok', 'conflict', 'ok', 'ok', 'conflict', 'ok', 'ok']);
    // One write for the seven: in place, into slot 1, with the sequence number after creation's.
    expect(await slots(join(dir, `${key}.json`))).toEqual([1, 2]);
    expect(rename).not.toHaveBeenCalled();
    const loaded = await store.load(key);
    expect(loaded?.meta).toMatchObject({ h: 'h1', ph: 'h0', userId: 'alice', lastSeenAt: 42 });
    expect({ ...loaded?.values }).toEqual({ 'v:a': '1', 'v:d': '1' });
    expect((await store.sessionsOf('alice')).map((s) => s.key)).toEqual([key]);
    expect((await readdir(dir)).filter((n) => n.endsWith('.lock') || n.startsWith('.tmp-'))).toEqual([]);
  });

  it('a commit with a non-positive TTL ends the session for the commits after it in the batch', async () => {
    const { store, key, release } = await held({ userId: 'bob' });
    const results = Promise.all([
      store.commit(key, { set: { 'v:a': '1' }, unset: [] }, 60_000, { userId: 'bob' }),
      store.commit(key, { set: {}, unset: [] }, 60_000, { userId: 'mallory' }), // conflict: nothing ends
      store.commit(key, { set: {}, unset: [] }, 0, { userId: 'bob' }), // logout by TTL
      store.commit(key, { set: { 'v:late': '1' }, unset: [] }, 60_000),
      store.touch(key, { lastSeenAt: 1 }, 60_000),
    ]);
    await release();
    expect(await results).toEqual(['ok', 'conflict', 'gone', 'gone', 'gone']);
    expect(await store.load(key)).toBeNull();
    expect(await store.sessionsOf('bob')).toEqual([]);
  });

  it('a batch whose write fails: answers given before the first change stand, the others are the error', async () => {
    const { dir, store, key, release } = await held();
    failOn(join(dir, `${key}.json`), 'writeSync', 'ENOSPC');
    const results = [
      store.commit(key, { set: { 'v:x': '1' }, unset: [] }, 60_000, { handle: 'nope' }),
      store.commit(key, { set: { 'v:a': '1' }, unset: [] }, 60_000, { handle: 'h0' }),
      store.commit(key, { set: { 'v:b': '1' }, unset: [] }, 60_000, { handle: 'nope' }),
    ].map((p) =>
      p.then(
        (r) => r,
        (err: NodeJS.ErrnoException) => err.code,
      ),
    );
    await release();
    expect(await Promise.all(results)).toEqual(['conflict', 'ENOSPC', 'ENOSPC']);
    vi.restoreAllMocks();
    expect({ ...(await store.load(key))?.values }).toEqual({ 'v:base': '0' });
    expect((await readdir(dir)).filter((n) => n.endsWith('.lock') || n.startsWith('.tmp-'))).toEqual([]);
  });
});

describe('FileStore: the file format and the spare inode', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  const inode = async (path: string) => (await stat(path)).ino;

  /** A store on a new directory with one session of `values`; `reported`: what it found corrupt. */
  /**
   * `lockLingerMs: 0` for a test that damages the file as a crash would and goes on with the same
   * store: a store keeps no lock, and so no record, across a real crash.
   */
  async function oneSession(values: Record<string, string>, options: { lockLingerMs?: number } = {}) {
    const dir = await tempDir();
    const reported: string[] = [];
    const store = new FileStore({ dir, ...options, onCorrupt: (file) => reported.push(file) });
    const key = storageKey(newToken());
    await store.create(key, record(values), 60_000);
    return { dir, store, key, file: join(dir, `${key}.json`), reported };
  }

  it('a write rewrites the file in place, in the slot that does not hold the record: same inode, no spare, no temp file', async () => {
    const { dir, store, key, file } = await oneSession({ 'v:n': '0' });
    const first = await inode(file);
    expect(await readFile(file, 'utf8')).toMatch(/^\{"c":"[A-Za-z0-9_-]{22}","q":1,"x":\d+,"meta":.*\}\n$/);
    expect(await slots(file)).toEqual([1, null]);
    const rename = vi.spyOn(fsp, 'rename');
    expect(
      await store.commit(key, { set: { 'v:n': '1', 'v:long': 'x'.repeat(500) }, unset: [] }, 60_000),
    ).toBe('ok');
    expect(await slots(file)).toEqual([1, 2]);
    expect(await store.commit(key, { set: { 'v:n': '2' }, unset: [] }, 60_000)).toBe('ok');
    expect(await slots(file)).toEqual([3, 2]);
    // A shorter record in slot 1, whose longer one was there before: nothing of it is read.
    expect(await store.commit(key, { set: { 'v:n': '3' }, unset: ['v:long'] }, 60_000)).toBe('ok');
    expect(await slots(file)).toEqual([3, 4]);
    expect(rename).not.toHaveBeenCalled();
    expect(await inode(file)).toBe(first);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await store.load(key))?.values).toEqual({ 'v:n': '3' });
    expect((await new FileStore({ dir }).load(key))?.values).toEqual({ 'v:n': '3' });
    // The mtime follows the expiry (gc's hint).
    expect(Math.abs((await stat(file)).mtimeMs - (Date.now() + 60_000))).toBeLessThan(5_000);
    expect(await readdir(join(dir, 'users', '.spare'))).toEqual([]);
    expect((await readdir(dir)).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    await store.destroy(key);
    expect((await readdir(dir)).filter((n) => n.includes(key))).toEqual([]);
  });

  it('a slot torn by a crash: the other slot is the record, and the next write goes into the torn one', async () => {
    const { dir, store, key, file, reported } = await oneSession({ 'v:n': '1' }, { lockLingerMs: 0 });
    await store.commit(key, { set: { 'v:n': '2' }, unset: [] }, 60_000);
    await store.commit(key, { set: { 'v:n': '3' }, unset: [] }, 60_000);
    expect(await slots(file)).toEqual([3, 2]);
    // Slot 0 (the newer) half rewritten, as a power cut in the middle of its write leaves it.
    const handle = await fsp.open(file, 'r+');
    await handle.write(Buffer.from('"v:n":"9","garbage'), 0, undefined, 120);
    await handle.close();
    expect(await slots(file)).toEqual([null, 2]);
    expect((await store.load(key))?.values).toEqual({ 'v:n': '2' });
    expect((await new FileStore({ dir, io: 'async' }).load(key))?.values).toEqual({ 'v:n': '2' });
    expect(await store.commit(key, { set: { 'v:m': '1' }, unset: [] }, 60_000)).toBe('ok');
    expect(await slots(file)).toEqual([3, 2]); // into the torn slot; slot 1 untouched
    expect((await store.load(key))?.values).toEqual({ 'v:n': '2', 'v:m': '1' });
    expect(reported).toEqual([]);
  });

  it('a torn slot whose head shows a newer version than the whole one: the read waits for the lock, as the whole one may be stale', async () => {
    const { dir, store, key, file } = await oneSession({ 'v:n': '1' }, { lockLingerMs: 0 });
    await store.commit(key, { set: { 'v:n': '2' }, unset: [] }, 60_000);
    await store.commit(key, { set: { 'v:n': '3' }, unset: [] }, 60_000);
    await store.commit(key, { set: { 'v:n': '4' }, unset: [] }, 60_000);
    expect(await slots(file)).toEqual([3, 4]);
    const tear = async (at: number) => {
      const handle = await fsp.open(file, 'r+');
      await handle.write(Buffer.from('"v:n":"9","garbage'), 0, undefined, at + 120);
      await handle.close();
    };
    // A reader that copied slot 0 (3), then slot 1 while versions 5 (slot 0) and 6 (slot 1,
    // head not yet written) were being written, would see this: version 3 whole and slot 1
    // broken with the head of version 4, which was complete before the read began.
    await tear(4096);
    expect(await slots(file)).toEqual([3, null]);
    const [id] = await ownerIds(dir);
    const owner = JSON.parse(await readFile(join(dir, 'owners', id!), 'utf8'));
    const lock = join(dir, `${key}.json.lock`);
    await writeFile(lock, JSON.stringify({ ...owner, id: 'abcdef0123456789' }));
    let answered = false;
    const loading = new FileStore({ dir }).load(key).then((r) => {
      answered = true;
      return r;
    });
    await new Promise((r) => setTimeout(r, 100));
    expect(answered).toBe(false); // not version 3 at once: it reads again under the lock
    await rm(lock);
    // Under the lock no write runs: the broken slot is a crash's, and version 3 the record.
    expect((await loading)?.values).toEqual({ 'v:n': '3' });

    // The usual case: the broken slot shows an older version than the whole one (a write of
    // version 5 into slot 0 in progress, its head not yet written): answered at once.
    await store.commit(key, { set: { 'v:n': '5' }, unset: [] }, 60_000); // into slot 1
    expect(await slots(file)).toEqual([3, 4]);
    await tear(0);
    await writeFile(lock, JSON.stringify({ ...owner, id: 'abcdef0123456789' }));
    expect((await new FileStore({ dir }).load(key))?.values).toEqual({ 'v:n': '5' });
    await rm(lock);
  });

  it('a two-slot file cut short is absent and reported, whatever an earlier read of another file left in the read buffer', async () => {
    const dir = await tempDir();
    const reported: string[] = [];
    const store = new FileStore({ dir, onCorrupt: (file) => reported.push(file) });
    const [long, short] = [storageKey(newToken()), storageKey(newToken())];
    await store.create(long, record({ 'v:other': JSON.stringify('o'.repeat(2_000)) }), 60_000);
    await store.create(short, record({ 'v:a': '1' }), 60_000);
    const file = join(dir, `${short}.json`);
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.slice(0, -20)); // no newline: the slot never ended
    for (const io of ['auto', 'async'] as const) {
      const reader = new FileStore({ dir, io, onCorrupt: (f) => reported.push(f) });
      expect((await reader.load(long))?.values['v:other']).toBeDefined();
      expect(await reader.load(short)).toBeNull();
    }
    expect(reported).toEqual([file, file]);
  });

  it('a record that outgrows a slot moves to a file of one version (renamed, spare kept), and back into slots', async () => {
    const { dir, store, key, file } = await oneSession({ 'v:n': '0' });
    const spare = join(dir, 'users', '.spare', key);
    const slotted = await inode(file);
    expect(await store.commit(key, { set: { 'v:large': LARGE }, unset: [] }, 60_000)).toBe('ok');
    expect(await readFile(file, 'utf8')).toMatch(/^\{"c":"[A-Za-z0-9_-]{22}","x":\d+,"meta":/);
    const first = await inode(file);
    expect(first).not.toBe(slotted);
    expect(await readdir(join(dir, 'users', '.spare'))).toEqual([]); // a two-slot inode is never a spare
    expect(await store.commit(key, { set: { 'v:n': '1' }, unset: [] }, 60_000)).toBe('ok');
    const second = await inode(file);
    expect(second).not.toBe(first);
    expect(await inode(spare)).toBe(first); // the replaced version, kept as the spare
    expect(await store.commit(key, { set: { 'v:n': '2' }, unset: [] }, 60_000)).toBe('ok');
    expect(await inode(file)).toBe(first); // written into the spare
    expect(await inode(spare)).toBe(second);
    expect((await store.load(key))?.values).toEqual({ 'v:n': '2', 'v:large': LARGE });
    // Small again: a two-slot file, written into the spare (no bytes of the large record left).
    expect(await store.commit(key, { set: { 'v:n': '3' }, unset: ['v:large'] }, 60_000)).toBe('ok');
    expect(await inode(file)).toBe(second);
    expect(await slots(file)).toEqual([1, null]);
    expect((await stat(file)).size).toBeLessThan(4096);
    expect(await store.commit(key, { set: { 'v:n': '4' }, unset: [] }, 60_000)).toBe('ok');
    expect(await inode(file)).toBe(second);
    expect(await slots(file)).toEqual([1, 2]);
    expect((await store.load(key))?.values).toEqual({ 'v:n': '4' });
    await store.destroy(key);
    expect((await readdir(dir)).filter((n) => n.includes(key))).toEqual([]);
    expect(await readdir(join(dir, 'users', '.spare'))).toEqual([]);
  });

  it('gc removes an expired session with its spare', async () => {
    const dir = await tempDir();
    let now = Date.now();
    const store = new FileStore({ dir, now: () => now });
    const key = storageKey(newToken());
    await store.create(key, record({ 'v:large': LARGE }), 60_000);
    await store.commit(key, { set: { 'v:a': '1' }, unset: [] }, 60_000);
    await store.commit(key, { set: { 'v:a': '2' }, unset: [] }, 60_000);
    expect(await readdir(join(dir, 'users', '.spare'))).toEqual([key]);
    now += 3_600_000;
    expect(await store.gc()).toBe(1);
    expect((await readdir(dir)).filter((n) => n.includes(key))).toEqual([]);
    expect(await readdir(join(dir, 'users', '.spare'))).toEqual([]);
  });

  for (const large of [false, true]) {
    it(`a file edited outside the store (${large ? 'one version' : 'two slots'}) is read as it parses, not reported, and replaced by a new inode`, async () => {
      const dir = await tempDir();
      const reported: string[] = [];
      const store = new FileStore({ dir, onCorrupt: (file) => reported.push(file) });
      const key = storageKey(newToken());
      const extra: Record<string, string> = large ? { 'v:large': LARGE } : {};
      await store.create(key, record({ 'v:role': '"user"', ...extra }), 60_000);
      const file = join(dir, `${key}.json`);
      const text = await readFile(file, 'utf8');
      expect(text).toMatch(
        large
          ? /^\{"c":"[A-Za-z0-9_-]{22}","x":\d+,"meta":/
          : /^\{"c":"[A-Za-z0-9_-]{22}","q":1,"x":\d+,"meta":/,
      );
      // Same length, valid JSON, one value changed: the checksum no longer matches. Not a torn read
      // (it fails under the session's lock too): an edit, taken as it parses, as before checksums.
      const edited = text.replace('user', 'root');
      expect(edited).not.toBe(text);
      await writeFile(file, edited);
      expect((await store.load(key))?.values).toEqual({ 'v:role': '"root"', ...extra });
      expect(reported).toEqual([]);
      const editedInode = await inode(file);
      expect(await store.commit(key, { set: { 'v:a': '1' }, unset: [] }, 60_000)).toBe('ok');
      expect(await readdir(join(dir, 'users', '.spare'))).not.toContain(key);
      expect(await inode(file)).not.toBe(editedInode);
      expect((await store.load(key))?.values).toEqual({ 'v:role': '"root"', 'v:a': '1', ...extra });
    });
  }

  it('a record of the oldest format (expiry in the mtime) is read, and rewritten in two slots by its next commit', async () => {
    const dir = await existingDir();
    const key = storageKey(newToken());
    await mkdir(join(dir, 'users'));
    const file = join(dir, `${key}.json`);
    await writeFile(file, JSON.stringify(record({ 'v:a': '1' })));
    await utimes(file, new Date(), new Date(Date.now() + 60_000));
    const store = new FileStore({ dir });
    expect((await store.load(key))?.values).toEqual({ 'v:a': '1' });
    const old = await inode(file);
    expect(await store.commit(key, { set: { 'v:b': '1' }, unset: [] }, 60_000)).toBe('ok');
    expect(await slots(file)).toEqual([1, null]);
    expect((await store.load(key))?.values).toEqual({ 'v:a': '1', 'v:b': '1' });
    // The inode of the oldest format is not kept as a spare (its readers check no checksum).
    expect(await readdir(join(dir, 'users', '.spare'))).not.toContain(key);
    expect(await inode(file)).not.toBe(old);
  });

  it.skipIf(process.platform !== 'linux')(
    'a write into the spare that fails (disk full) removes its temp file and keeps the old record',
    async () => {
      const dir = await tempDir();
      const store = new FileStore({ dir });
      const key = storageKey(newToken());
      await store.create(key, record({ 'v:a': '1', 'v:large': LARGE }), 60_000);
      await store.commit(key, { set: { 'v:a': '2' }, unset: [] }, 60_000); // now it has a spare
      expect(await readdir(join(dir, 'users', '.spare'))).toEqual([key]);
      const write = nodeFs.writeSync.bind(nodeFs) as (...args: unknown[]) => number;
      vi.spyOn(nodeFs, 'writeSync').mockImplementation(((fd: number, ...rest: unknown[]) => {
        if (readlinkSync(`/proc/self/fd/${fd}`).includes('.tmp-'))
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        return write(fd, ...rest);
      }) as typeof nodeFs.writeSync);
      await expect(store.commit(key, { set: { 'v:a': '3' }, unset: [] }, 60_000)).rejects.toMatchObject({
        code: 'ENOSPC',
      });
      vi.restoreAllMocks();
      expect((await readdir(dir)).filter((n) => n.startsWith('.tmp-') || n.endsWith('.lock'))).toEqual([]);
      expect((await store.load(key))?.values).toEqual({ 'v:a': '2', 'v:large': LARGE });
      // The next commit works (without a spare: a new temp file).
      expect(await store.commit(key, { set: { 'v:a': '4' }, unset: [] }, 60_000)).toBe('ok');
      expect((await store.load(key))?.values).toEqual({ 'v:a': '4', 'v:large': LARGE });
    },
  );
});
