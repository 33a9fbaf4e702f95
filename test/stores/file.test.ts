import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { FileStore } from '../../src/index.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sessionflow-test-'));
  dirs.push(dir);
  return join(dir, 'sessions');
}

describeStoreConformance('FileStore', async () => {
  const dir = await tempDir();
  return { store: new FileStore({ dir }), cleanup: () => rm(dir, { recursive: true, force: true }) };
});

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

  it('SM-13: a key that is not base64url never reaches the file system', async () => {
    const store = new FileStore({ dir: await tempDir() });
    await expect(store.load('../../etc/passwd')).rejects.toMatchObject({ code: 'INVALID_KEY' });
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
});
