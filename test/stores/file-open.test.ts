/**
 * FileStore `openFiles`: loads answered from a session file kept open, checked with one fstat.
 * What must hold: a load never returns a version older than one whose commit had returned before
 * the load started, whichever process (FileStore instance) wrote it, and a logout is seen by the
 * very next load.
 */
import { spawn } from 'node:child_process';
import nodeFs, { readdirSync, readlinkSync } from 'node:fs';
import { copyFile, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { FileStore } from '../../src/stores/file.js';

const HOUR = 3_600_000;
const dirs: string[] = [];
const stores: FileStore[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sessionflow-open-'));
  dirs.push(dir);
  return join(dir, 'sessions');
}

function store(options: ConstructorParameters<typeof FileStore>[0]): FileStore {
  const made = new FileStore(options);
  stores.push(made);
  return made;
}

afterEach(async () => {
  vi.restoreAllMocks();
  for (const made of stores.splice(0)) await made.close();
});
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const meta = () => ({ createdAt: Date.now(), lastSeenAt: Date.now(), deadline: Date.now() + HOUR, h: 'h0' });
const set = (values: Record<string, string>) => ({ set: values, unset: [] });

/** Session files are kept only once their ctime is over a second old. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 1_100));

/** The descriptors this process holds on files under `dir`. */
function openUnder(dir: string): number {
  let count = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith(`${dir}/`)) count++;
    } catch {}
  }
  return count;
}

/** Counts the opens of session files from here on. */
function countOpens(): { readonly count: number } {
  const opens = { count: 0 };
  const openSync = nodeFs.openSync.bind(nodeFs);
  vi.spyOn(nodeFs, 'openSync').mockImplementation(((path: string, ...rest: unknown[]) => {
    if (String(path).endsWith('.json')) opens.count++;
    return (openSync as (...args: unknown[]) => number)(path, ...rest);
  }) as typeof nodeFs.openSync);
  return opens;
}

