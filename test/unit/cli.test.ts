import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { run } from '../../src/cli/main.js';
import { FileStore, SessionManager } from '../../src/index.js';

const root = await mkdtemp(join(tmpdir(), 'sessionflow-cli-'));
afterAll(() => rm(root, { recursive: true, force: true }));
const secret = 'cli-test-secret-0123456789abcdefghijklmnopqr';

async function cli(...argv: string[]): Promise<{ code: number; out: string[]; err: string[] }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await run(
    argv,
    (l) => out.push(l),
    (l) => err.push(l),
  );
  return { code, out, err };
}

/** Logs `userId` in through a real manager on the directory's FileStore; returns the session id. */
async function loginAs(dir: string, userId: string): Promise<string> {
  const manager = new SessionManager({ secret, store: new FileStore({ dir }) });
  const session = await manager.load({ secure: true });
  await session.login(userId);
  await manager.commit(session, { secure: true });
  return session.id;
}

describe('admin CLI (sessionflow gc | sessions | revoke)', () => {
  it('SM-37: lists a user’s sessions and revokes all but one, on the file store named by URL', async () => {
    const dir = join(root, 'a');
    const keep = await loginAs(dir, 'u1');
    const other = await loginAs(dir, 'u1');
    await loginAs(dir, 'u2');
    const listed = await cli('sessions', '--store', `file:${dir}`, '--user', 'u1');
    expect(listed.code).toBe(0);
    expect(listed.out.at(-1)).toBe('2 live session(s) for user u1');
    expect(listed.out.join('\n')).toContain(keep);
    expect(listed.out.join('\n')).toContain(other);
    const revoked = await cli('revoke', '--store', `file:${dir}`, '--user', 'u1', '--except', keep);
    expect(revoked.out).toEqual(['revoked 1 session(s) of user u1']);
    const store = new FileStore({ dir });
    expect(await store.load(other)).toBeNull();
    expect(await store.load(keep)).not.toBeNull();
    expect((await store.sessionsOf('u2')).length).toBe(1);
    expect((await cli('revoke', '--store', `file:${dir}`, '--id', keep)).code).toBe(0);
    expect(await store.load(keep)).toBeNull();
  });

  it('gc removes expired sessions only', async () => {
    const dir = join(root, 'b');
    const store = new FileStore({ dir });
    const meta = { createdAt: Date.now(), lastSeenAt: Date.now(), deadline: Date.now() + 60_000 };
    await store.create('expiredexpiredexpiredexpiredexpiredexpired1', { meta, values: {} }, 10);
    await store.create('liveliveliveliveliveliveliveliveliveliveli1', { meta, values: {} }, 60_000);
    await new Promise((r) => setTimeout(r, 40));
    const result = await cli('gc', '--store', `file:${dir}`);
    expect(result.code).toBe(0);
    expect(result.out[0]).toMatch(/removed 1 expired session\(s\)$/);
    expect(await store.load('liveliveliveliveliveliveliveliveliveliveli1')).not.toBeNull();
  });

  it('bad usage is exit code 2 with the usage text; an unknown store URL is a clear error', async () => {
    expect((await cli('frobnicate', '--store', 'memory')).code).toBe(2);
    const missing = await cli('sessions', '--store', 'memory');
    expect(missing.code).toBe(2);
    expect(missing.err[0]).toMatch(/needs --user/);
    expect((await cli('gc', '--bogus')).code).toBe(2);
    await expect(cli('gc', '--store', 'ftp://user:hunter2@host/x')).rejects.toThrow(/not supported/);
    await expect(cli('gc', '--store', 'ftp://user:hunter2@host/x')).rejects.not.toThrow(/hunter2/);
  });
});
