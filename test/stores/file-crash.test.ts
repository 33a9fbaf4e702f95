/**
 * FileStore locks after a crash: a writer is SIGKILLed mid-write (a real child process, `kill -9`)
 * and the next request on each of its sessions must go through at once, not wait for a stale lock.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { FileStore } from '../../src/stores/file.js';
import { scratch } from '../helpers/scratch.js';

const HOUR = 3_600_000;
const { tempDir, fixture } = scratch('crash');

const meta = () => ({ createdAt: Date.now(), lastSeenAt: Date.now(), deadline: Date.now() + HOUR });

async function sessions(store: FileStore, n: number): Promise<string[]> {
  const keys = Array.from({ length: n }, () => storageKey(newToken()));
  for (const key of keys) await store.create(key, { meta: meta(), values: { 'v:before': '1' } }, HOUR);
  return keys;
}

/** Starts a child that takes the lock of each key and stops mid-write; resolves once it holds them all. */
async function holder(dir: string, keys: string[], mode: string[] = []): Promise<ChildProcess> {
  const child = fixture('file-lock-holder.ts', [...mode, dir, ...keys]);
  let out = '';
  let err = '';
  child.stderr!.on('data', (chunk) => {
    err += chunk;
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk) => {
      out += chunk;
      if (out.includes(`held ${keys.length}`)) resolve();
    });
    child.on('exit', (code, signal) => reject(new Error(`lock holder exited (${code ?? signal}): ${err}`)));
  });
  return child;
}

async function kill9(child: ChildProcess): Promise<void> {
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  const [, signal] = await exited;
  expect(signal).toBe('SIGKILL');
}

const names = async (dir: string, pattern: RegExp) => (await readdir(dir)).filter((n) => pattern.test(n));
/** The store instances' owner files (`owners/` also holds the `.wants` directory). */
const ownerIds = (dir: string) => names(join(dir, 'owners'), /^[0-9a-f]{16}$/);

