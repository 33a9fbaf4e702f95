/**
 * FileStore keeps a session's lock after a write in place (`lockLingerMs`), with the record it
 * wrote, and gives it up as soon as another store instance (this process or another) waits for
 * it. What a user would notice if that went wrong: a request that waits for a lock nobody uses,
 * a write lost or a logout undone by a store answering from what it kept, a lock left behind
 * by a process that exited.
 */
import { once } from 'node:events';
import nodeFs from 'node:fs';
import { readdir, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { FileStore } from '../../src/stores/file.js';
import { scratch } from '../helpers/scratch.js';

const HOUR = 3_600_000;
const { tempDir, fixture } = scratch('linger');

afterEach(() => {
  vi.restoreAllMocks();
});

const meta = () => ({ createdAt: Date.now(), lastSeenAt: Date.now(), deadline: Date.now() + HOUR });
const set = (field: string, value: string) => ({ set: { [`v:${field}`]: value }, unset: [] });
const exists = (path: string) =>
  stat(path).then(
    () => true,
    () => false,
  );
const lockOf = (dir: string, key: string) => join(dir, `${key}.json.lock`);
const values = async (store: FileStore, key: string) => {
  const found = await store.load(key);
  return found ? { ...found.values } : null;
};

/** Waits (polling) until `check` holds; false if it did not within `ms`. */
async function until(check: () => Promise<boolean>, ms = 3_000): Promise<boolean> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 5));
  }
  return check();
}

async function session(store: FileStore): Promise<string> {
  const key = storageKey(newToken());
  await store.create(key, { meta: meta(), values: { 'v:before': '1' } }, HOUR);
  return key;
}

/** A store in a child process that keeps its locks for a minute (test/fixtures/file-keeper.ts). */
async function keeper(dir: string) {
  const child = fixture('file-keeper.ts', [dir], ['pipe', 'pipe', 'pipe']);
  let err = '';
  child.stderr!.on('data', (chunk) => {
    err += chunk;
  });
  const waiting: ((line: string) => void)[] = [];
  const early: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const next = waiting.shift();
    if (next) next(line);
    else early.push(line);
  });
  const line = () =>
    new Promise<string>((resolve, reject) => {
      const ready = early.shift();
      if (ready !== undefined) return resolve(ready);
      waiting.push(resolve);
      child.once('exit', (code, signal) => reject(new Error(`keeper exited (${code ?? signal}): ${err}`)));
    });
  expect(await line()).toBe('ready');
  return {
    child,
    ask: (command: string) => {
      child.stdin!.write(`${command}\n`);
      return line();
    },
  };
}

/**
 * A session written by this process's store, then by a keeper in another process, which keeps
 * its lock (for a minute) and the record it wrote.
 */
async function keptByAnotherProcess(options: { lockTimeoutMs?: number } = { lockTimeoutMs: 2_000 }) {
  const dir = await tempDir();
  const store = new FileStore({ dir, fsync: false, ...options });
  const key = await session(store);
  const other = await keeper(dir);
  expect(await other.ask(`commit ${key} a 1`)).toBe('ok');
  return { dir, store, key, other };
}

