import { createHash, randomBytes } from 'node:crypto';
import { constants, promises as fs, readFile } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SessionError } from '../errors.js';
import {
  applyDelta,
  type CommitResult,
  isLiveTtl,
  type SessionDelta,
  type SessionMeta,
  type SessionStore,
  type SessionSummary,
  type StoredSession,
} from './store.js';

export interface FileStoreOptions {
  /** Directory for session files; created with mode 0700. */
  dir: string;
  /** fsync each file before it replaces the old one (survives power loss). @default true */
  fsync?: boolean;
  /** A lock older than this is considered left by a crashed process and broken. @default 10000 */
  staleLockMs?: number;
  /** How long to wait for a session's lock before failing the request. @default 5000 */
  lockTimeoutMs?: number;
  /** Called when a file cannot be parsed; the session is then treated as absent. @default console.warn */
  onCorrupt?: (file: string, error: Error) => void;
  /** Clock in milliseconds, for tests. @default Date.now */
  now?: () => number;
}

interface FileRecord {
  v: 1;
  expiresAt: number;
  meta: SessionMeta;
  values: Record<string, string>;
}

// The callback readFile, promisified, reads a small file in about half the time of
// fs.promises.readFile (measured in bench/README.md): it is on every request's path.
const readText = promisify(readFile);

const KEY = /^[A-Za-z0-9_-]{16,128}$/;
const GC_BATCH = 64;

function userDirName(userId: string): string {
  return createHash('sha256').update(userId).digest('base64url');
}

/**
 * One file per session (Phalcon's Stream adapter), the default store: no server needed.
 *
 * - Files are named by the storage key (already a hash of the token), mode 0600, in a 0700 dir.
 * - Writes go to a temp file, are fsynced, then renamed over the old file: a reader sees the
 *   old or the new record, never a torn one.
 * - A per-session lock (in-process queue + an O_EXCL lock file, so several processes can share
 *   the directory) makes each commit a read-merge-write of only the keys the request changed.
 * - The file's mtime is set to its expiry, so `gc()` finds expired files with a `stat` and never
 *   reads a live one.
 * - A user index (`users/<hash>/<key>` marker files) serves `sessionsOf`.
 */
export class FileStore implements SessionStore {
  readonly capabilities = { listByUser: true, gc: true, nativeTtl: false } as const;
  readonly dir: string;
  readonly #fsync: boolean;
  readonly #staleLockMs: number;
  readonly #lockTimeoutMs: number;
  readonly #onCorrupt: (file: string, error: Error) => void;
  readonly #now: () => number;
  readonly #queues = new Map<string, Promise<void>>();
  #ready: Promise<void> | undefined;

  constructor(options: FileStoreOptions) {
    if (!options || typeof options.dir !== 'string' || options.dir === '') {
      throw new SessionError('INVALID_OPTION', 'FileStore needs a `dir` for its session files.');
    }
    this.dir = options.dir;
    this.#fsync = options.fsync ?? true;
    this.#staleLockMs = options.staleLockMs ?? 10_000;
    this.#lockTimeoutMs = options.lockTimeoutMs ?? 5_000;
    this.#onCorrupt =
      options.onCorrupt ??
      ((file, err) => console.warn(`[sessionflow] corrupt session file ${file} ignored: ${err.message}`));
    this.#now = options.now ?? Date.now;
  }