describe('FileStore: a writer killed mid-write', () => {
  it('the next commit and load on each of 20 sessions succeed at once after restart (two stores racing for the dead locks)', async () => {
    const dir = await tempDir();
    const keys = await sessions(new FileStore({ dir, fsync: false }), 20);
    const child = await holder(dir, keys);
    // Mid-write: every lock taken, every temp file written, nothing published.
    expect(await names(dir, /\.json\.lock$/)).toHaveLength(20);
    expect(await names(dir, /^\.tmp-/)).toHaveLength(20);
    await kill9(child);
    expect(await names(dir, /\.json\.lock$/)).toHaveLength(20); // the crash left its locks behind

    // "Restart": new stores on the directory, default lock timeout (5 s) and stale age (10 s).
    const a = new FileStore({ dir, fsync: false });
    const b = new FileStore({ dir, fsync: false });
    const started = performance.now();
    const results = await Promise.all(
      keys.flatMap((key) => [
        a.commit(key, { set: { 'v:a': '1' }, unset: [] }, HOUR),
        b.commit(key, { set: { 'v:b': '1' }, unset: [] }, HOUR),
      ]),
    );
    const commitMs = performance.now() - started;
    const loadStarted = performance.now();
    const loaded = await Promise.all(keys.map((key) => a.load(key)));
    const loadMs = performance.now() - loadStarted;
    console.log(
      `[file-crash] 20 sessions locked by a SIGKILLed writer: 40 commits (2 stores) in ${commitMs.toFixed(1)} ms, then 20 loads in ${loadMs.toFixed(1)} ms`,
    );
    expect(results.every((r) => r === 'ok')).toBe(true);
    expect(commitMs).toBeLessThan(1000);
    for (const record of loaded) {
      expect({ ...record?.values }).toEqual({ 'v:before': '1', 'v:a': '1', 'v:b': '1' });
    }
    // The dead writer's locks are gone; the two stores' own, kept after their writes, go with close.
    await Promise.all([a.close(), b.close()]);
    expect(await names(dir, /\.json\.lock/)).toEqual([]);
  });

  it('killed mid-write in place (half a slot written, its fsync pending): every session reads as before, and takes its next commits', async () => {
    const dir = await tempDir();
    const keys = await sessions(new FileStore({ dir, fsync: false }), 10);
    const inodes = await Promise.all(keys.map(async (key) => (await stat(join(dir, `${key}.json`))).ino));
    const child = await holder(dir, keys, ['--torn']);
    expect(await names(dir, /\.json\.lock$/)).toHaveLength(10);
    await kill9(child);
    const reported: string[] = [];
    const store = new FileStore({ dir, onCorrupt: (file) => reported.push(file) });
    for (const key of keys) {
      // The half-written slot is not whole: the version before it is the record.
      expect({ ...(await store.load(key))?.values }).toEqual({ 'v:before': '1' });
      const bytes = await readFile(join(dir, `${key}.json`));
      expect(bytes.length).toBeGreaterThan(4096); // the child did write into slot 1
    }
    const started = performance.now();
    const results = await Promise.all(
      keys.map((key) => store.commit(key, { set: { 'v:a': '1' }, unset: [] }, HOUR)),
    );
    expect(results.every((r) => r === 'ok')).toBe(true);
    expect(performance.now() - started).toBeLessThan(1000);
    for (const [i, key] of keys.entries()) {
      expect({ ...(await new FileStore({ dir }).load(key))?.values }).toEqual({
        'v:before': '1',
        'v:a': '1',
      });
      expect((await stat(join(dir, `${key}.json`))).ino).toBe(inodes[i]); // still in place
    }
    expect(reported).toEqual([]);
    // The dead writer's locks are gone; this store's own, kept after its writes, go with close.
    await store.close();
    expect(await names(dir, /\.json\.lock/)).toEqual([]);
  });

  it('a lock whose owner is alive is waited for; once the owner is killed it is taken over at once', async () => {
    const dir = await tempDir();
    const [key] = await sessions(new FileStore({ dir, fsync: false }), 1);
    const child = await holder(dir, [key!]);
    const store = new FileStore({ dir, fsync: false, lockTimeoutMs: 300 });
    const waited = performance.now();
    await expect(store.commit(key!, { set: { 'v:x': '1' }, unset: [] }, HOUR)).rejects.toThrow(/timed out/);
    expect(performance.now() - waited).toBeGreaterThanOrEqual(290);
    await kill9(child);
    const started = performance.now();
    expect(await store.commit(key!, { set: { 'v:x': '1' }, unset: [] }, HOUR)).toBe('ok');
    const ms = performance.now() - started;
    console.log(
      `[file-crash] live owner: waited (timed out at 300 ms); after kill -9 the commit took ${ms.toFixed(1)} ms`,
    );
    expect(ms).toBeLessThan(1000);
    expect((await store.load(key!))?.values['v:x']).toBe('1');
  });

  it('gc clears what a killed writer left, at once: its locks, its temp files and its owner file', async () => {
    const dir = await tempDir();
    const keys = await sessions(new FileStore({ dir, fsync: false }), 3);
    await kill9(await holder(dir, keys));
    const store = new FileStore({ dir, fsync: false });
    const live = await sessions(store, 1); // this store's own owner file, which gc keeps
    const owners = () => ownerIds(dir);
    expect(await owners()).toHaveLength(3); // first store, child, this one
    expect(await names(dir, /^\.tmp-/)).toHaveLength(3);
    expect(await store.gc()).toBe(0);
    expect(await names(dir, /\.json\.lock/)).toEqual([]);
    expect(await names(dir, /^\.tmp-/)).toEqual([]); // the dead writer's, however young
    expect(await owners()).toHaveLength(2); // the child's is gone
    for (const key of [...keys, ...live]) expect((await store.load(key))?.values['v:before']).toBe('1');
  });
});

