/**
 * The identity invariants (logout, revoke and revokeAll final whatever ID changes run
 * concurrently; acknowledged writes survive an ID change) through a real SessionManager, with
 * every load answered by one FileStore, which keeps files open, and every write made by another
 * on the same directory, as two processes would: only the fstat check stands between a load
 * and a stale record. Files are kept only once their ctime is a second old, which a race of
 * milliseconds never sees; here the clock the store compares it with runs five seconds ahead,
 * so the kept path serves every load it can. (That lifts the guard against two changes in one
 * tick of a coarse clock sharing a ctime: it runs where ctimes are fine-grained, Linux >= 6.13.)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it, vi } from 'vitest';
import { FileStore } from '../../src/stores/file.js';
import type { SessionStore } from '../../src/stores/store.js';
import { describeSessionInvariants } from '../../src/testing/invariants.js';

const [major = 0, minor = 0] = release().split('.').map(Number);
const fineCtimes = process.platform === 'linux' && (major > 6 || (major === 6 && minor >= 13));
const scratch = await mkdtemp(join(tmpdir(), 'sessionflow-open-invariants-'));
const realNow = Date.now;

beforeAll(() => {
  vi.spyOn(Date, 'now').mockImplementation(() => realNow() + 5_000);
});
afterAll(async () => {
  vi.restoreAllMocks();
  await rm(scratch, { recursive: true, force: true });
});

let made = 0;
describeSessionInvariants(
  'FileStore, loads from files kept open in one process, writes from another',
  async () => {
    const dir = join(scratch, String(made++));
    const reader = new FileStore({ dir });
    const writer = new FileStore({ dir });
    const store: SessionStore = {
      capabilities: writer.capabilities,
      load: (key) => reader.load(key),
      create: (key, record, ttlMs) => writer.create(key, record, ttlMs),
      commit: (key, delta, ttlMs, guard) => writer.commit(key, delta, ttlMs, guard),
      touch: (key, meta, ttlMs) => writer.touch(key, meta, ttlMs),
      destroy: (key) => writer.destroy(key),
      sessionsOf: (userId) => writer.sessionsOf(userId),
      gc: (now) => writer.gc(now),
    };
    return { store, cleanup: async () => Promise.all([reader.close(), writer.close()]).then(() => {}) };
  },
  {
    trials: 100,
    skip: fineCtimes ? undefined : 'needs Linux 6.13 or later (fine-grained ctimes)',
    runner: { describe, it, beforeAll, afterAll },
  },
);