describe.skipIf(process.platform !== 'linux')('FileStore: session files kept open (openFiles)', () => {
  it('a settled session is answered from its open file: no open, no read, the same values', async () => {
    const dir = await tempDir();
    const a = store({ dir });
    const key = storageKey(newToken());
    await a.create(key, { meta: meta(), values: { 'v:a': '1' } }, HOUR);
    const opens = countOpens();
    // Just written: its ctime is too fresh to trust the record read, so every load reads the
    // file again, through the descriptor the first one kept (a two-slot file keeps its inode).
    expect((await a.load(key))?.values).toEqual({ 'v:a': '1' });
    expect((await a.load(key))?.values).toEqual({ 'v:a': '1' });
    expect(opens.count).toBe(1);
    expect(openUnder(dir)).toBe(1);
    await settle();
    expect((await a.load(key))?.values).toEqual({ 'v:a': '1' });
    for (let i = 0; i < 5; i++) expect((await a.load(key))?.values).toEqual({ 'v:a': '1' });
    expect(opens.count).toBe(1);
    expect(openUnder(dir)).toBe(1);
    // A file of one version (a record too large for a slot) is kept only once settled.
    const large = storageKey(newToken());
    await a.create(large, { meta: meta(), values: { 'v:l': JSON.stringify('x'.repeat(5_000)) } }, HOUR);
    expect(opens.count).toBe(2); // create's look for a file of that name
    expect((await a.load(large))?.values['v:l']).toBeDefined();
    expect((await a.load(large))?.values['v:l']).toBeDefined();
    expect(opens.count).toBe(4);
  });

  it('a two-slot file kept open before it settled: a change by another process is read through it, a replaced file by its path', async () => {
    const dir = await tempDir();
    const a = store({ dir });
    const b = store({ dir });
    const key = storageKey(newToken());
    await a.create(key, { meta: meta(), values: { 'v:a': '1' } }, HOUR);
    expect((await a.load(key))?.values).toEqual({ 'v:a': '1' });
    expect(openUnder(dir)).toBe(1);
    for (let n = 2; n <= 5; n++) {
      expect(await b.commit(key, set({ 'v:a': String(n) }), HOUR)).toBe('ok');
      expect((await a.load(key))?.values).toEqual({ 'v:a': String(n) });
    }
    // Too large for a slot: b renames a new file over the one a holds open (now unlinked).
    const large = JSON.stringify('x'.repeat(5_000));
    expect(await b.commit(key, set({ 'v:l': large }), HOUR)).toBe('ok');
    expect((await a.load(key))?.values).toEqual({ 'v:a': '5', 'v:l': large });
    // Small again: a new two-slot inode, which a reads by its path and then keeps.
    expect(await b.commit(key, { set: { 'v:a': '6' }, unset: ['v:l'] }, HOUR)).toBe('ok');
    expect((await a.load(key))?.values).toEqual({ 'v:a': '6' });
    expect(await a.commit(key, set({ 'v:a': '7' }), HOUR)).toBe('ok');
    expect((await b.load(key))?.values).toEqual({ 'v:a': '7' });
    expect((await a.load(key))?.values).toEqual({ 'v:a': '7' });
    await b.destroy(key);
    expect(await a.load(key)).toBeNull();
    expect(await a.commit(key, set({ 'v:a': '8' }), HOUR)).toBe('gone');
  });

  it('a commit, an ID change and a logout by another process are seen by the very next load', async () => {
    const dir = await tempDir();
    const a = store({ dir });
    const b = store({ dir }); // a second process on the same directory
    const key = storageKey(newToken());
    await a.create(key, { meta: meta(), values: { 'v:a': '1' } }, HOUR);
    await settle();
    expect((await a.load(key))?.values).toEqual({ 'v:a': '1' });
    expect(openUnder(dir)).toBe(1);
    // Same length, same expiry second: only the inode's ctime and link count tell.
    expect(await b.commit(key, set({ 'v:a': '2' }), HOUR)).toBe('ok');
    expect((await a.load(key))?.values).toEqual({ 'v:a': '2' });
    await settle();
    expect((await a.load(key))?.values).toEqual({ 'v:a': '2' });
    const moved = { set: {}, unset: [], meta: { h: 'h1', userId: 'alice' } };
    expect(await b.commit(key, moved, HOUR, { handle: 'h0' })).toBe('ok');
    expect((await a.load(key))?.meta).toMatchObject({ h: 'h1', userId: 'alice' });
    await settle();
    expect((await a.load(key))?.meta.h).toBe('h1');
    await b.destroy(key);
    expect(await a.load(key)).toBeNull();
    expect(await a.load(key)).toBeNull();
    expect(openUnder(dir)).toBe(0);
  });

  it('the whole directory deleted (everyone logged out by hand): no kept session loads', async () => {
    const dir = await tempDir();
    const a = store({ dir });
    const keys = Array.from({ length: 3 }, () => storageKey(newToken()));
    for (const key of keys) await a.create(key, { meta: meta(), values: {} }, HOUR);
    await settle();
    for (const key of keys) expect(await a.load(key)).not.toBeNull();
    expect(openUnder(dir)).toBe(3);
    await rm(dir, { recursive: true, force: true });
    for (const key of keys) expect(await a.load(key)).toBeNull();
    expect(openUnder(dir)).toBe(0);
  });

  it('a file replaced or rewritten from outside the store is read again', async () => {
    const dir = await tempDir();
    const a = store({ dir });
    const [x, y] = [storageKey(newToken()), storageKey(newToken())];
    await a.create(x, { meta: meta(), values: { 'v:who': 'x' } }, HOUR);
    await a.create(y, { meta: meta(), values: { 'v:who': 'y' } }, HOUR);
    await settle();
    expect((await a.load(x))?.values).toEqual({ 'v:who': 'x' });
    // Rewritten in place (an editor writing through the same inode).
    await writeFile(join(dir, `${x}.json`), await readFile(join(dir, `${y}.json`)));
    expect((await a.load(x))?.values).toEqual({ 'v:who': 'y' });
    await settle();
    expect((await a.load(x))?.values).toEqual({ 'v:who': 'y' });
    // Replaced by a rename (a restore from a copy).
    await a.commit(y, set({ 'v:who': 'z' }), HOUR);
    await copyFile(join(dir, `${y}.json`), join(dir, 'copy'));
    await rename(join(dir, 'copy'), join(dir, `${x}.json`));
    expect((await a.load(x))?.values).toEqual({ 'v:who': 'z' });
  });

  it('a kept session that expires is not answered, and is deleted as any expired one', async () => {
    const dir = await tempDir();
    let now = Date.now();
    const a = store({ dir, now: () => now });
    const key = storageKey(newToken());
    await a.create(key, { meta: meta(), values: { 'v:a': '1' } }, 60_000);
    await settle();
    now += 1_100;
    expect(await a.load(key)).not.toBeNull();
    expect(openUnder(dir)).toBe(1);
    now += 60_000;
    expect(await a.load(key)).toBeNull();
    expect(readdirSync(dir)).not.toContain(`${key}.json`);
    expect(openUnder(dir)).toBe(0);
  });

  it('at most openFiles are kept, the least recently loaded closed first; close() closes them all; 0 keeps none', async () => {
    const dir = await tempDir();
    const a = store({ dir, openFiles: 3 });
    const keys = Array.from({ length: 5 }, () => storageKey(newToken()));
    for (const [i, key] of keys.entries())
      await a.create(key, { meta: meta(), values: { 'v:i': String(i) } }, HOUR);
    await settle();
    for (const key of keys) await a.load(key);
    expect(openUnder(dir)).toBe(3);
    const opens = countOpens();
    for (const key of keys.slice(2)) await a.load(key); // the three kept
    expect(opens.count).toBe(0);
    await a.load(keys[0]!); // evicts keys[2], the least recently loaded
    expect(opens.count).toBe(1);
    await a.load(keys[3]!);
    expect(opens.count).toBe(1);
    await a.close();
    expect(openUnder(dir)).toBe(0);

    const none = store({ dir, openFiles: 0 });
    for (const key of keys) expect(await none.load(key)).not.toBeNull();
    expect(openUnder(dir)).toBe(0);
    expect(() => new FileStore({ dir, openFiles: -1 })).toThrow(/openFiles/);
  });

  it('a commit writes through the file its load kept; closed meanwhile, the file stays open until the write is done', async () => {
    const dir = await tempDir();
    const a = store({ dir, openFiles: 1 });
    const [first, second] = [storageKey(newToken()), storageKey(newToken())];
    await a.create(first, { meta: meta(), values: { 'v:a': '1' } }, HOUR);
    await a.create(second, { meta: meta(), values: { 'v:b': '1' } }, HOUR);
    expect((await a.load(first))?.values).toEqual({ 'v:a': '1' });
    expect(openUnder(dir)).toBe(1);
    // The commit's fdatasync is held until released, and tells which file its descriptor is.
    let release!: () => void;
    let synced: string | undefined;
    const reached = new Promise<void>((resolve) => {
      const fdatasync = nodeFs.fdatasync.bind(nodeFs);
      vi.spyOn(nodeFs, 'fdatasync').mockImplementation(((
        fd: number,
        callback: (err: Error | null) => void,
      ) => {
        synced = readlinkSync(`/proc/self/fd/${fd}`);
        release = () => {
          synced = readlinkSync(`/proc/self/fd/${fd}`);
          fdatasync(fd, callback);
        };
        resolve();
      }) as typeof nodeFs.fdatasync);
    });
    const committed = a.commit(first, { set: { 'v:a': '2' }, unset: [] }, HOUR);
    await reached;
    expect(synced).toBe(join(dir, `${first}.json`));
    expect(openUnder(dir)).toBe(1); // the kept descriptor, no second one
    // Loading another session closes the kept one (openFiles: 1), not under the write.
    expect((await a.load(second))?.values).toEqual({ 'v:b': '1' });
    expect(openUnder(dir)).toBe(2);
    release();
    expect(synced).toBe(join(dir, `${first}.json`));
    expect(await committed).toBe('ok');
    expect(openUnder(dir)).toBe(1);
    vi.restoreAllMocks();
    const other = store({ dir, openFiles: 0 });
    expect((await other.load(first))?.values).toEqual({ 'v:a': '2' });
  });

  it('out of descriptors (EMFILE): the kept files are given back and the load still answers', async () => {
    const dir = await tempDir();
    const a = store({ dir });
    const keys = Array.from({ length: 3 }, () => storageKey(newToken()));
    for (const key of keys) await a.create(key, { meta: meta(), values: { 'v:a': key } }, HOUR);
    await settle();
    for (const key of keys.slice(0, 2)) await a.load(key);
    expect(openUnder(dir)).toBe(2);
    const openSync = nodeFs.openSync.bind(nodeFs);
    let refused = 0;
    vi.spyOn(nodeFs, 'openSync').mockImplementation(((path: string, ...rest: unknown[]) => {
      if (String(path).endsWith('.json') && refused === 0) {
        refused++;
        throw Object.assign(new Error('EMFILE: too many open files'), { code: 'EMFILE' });
      }
      return (openSync as (...args: unknown[]) => number)(path, ...rest);
    }) as typeof nodeFs.openSync);
    expect((await a.load(keys[2]!))?.values).toEqual({ 'v:a': keys[2] });
    expect(refused).toBe(1);
    expect(openUnder(dir)).toBeLessThanOrEqual(1);
    expect((await a.load(keys[0]!))?.values).toEqual({ 'v:a': keys[0] });
  });

  it('while gc runs nothing is kept; gc removing a kept session closes it', async () => {
    const dir = await tempDir();
    let now = Date.now();
    const a = store({ dir, now: () => now });
    const [gone, live] = [storageKey(newToken()), storageKey(newToken())];
    await a.create(gone, { meta: meta(), values: {} }, 10_000);
    await a.create(live, { meta: meta(), values: {} }, HOUR);
    await settle();
    now += 1_100;
    await a.load(gone);
    await a.load(live);
    expect(openUnder(dir)).toBe(2);
    now += 10_000;
    expect(await a.gc()).toBe(1);
    expect(openUnder(dir)).toBe(1);
    expect(await a.load(live)).not.toBeNull();
  });

  it('randomized race, 400 trials: a load never returns a version older than one acknowledged before it started', async () => {
    const dir = await tempDir();
    const a = store({ dir });
    const b = store({ dir, fsync: false });
    const keys = Array.from({ length: 4 }, () => storageKey(newToken()));
    for (const key of keys) await a.create(key, { meta: meta(), values: { 'v:n': '0' } }, HOUR);
    await settle();
    for (const key of keys) await a.load(key); // all kept
    const acked = new Map(keys.map((key) => [key, 0]));
    let stale = 0;
    let loads = 0;
    const writer = async (key: string, from: number) => {
      for (let n = from; n < from + 100; n++) {
        expect(await b.commit(key, set({ 'v:n': String(n) }), HOUR)).toBe('ok');
        acked.set(key, n);
        if (Math.random() < 0.3) await new Promise((resolve) => setImmediate(resolve));
      }
    };
    const reader = async (key: string) => {
      for (let i = 0; i < 100; i++) {
        const floor = acked.get(key)!;
        const got = Number((await a.load(key))?.values['v:n']);
        loads++;
        if (!(got >= floor)) stale++;
        if (Math.random() < 0.5) await new Promise((resolve) => setImmediate(resolve));
      }
    };
    await Promise.all(keys.flatMap((key) => [writer(key, 1), reader(key)]));
    expect(loads).toBe(400);
    expect(stale).toBe(0);
    for (const key of keys) expect((await a.load(key))?.values['v:n']).toBe('100');
  });

  it('another process writing one session 300 times: every load is at least the last version it had acknowledged', async () => {
    const dir = await tempDir();
    const a = store({ dir });
    const key = storageKey(newToken());
    await a.create(key, { meta: meta(), values: { 'v:n': '0' } }, HOUR);
    await settle();
    expect((await a.load(key))?.values['v:n']).toBe('0');
    expect(openUnder(dir)).toBe(1);
    const fixture = fileURLToPath(new URL('../fixtures/file-writer.ts', import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', fixture, dir, key, '300'], {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let acked = 0;
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const lines = out.split('\n');
      out = lines.pop()!;
      for (const line of lines) if (line.startsWith('acked ')) acked = Number(line.slice(6));
    });
    child.stderr.on('data', (chunk) => {
      err += chunk;
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    let done = false;
    void exited.then(() => {
      done = true;
    });
    let stale = 0;
    let loads = 0;
    let seen = 0;
    while (!done) {
      const floor = acked;
      const got = Number((await a.load(key))?.values['v:n']);
      loads++;
      if (!(got >= floor) || got < seen) stale++;
      seen = Math.max(seen, got);
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(await exited, err).toBe(0);
    expect(acked).toBe(300);
    expect(loads).toBeGreaterThan(50);
    expect(stale).toBe(0);
    expect((await a.load(key))?.values['v:n']).toBe('300');
  });
});
