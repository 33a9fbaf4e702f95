import { createHash, randomBytes } from 'node:crypto';
import { close, constants, promises as fs, fstat, open, read } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SessionError } from '../errors.js';
import { CorruptLog, checkStorageKey, decodeRecord, encodeRecord, isStorageKey } from './kit.js';
import {
  applyDelta,
  type CommitGuard,
  type CommitResult,
  guardHolds,
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
  /**
   * Called when a file cannot be parsed; the session is then treated as absent.
   * @default the manager's `warn` (see `setWarn`), else console.warn
   */
  onCorrupt?: (file: string, error: Error) => void;
  /** Clock in milliseconds, for tests. @default Date.now */
  now?: () => number;
}

/** A session file as read: the record, and its expiry (the file's mtime). */
interface FileRecord {
  record: StoredSession;
  expiresAt: number;
}

// The callback fs functions, promisified, read a small file in about half the time of
// fs.promises.readFile (measured in bench/README.md): this is on every request's path. One open
// descriptor gives the content and the mtime (the expiry) of the same file, even if a writer
// renames a new version over it meanwhile; it costs what the callback readFile costs (open,
// fstat, read, close).
const openFd = promisify(open);
const fstatFd = promisify(fstat);
const readFd = promisify(read);
const closeFd = promisify(close);