  #init(): Promise<void> {
    this.#ready ??= (async () => {
      await fs.mkdir(join(this.dir, 'users'), { recursive: true, mode: 0o700 });
      await fs.chmod(this.dir, 0o700);
    })().catch((err: unknown) => {
      // A directory that is not usable yet (mount not ready, wrong permissions) may be fixed
      // while the process runs: try again on the next request instead of failing forever.
      this.#ready = undefined;
      throw err;
    });
    return this.#ready;
  }

  #file(key: string): string {
    // Keys come from the manager (SHA-256, base64url); anything else never reaches a path.
    if (!KEY.test(key))
      throw new SessionError('INVALID_KEY', 'FileStore refused a storage key that is not base64url.');
    return join(this.dir, `${key}.json`);
  }

  async #read(key: string): Promise<FileRecord | null> {
    const file = this.#file(key);
    let text: string;
    try {
      text = await readText(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    try {
      const parsed = JSON.parse(text) as FileRecord;
      if (
        parsed?.v !== 1 ||
        typeof parsed.expiresAt !== 'number' ||
        typeof parsed.meta !== 'object' ||
        typeof parsed.values !== 'object'
      ) {
        throw new Error('not a session record');
      }
      return parsed;
    } catch (err) {
      this.#onCorrupt(file, err as Error);
      return null;
    }
  }

  async #write(key: string, record: FileRecord): Promise<void> {
    const file = this.#file(key);
    const tmp = join(this.dir, `.tmp-${key}-${randomBytes(6).toString('hex')}`);
    const handle = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      await handle.writeFile(JSON.stringify(record));
      if (this.#fsync) await handle.datasync();
    } finally {
      await handle.close();
    }
    const expiry = record.expiresAt / 1000;
    await fs.utimes(tmp, expiry, expiry);
    await fs.rename(tmp, file);
  }

  async #indexUser(key: string, userId: string | undefined, previous: string | undefined): Promise<void> {
    if (previous !== undefined && previous !== userId)
      await fs.rm(join(this.dir, 'users', userDirName(previous), key), { force: true });
    if (userId !== undefined && userId !== previous) {
      const dir = join(this.dir, 'users', userDirName(userId));
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      await fs.writeFile(join(dir, key), '', { mode: 0o600 });
    }
  }

  async #unlink(key: string, record: FileRecord | null): Promise<void> {
    await fs.rm(this.#file(key), { force: true });
    if (record?.meta.userId !== undefined) await this.#indexUser(key, undefined, record.meta.userId);
  }

  /** Runs `fn` holding the session's lock: queued within this process, a lock file across processes. */
  async #locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    await this.#init();
    const previous = this.#queues.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    const tail = previous.then(() => mine);
    this.#queues.set(key, tail);
    await previous;
    const lock = `${this.#file(key)}.lock`;
    try {
      await this.#acquire(lock);
      try {
        return await fn();
      } finally {
        await fs.rm(lock, { force: true });
      }
    } finally {
      release();
      if (this.#queues.get(key) === tail) this.#queues.delete(key);
    }
  }

  async #acquire(lock: string): Promise<void> {
    const started = Date.now();
    for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
      try {
        await (await fs.open(lock, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600)).close();
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const stat = await fs.stat(lock).catch(() => null);
      if (stat && Date.now() - stat.mtimeMs > this.#staleLockMs) {
        await fs.rm(lock, { force: true });
        continue;
      }
      if (Date.now() - started > this.#lockTimeoutMs)
        throw new Error(`timed out waiting for session lock ${lock}`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  async load(key: string): Promise<StoredSession | null> {
    await this.#init();
    const record = await this.#read(key);
    if (!record) return null;
    if (record.expiresAt <= this.#now()) {
      await this.#locked(key, async () => {
        const again = await this.#read(key);
        if (again && again.expiresAt <= this.#now()) await this.#unlink(key, again);
      });
      return null;
    }
    return { meta: record.meta, values: record.values };
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    return this.#locked(key, async () => {
      const existing = await this.#read(key);
      if (existing && existing.expiresAt > this.#now()) return false;
      if (!isLiveTtl(ttlMs)) return true;
      await this.#write(key, {
        v: 1,
        expiresAt: this.#now() + ttlMs,
        meta: record.meta,
        values: record.values,
      });
      await this.#indexUser(key, record.meta.userId, existing?.meta.userId);
      return true;
    });
  }

  async commit(key: string, delta: SessionDelta, ttlMs: number): Promise<CommitResult> {
    return this.#locked(key, async () => {
      const existing = await this.#read(key);
      if (!existing || existing.expiresAt <= this.#now()) return 'gone';
      if (!isLiveTtl(ttlMs)) {
        await this.#unlink(key, existing);
        return 'gone';
      }
      const previousUser = existing.meta.userId;
      const merged = applyDelta({ meta: existing.meta, values: existing.values }, delta);
      await this.#write(key, {
        v: 1,
        expiresAt: this.#now() + ttlMs,
        meta: merged.meta,
        values: merged.values,
      });
      await this.#indexUser(key, merged.meta.userId, previousUser);
      return 'ok';
    });
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<CommitResult> {
    return this.commit(key, { set: {}, unset: [], meta }, ttlMs);
  }

  async destroy(key: string): Promise<void> {
    await this.#locked(key, async () => {
      await this.#unlink(key, await this.#read(key));
    });
  }

  async sessionsOf(userId: string): Promise<SessionSummary[]> {
    await this.#init();
    const dir = join(this.dir, 'users', userDirName(userId));
    const names = await fs.readdir(dir).catch(() => [] as string[]);
    const out: SessionSummary[] = [];
    for (const key of names) {
      if (!KEY.test(key)) continue;
      const record = await this.load(key);
      if (record && record.meta.userId === userId) out.push({ key, meta: record.meta });
      else await fs.rm(join(dir, key), { force: true });
    }
    return out;
  }

  /**
   * Deletes expired session files. Live files cost one `stat` (their mtime is their expiry) and
   * are never read; work is done in batches that yield to the event loop.
   */
  async gc(now = this.#now()): Promise<number> {
    await this.#init();
    let removed = 0;
    let batch = 0;
    const dir = await fs.opendir(this.dir);
    for await (const entry of dir) {
      if (++batch % GC_BATCH === 0) await new Promise((r) => setImmediate(r));
      if (!entry.isFile()) continue;
      const name = entry.name;
      const path = join(this.dir, name);
      if (name.endsWith('.json')) {
        const stat = await fs.stat(path).catch(() => null);
        if (!stat || stat.mtimeMs > now) continue;
        const key = name.slice(0, -5);
        if (!KEY.test(key)) continue;
        const gone = await this.#locked(key, async () => {
          const record = await this.#read(key);
          if (record && record.expiresAt > now) return false;
          await this.#unlink(key, record);
          return true;
        });
        if (gone) removed++;
      } else if (name.startsWith('.tmp-') || name.endsWith('.lock')) {
        // Left by a crash mid-write: safe to remove once old.
        const stat = await fs.stat(path).catch(() => null);
        if (stat && Date.now() - stat.mtimeMs > this.#staleLockMs) await fs.rm(path, { force: true });
      }
    }
    return removed;
  }
}