describe('FileStore: whose lock is it', () => {
  /** This process's owner record, as a store writes it (taken from a store's owner file). */
  async function ownerRecord(dir: string): Promise<Record<string, unknown>> {
    const [id] = await ownerIds(dir);
    return JSON.parse(await readFile(join(dir, 'owners', id!), 'utf8'));
  }

  async function setup() {
    const dir = await tempDir();
    const first = new FileStore({ dir, fsync: false });
    const [key] = await sessions(first, 1);
    const store = new FileStore({ dir, fsync: false, lockTimeoutMs: 250 });
    return { dir, key: key!, lock: join(dir, `${key}.json.lock`), owner: await ownerRecord(dir), store };
  }
  const commit = (store: FileStore, key: string) =>
    store.commit(key, { set: { 'v:n': '1' }, unset: [] }, HOUR);

  it('a lock held by this very process (another store instance) is respected', async () => {
    const { key, lock, owner, store } = await setup();
    await writeFile(lock, JSON.stringify(owner));
    await expect(commit(store, key)).rejects.toThrow(/timed out/);
  });

  it('pid reuse: a lock naming a live pid with another start time is taken over at once', async () => {
    const { key, lock, owner, store } = await setup();
    for (const pid of [process.pid, process.ppid]) {
      await writeFile(lock, JSON.stringify({ ...owner, pid, start: '1' }));
      const started = performance.now();
      expect(await commit(store, key)).toBe('ok');
      expect(performance.now() - started).toBeLessThan(1000);
    }
  });

  it('an owner that cannot be checked (another host or PID namespace) is waited for until its lock is stale', async () => {
    const { key, lock, owner, store } = await setup();
    await writeFile(lock, JSON.stringify({ ...owner, scope: 'elsewhere|boot|pid:[1]' }));
    await expect(commit(store, key)).rejects.toThrow(/timed out/);
    const old = new Date(Date.now() - 11_000); // no sign of life for longer than staleLockMs (10 s)
    await utimes(lock, old, old);
    expect(await commit(store, key)).toBe('ok');
  });

  it('a lock file with no owner record (an older version, a crash while it was written) is broken once stale', async () => {
    const { key, lock, store } = await setup();
    await writeFile(lock, '');
    await expect(commit(store, key)).rejects.toThrow(/timed out/);
    const old = new Date(Date.now() - 11_000);
    await utimes(lock, old, old);
    expect(await commit(store, key)).toBe('ok');
  });

  it('a waiter that died while breaking a dead lock does not block the next one', async () => {
    const { dir, key, lock, owner, store } = await setup();
    const dead = { ...owner, pid: process.pid, start: '1' };
    await writeFile(lock, JSON.stringify(dead));
    // The break guard of the dead lock, itself held by a dead waiter.
    await writeFile(`${lock}.${String(owner.id)}`, JSON.stringify({ ...dead, id: 'abcdef0123456789' }));
    expect(await commit(store, key)).toBe('ok');
    await store.close(); // which releases the lock the store keeps after its write
    expect(await names(dir, /\.json\.lock/)).toEqual([]);
  });
});

describe('FileStore: readers in one process, a writer in another', () => {
  it.each([
    ['reuses inodes (files of one version, 20 KB)', 20_000],
    ['rewrites two-slot files in place (1 KB)', 1_000],
  ])('a reader never sees a torn or missing record while the writer %s', async (_, bytes) => {
    const dir = await tempDir();
    const reported: string[] = [];
    const stores = [
      new FileStore({ dir, fsync: false, onCorrupt: (file) => reported.push(file) }),
      // Through the thread pool: open, read and close apart, a wider window for a torn read.
      new FileStore({ dir, fsync: false, io: 'async', onCorrupt: (file) => reported.push(file) }),
    ];
    const keys = await sessions(stores[0]!, 4);
    const child = fixture('file-lock-holder.ts', ['--churn', '1500', String(bytes), dir, ...keys]);
    let out = '';
    child.stdout!.on('data', (chunk) => {
      out += chunk;
    });
    let err = '';
    child.stderr!.on('data', (chunk) => {
      err += chunk;
    });
    const exited = once(child, 'exit');
    let running = true;
    void exited.then(() => {
      running = false;
    });
    let loads = 0;
    let missing = 0;
    let wrong = 0;
    while (running) {
      const results = await Promise.all(keys.flatMap((key) => stores.map((store) => store.load(key))));
      for (const record of results) {
        loads++;
        if (!record) missing++;
        else if (
          record.values['v:before'] !== '1' ||
          (record.values['v:n'] !== undefined &&
            record.values['v:big'] !==
              JSON.stringify(record.values['v:n'].repeat(bytes / record.values['v:n'].length)))
        )
          wrong++;
      }
    }
    const [code] = await exited;
    console.log(`[file-crash] reader vs writer in another process: ${loads} loads during ${out.trim()}`);
    expect(code, err).toBe(0);
    expect(out).toMatch(/churned \d+/);
    expect({ missing, wrong, reported }).toEqual({ missing: 0, wrong: 0, reported: [] });
    expect(loads).toBeGreaterThan(100);
  });
});