describe('FileStore: a lock kept after a write (lockLingerMs)', () => {
  it('after a write in place the lock stays for lockLingerMs, then goes; a load meanwhile answers the record written', async () => {
    const dir = await tempDir();
    const store = new FileStore({ dir, fsync: false, lockLingerMs: 200 });
    const key = await session(store);
    expect(await exists(lockOf(dir, key))).toBe(false); // a new session: nothing kept
    expect(await store.commit(key, set('a', '1'), HOUR)).toBe('ok');
    const written = performance.now();
    expect(await exists(lockOf(dir, key))).toBe(true);
    expect(await values(store, key)).toEqual({ 'v:before': '1', 'v:a': '1' });
    expect(await until(async () => !(await exists(lockOf(dir, key))))).toBe(true);
    expect(performance.now() - written).toBeGreaterThanOrEqual(190);
    // Released, the record is read from the file again.
    expect(await values(store, key)).toEqual({ 'v:before': '1', 'v:a': '1' });
    expect(await store.commit(key, set('b', '1'), HOUR)).toBe('ok');
    expect(await exists(lockOf(dir, key))).toBe(true);
    await store.close();
    expect(await exists(lockOf(dir, key))).toBe(false);
  });

  it('another store instance gets a kept lock at once, and the keeper then writes over nothing it did not read', async () => {
    const dir = await tempDir();
    const a = new FileStore({ dir, fsync: false, lockLingerMs: 60_000 });
    const b = new FileStore({ dir, fsync: false, lockTimeoutMs: 2_000 });
    const key = await session(a);
    expect(await a.commit(key, set('a', '1'), HOUR)).toBe('ok');
    expect(await exists(lockOf(dir, key))).toBe(true);
    const asked = performance.now();
    // Without the sign on owners/.wants, b would wait the minute out and time out at 2 s.
    expect(await b.commit(key, set('b', '1'), HOUR)).toBe('ok');
    expect(performance.now() - asked).toBeLessThan(1_000);
    expect(await a.commit(key, set('c', '1'), HOUR)).toBe('ok');
    const all = { 'v:before': '1', 'v:a': '1', 'v:b': '1', 'v:c': '1' };
    expect(await values(a, key)).toEqual(all);
    expect(await values(b, key)).toEqual(all);
    expect(await readdir(join(dir, 'owners', '.wants'))).toEqual([]); // the waiter's sign is gone
    await Promise.all([a.close(), b.close()]);
  });

  it('a waiter that asks while the holder is mid-write gets the lock soon after that write ends (not lockLingerMs later), and both writes are kept', async () => {
    const dir = await tempDir();
    const a = new FileStore({ dir, lockLingerMs: 60_000 }); // fsync: its write waits in fdatasync
    const b = new FileStore({ dir, fsync: false, lockTimeoutMs: 2_000 });
    const key = await session(a);
    expect(await a.commit(key, set('a', '1'), HOUR)).toBe('ok');
    // Hold a's next fdatasync: a is then mid-batch, holding the lock, when b asks for it.
    let held: (() => void) | undefined;
    const fdatasync = nodeFs.fdatasync.bind(nodeFs);
    vi.spyOn(nodeFs, 'fdatasync').mockImplementation(((fd: number, callback: (err: Error | null) => void) => {
      held = () => fdatasync(fd, callback);
    }) as typeof nodeFs.fdatasync);
    const writing = a.commit(key, set('b', '1'), HOUR);
    expect(await until(async () => held !== undefined)).toBe(true);
    const asked = performance.now();
    const waiting = b.commit(key, set('c', '1'), HOUR);
    // b's sign reaches a (its entry in owners/.wants) while a's write is still held.
    expect(await until(async () => (await readdir(join(dir, 'owners', '.wants'))).includes(key))).toBe(true);
    vi.restoreAllMocks();
    held!();
    expect(await writing).toBe('ok');
    expect(await waiting).toBe('ok');
    expect(performance.now() - asked).toBeLessThan(1_000);
    const all = { 'v:before': '1', 'v:a': '1', 'v:b': '1', 'v:c': '1' };
    expect(await values(a, key)).toEqual(all);
    expect(await values(b, key)).toEqual(all);
    await Promise.all([a.close(), b.close()]);
  });

  it('a keeper in another process gives the lock up when this one waits, and then reads what this one wrote', async () => {
    const { dir, store, key, other } = await keptByAnotherProcess();
    expect(await exists(lockOf(dir, key))).toBe(true); // kept by the child, for a minute
    const asked = performance.now();
    expect(await store.commit(key, set('b', '1'), HOUR)).toBe('ok');
    expect(performance.now() - asked).toBeLessThan(1_000);
    expect(await other.ask(`commit ${key} c 1`)).toBe('ok');
    const all = { 'v:before': '1', 'v:a': '1', 'v:b': '1', 'v:c': '1' };
    expect(JSON.parse(await other.ask(`load ${key}`))).toEqual(all);
    expect(await values(store, key)).toEqual(all);
    // And once more this way: the child kept the lock again after its last write.
    expect(await store.commit(key, set('d', '1'), HOUR)).toBe('ok');
    expect(JSON.parse(await other.ask(`load ${key}`))).toEqual({ ...all, 'v:d': '1' });
    await store.close();
  });

  it('a logout made by another process is never undone by the process that kept the lock', async () => {
    const { dir, store, key, other } = await keptByAnotherProcess();
    expect(JSON.parse(await other.ask(`load ${key}`))).toEqual({ 'v:before': '1', 'v:a': '1' });
    const asked = performance.now();
    await store.destroy(key);
    expect(performance.now() - asked).toBeLessThan(1_000);
    expect(JSON.parse(await other.ask(`load ${key}`))).toBeNull();
    expect(await other.ask(`commit ${key} b 1`)).toBe('gone');
    expect(await values(store, key)).toBeNull();
    expect(await exists(join(dir, `${key}.json`))).toBe(false);
    await store.close();
  });

  it('a process that exits without closing its store leaves no kept lock behind', async () => {
    const { dir, store, key, other } = await keptByAnotherProcess({});
    expect(await exists(lockOf(dir, key))).toBe(true);
    const exited = once(other.child, 'exit');
    other.child.stdin!.write('exit\n');
    expect((await exited)[0]).toBe(0);
    expect(await exists(lockOf(dir, key))).toBe(false);
    await store.close();
  });

  it('a process killed (kill -9) while it kept a lock: the lock is taken over at once', async () => {
    const { dir, store, key, other } = await keptByAnotherProcess();
    const exited = once(other.child, 'exit');
    other.child.kill('SIGKILL');
    await exited;
    expect(await exists(lockOf(dir, key))).toBe(true); // left by the dead process
    const asked = performance.now();
    expect(await store.commit(key, set('b', '1'), HOUR)).toBe('ok');
    expect(performance.now() - asked).toBeLessThan(1_000);
    expect(await values(store, key)).toEqual({ 'v:before': '1', 'v:a': '1', 'v:b': '1' });
    await store.close();
  });

  it('gc removes the sign of a waiter that died waiting, and leaves a live one', async () => {
    const dir = await tempDir();
    const store = new FileStore({ dir, fsync: false, staleLockMs: 1_000 });
    await session(store);
    const wants = join(dir, 'owners', '.wants');
    const [dead, waiting] = [storageKey(newToken()), storageKey(newToken())];
    await writeFile(join(wants, dead), '');
    await writeFile(join(wants, waiting), '');
    const longAgo = new Date(Date.now() - 60_000);
    await utimes(join(wants, dead), longAgo, longAgo);
    await store.gc();
    expect(await readdir(wants)).toEqual([waiting]);
    await store.close();
  });

  it.each([-1, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31, '50'])(
    'lockLingerMs: %s is refused at once',
    (bad) => {
      expect(() => new FileStore({ dir: join(tmpdir(), 'never-made'), lockLingerMs: bad as number })).toThrow(
        expect.objectContaining({ code: 'INVALID_OPTION', message: expect.stringMatching(/lockLingerMs/) }),
      );
    },
  );

  it.each([
    ['lockLingerMs: 0', { lockLingerMs: 0 }],
    ["io: 'async' (a store that may not block is never told)", { io: 'async' as const }],
  ])('%s: no lock is kept after a write', async (_, options) => {
    const dir = await tempDir();
    const store = new FileStore({ dir, fsync: false, ...options });
    const key = await session(store);
    expect(await store.commit(key, set('a', '1'), HOUR)).toBe('ok');
    expect(await exists(lockOf(dir, key))).toBe(false);
    await store.close();
  });

  it('where waiters cannot be watched (no inotify), no lock is kept after a write', async () => {
    const watch = vi.spyOn(nodeFs, 'watch').mockImplementation(() => {
      throw Object.assign(new Error('inotify watch limit reached'), { code: 'ENOSPC' });
    });
    const dir = await tempDir();
    const store = new FileStore({ dir, fsync: false, lockLingerMs: 60_000 });
    const key = await session(store);
    expect(await store.commit(key, set('a', '1'), HOUR)).toBe('ok');
    expect(watch).toHaveBeenCalled();
    expect(await exists(lockOf(dir, key))).toBe(false);
    expect(await values(store, key)).toEqual({ 'v:before': '1', 'v:a': '1' });
    await store.close();
  });

  it('randomized: two stores that keep locks, writing one session in random order and logging it out, lose no write and bring nothing back', async () => {
    const dir = await tempDir();
    const stores = [
      new FileStore({ dir, fsync: false, lockLingerMs: 60_000, lockTimeoutMs: 3_000 }),
      new FileStore({ dir, fsync: false, lockLingerMs: 20, lockTimeoutMs: 3_000 }),
    ];
    const pick = () => stores[Math.floor(Math.random() * stores.length)]!;
    const ticks = async () => {
      for (let n = Math.floor(Math.random() * 4); n > 0; n--) await new Promise(setImmediate);
    };
    const TRIALS = 40;
    const FIELDS = 8;
    for (let trial = 0; trial < TRIALS; trial++) {
      const key = await session(pick());
      const answers = await Promise.all(
        Array.from({ length: FIELDS }, async (_, i) => {
          await ticks();
          const store = pick();
          if (Math.random() < 0.3) await store.load(key); // a request that reads first
          return store.commit(key, set(`f${i}`, String(trial)), HOUR);
        }),
      );
      expect(answers).toEqual(Array(FIELDS).fill('ok'));
      const expected = {
        'v:before': '1',
        ...Object.fromEntries(Array.from({ length: FIELDS }, (_, i) => [`v:f${i}`, String(trial)])),
      };
      for (const store of stores) expect(await values(store, key)).toEqual(expected);
      // A logout racing more writes from both stores: afterwards nobody finds the session.
      await Promise.all([
        (async () => {
          await ticks();
          await pick().destroy(key);
        })(),
        ...Array.from({ length: 3 }, async (_, i) => {
          await ticks();
          expect(['ok', 'gone']).toContain(await pick().commit(key, set(`late${i}`, '1'), HOUR));
        }),
      ]);
      for (const store of stores) expect(await values(store, key)).toBeNull();
      expect(await exists(join(dir, `${key}.json`))).toBe(false);
    }
    await Promise.all(stores.map((store) => store.close()));
    expect((await readdir(dir)).filter((n) => n.endsWith('.lock'))).toEqual([]);
    expect(await readdir(join(dir, 'owners', '.wants'))).toEqual([]);
  });
});
