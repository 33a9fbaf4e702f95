import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { FileStore } from '../../src/stores/file.js';
import { decodeRecord } from '../../src/stores/kit.js';
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