async function readWithMtime(file: string): Promise<{ text: string; mtimeMs: number } | null> {
  let fd: number;
  try {
    fd = await openFd(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  try {
    const stat = await fstatFd(fd);
    const buffer = Buffer.allocUnsafe(stat.size);
    let filled = 0;
    while (filled < buffer.length) {
      const { bytesRead } = await readFd(fd, buffer, filled, buffer.length - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return { text: buffer.toString('utf8', 0, filled), mtimeMs: stat.mtimeMs };
  } finally {
    await closeFd(fd);
  }
}

const GC_BATCH = 64;

function userDirName(userId: string): string {
  return createHash('sha256').update(userId).digest('base64url');
}

/**
 * One file per session (Phalcon's Stream adapter), the default store: no server needed.
 *
 * - Files are named by the record key, mode 0600, in a 0700 dir; the content is the shared record
 *   JSON (`encodeRecord`). A file that does not decode is reported and treated as absent.
 * - Writes go to a temp file, are fsynced, then renamed over the old file: a reader sees the
 *   old or the new record, never a torn one.
 * - A per-session lock (in-process queue + an O_EXCL lock file, so several processes can share
 *   the directory) makes each commit one step: read, check the guard, merge only the keys the
 *   request changed, write.
 * - The file's mtime is its expiry (rounded to the millisecond when read), so `gc()` finds
 *   expired files with a `stat` and never reads a live one.
 * - A user index (`users/<hash>/<key>` marker files) serves `sessionsOf`.
 */
export class FileStore implements SessionStore {
  readonly capabilities = { listByUser: true, gc: true, nativeTtl: false } as const;
  readonly dir: string;
  readonly #fsync: boolean;
  readonly #staleLockMs: number;
  readonly #lockTimeoutMs: number;
  readonly #corrupt: CorruptLog;
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
    const onCorrupt = options.onCorrupt;
    this.#corrupt = new CorruptLog(
      onCorrupt ? (file, reason) => onCorrupt(file, new Error(reason)) : undefined,
    );
    this.#now = options.now ?? Date.now;
  }

  /** Corrupt files are reported through the manager's `warn` (unless `onCorrupt` was given). */
  setWarn(warn: (message: string) => void): void {
    this.#corrupt.attach(warn);
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
    // Keys come from the manager (base64url); anything else never reaches a path.
    checkStorageKey('FileStore', key);
    return join(this.dir, `${key}.json`);
  }

  async #read(key: string): Promise<FileRecord | null> {
    const file = this.#file(key);
    const found = await readWithMtime(file);
    if (!found) return null;
    const record = decodeRecord(found.text);
    if (!record) {
      this.#corrupt.report('FileStore', file, 'not a session record');
      return null;
    }
    return { record, expiresAt: Math.round(found.mtimeMs) };
  }

  async #write(key: string, record: StoredSession, expiresAt: number): Promise<void> {
    const file = this.#file(key);
    const tmp = join(this.dir, `.tmp-${key}-${randomBytes(6).toString('hex')}`);
    const handle = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      await handle.writeFile(encodeRecord(record));
      if (this.#fsync) await handle.datasync();
    } finally {
      await handle.close();
    }
    const expiry = expiresAt / 1000;
    await fs.utimes(tmp, expiry, expiry);
    await fs.rename(tmp, file);
  }

  #marker(key: string, userId: string): string {
    return join(this.dir, 'users', userDirName(userId), key);
  }

  async #mark(key: string, userId: string): Promise<void> {
    await fs.mkdir(join(this.dir, 'users', userDirName(userId)), { recursive: true, mode: 0o700 });
    await fs.writeFile(this.#marker(key, userId), '', { mode: 0o600 });
  }

  async #unmark(key: string, userId: string): Promise<void> {
    await fs.rm(this.#marker(key, userId), { force: true });
  }

  /**
   * Writes a record under the lock, keeping the user index in step: the new user's marker is
   * made before the record (a crash in between leaves a stray marker, which `sessionsOf` prunes,
   * never a session missing from its user's list), the old user's marker removed after.
   */
  async #store(key: string, record: StoredSession, expiresAt: number, previousUser: string | undefined) {
    const userId = record.meta.userId;
    if (userId !== undefined && userId !== previousUser) await this.#mark(key, userId);
    await this.#write(key, record, expiresAt);
    if (previousUser !== undefined && previousUser !== userId) await this.#unmark(key, previousUser);
  }

  async #unlink(key: string, record: StoredSession | null): Promise<void> {
    await fs.rm(this.#file(key), { force: true });
    if (record?.meta.userId !== undefined) await this.#unmark(key, record.meta.userId);
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
    checkStorageKey('FileStore', key);
    await this.#init();
    const found = await this.#read(key);
    if (!found) return null;
    if (found.expiresAt <= this.#now()) {
      await this.#locked(key, async () => {
        const again = await this.#read(key);
        if (again && again.expiresAt <= this.#now()) await this.#unlink(key, again.record);
      });
      return null;
    }
    return found.record;
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    checkStorageKey('FileStore', key);
    return this.#locked(key, async () => {
      const existing = await this.#read(key);
      if (existing && existing.expiresAt > this.#now()) return false;
      if (!isLiveTtl(ttlMs)) return true;
      await this.#store(key, record, this.#now() + ttlMs, existing?.record.meta.userId);
      return true;
    });
  }

  /** Guard check, merge and write happen under the session's lock, on the record read under it. */
  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    checkStorageKey('FileStore', key);
    return this.#locked(key, async () => {
      const existing = await this.#read(key);
      if (!existing) return 'gone';
      if (existing.expiresAt <= this.#now()) {
        await this.#unlink(key, existing.record);
        return 'gone';
      }
      if (!guardHolds(existing.record.meta, guard)) return 'conflict';
      if (!isLiveTtl(ttlMs)) {
        await this.#unlink(key, existing.record);
        return 'gone';
      }
      const previousUser = existing.record.meta.userId;
      const merged = applyDelta(existing.record, delta);
      await this.#store(key, merged, this.#now() + ttlMs, previousUser);
      return 'ok';
    });
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'> {
    return (await this.commit(key, { set: {}, unset: [], meta }, ttlMs)) === 'ok' ? 'ok' : 'gone';
  }

  async destroy(key: string): Promise<void> {
    checkStorageKey('FileStore', key);
    await this.#locked(key, async () => {
      await this.#unlink(key, (await this.#read(key))?.record ?? null);
    });
  }

  async sessionsOf(userId: string): Promise<SessionSummary[]> {
    await this.#init();
    const names = await fs.readdir(join(this.dir, 'users', userDirName(userId))).catch(() => [] as string[]);
    const out: SessionSummary[] = [];
    for (const key of names) {
      if (!isStorageKey(key)) continue;
      const record = await this.load(key);
      if (record && record.meta.userId === userId) {
        out.push({ key, meta: record.meta });
        continue;
      }
      // A stray marker (the user changed, the session ended, or a crash): pruned under the lock,
      // so a commit that is moving the session to this user right now is not undone.
      await this.#locked(key, async () => {
        const again = await this.#read(key);
        if (!again || again.expiresAt <= this.#now() || again.record.meta.userId !== userId)
          await this.#unmark(key, userId);
      });
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
        if (!stat || Math.round(stat.mtimeMs) > now) continue;
        const key = name.slice(0, -5);
        if (!isStorageKey(key)) continue;
        const gone = await this.#locked(key, async () => {
          const found = await this.#read(key);
          if (found && found.expiresAt > now) return false;
          // A corrupt file counts as absent: it is removed with the expired ones.
          await this.#unlink(key, found?.record ?? null);
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
