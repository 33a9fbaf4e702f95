import { createHash, randomBytes } from 'node:crypto';
import {
  close,
  constants,
  existsSync,
  promises as fs,
  fstat,
  lstatSync,
  mkdirSync,
  open,
  read,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  type Stats,
  statSync,
  writeFileSync,
} from 'node:fs';
import { hostname, userInfo } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
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
  /**
   * Directory for session files. A missing directory is created with mode 0700; an existing one
   * must be owned by this process's user, not writable by other users, and either empty or a
   * directory this store created (it holds the `.sessionflow-store` marker).
   * @default {@link defaultSessionDir}: `$XDG_STATE_HOME/sessionflow` or
   * `~/.local/state/sessionflow`, verified when the store is constructed (owned by this user,
   * mode 0700, not a symbolic link, no parent writable by another user).
   */
  dir?: string;
  /** Create the directory if it is missing. `false` refuses a missing directory (read-only tools). @default true */
  create?: boolean;
  /** fsync each file before it replaces the old one (survives power loss). @default true */
  fsync?: boolean;
  /**
   * A lock whose owner cannot be checked directly (a process in another PID namespace or on
   * another host, a lock file with no owner record) is broken once its owner has given no sign
   * of life for this long. A lock whose owner runs on this machine in this PID namespace is
   * recovered as soon as the owner is gone, whatever this says. @default 10000
   */
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

/** A session file as read: the record (null if it does not decode), and its expiry (the mtime). */
interface FileRecord {
  record: StoredSession | null;
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

async function readWithStat(file: string, limit = Number.POSITIVE_INFINITY) {
  let fd: number;
  try {
    fd = await openFd(file, 'r');
  } catch (err) {
    if (errno(err) === 'ENOENT') return null;
    throw err;
  }
  try {
    const stat = await fstatFd(fd);
    const buffer = Buffer.allocUnsafe(Math.min(stat.size, limit));
    let filled = 0;
    while (filled < buffer.length) {
      const { bytesRead } = await readFd(fd, buffer, filled, buffer.length - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return { text: buffer.toString('utf8', 0, filled), stat };
  } finally {
    await closeFd(fd);
  }
}

const errno = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | null)?.code;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const GC_BATCH = 64;
/** Sessions gc handles at once (the default libuv thread pool has 4 threads). */
const GC_PARALLEL = 4;

/** For long loops: yields to the event loop every GC_BATCH steps or 5 ms, whichever comes first. */
function pacer(): () => Promise<void> {
  let steps = 0;
  let since = performance.now();
  return async () => {
    if (++steps % GC_BATCH !== 0 && performance.now() - since < 5) return;
    await new Promise((r) => setImmediate(r));
    since = performance.now();
  };
}

function userDirName(userId: string): string {
  return createHash('sha256').update(userId).digest('base64url');
}

// ---------------------------------------------------------------------------------------------
// The directory's naming scheme: the only names this store writes, and the only ones gc removes.

/** The file that marks a directory as a FileStore's own. */
const MARKER = '.sessionflow-store';
const MARKER_TEXT =
  'This directory is a sessionflow FileStore: it creates, rewrites and garbage-collects the\n' +
  'session files here. Keep other files elsewhere.\n';
const KEY = '[A-Za-z0-9_-]{16,128}';
const HEX16 = '[0-9a-f]{16}';
const OWNER_ID = new RegExp(`^${HEX16}$`);
/** At most this many break guards are stacked on one lock (each needs a waiter that died breaking). */
const MAX_GUARDS = 3;
const NAMES = {
  session: new RegExp(`^${KEY}\\.json$`),
  // `.tmp-<key>-<owner id>-<random>`; `.tmp-<key>-<random>` from versions before owner ids.
  temp: new RegExp(`^\\.tmp-${KEY}-(?:(${HEX16})-[0-9a-f]{8}|[0-9a-f]{12})$`),
  lock: new RegExp(`^${KEY}\\.json\\.lock(\\.${HEX16}){0,${MAX_GUARDS}}$`),
};
/** Subdirectories: the user index, the expiry index, the lock owners' files. */
const SUBDIRS = ['users', 'expiry', 'owners'] as const;
/** In `expiry/`: present once every session file has its expiry marker (see `gc`). */
const INDEXED = '.indexed';
/** Width of an expiry bucket: `expiry/<start>/` lists the sessions that expire in [start, start + this). */
const BUCKET_MS = 300_000;
const bucketOf = (expiresAt: number) => Math.floor(expiresAt / BUCKET_MS) * BUCKET_MS;

type NameKind = keyof typeof NAMES | 'marker' | 'subdir';

/** What a name in the store's directory is, if it is one of the store's own; null otherwise. */
function ownName(name: string): NameKind | null {
  if (name === MARKER) return 'marker';
  if ((SUBDIRS as readonly string[]).includes(name)) return 'subdir';
  for (const kind of Object.keys(NAMES) as (keyof typeof NAMES)[]) if (NAMES[kind].test(name)) return kind;
  return null;
}

// ---------------------------------------------------------------------------------------------
// The directory: a safe default, and checks on whatever directory the store is given.

/**
 * The directory a `FileStore` uses when it is given none, and the one the admin command reads:
 * `$XDG_STATE_HOME/sessionflow` (if that is an absolute path), else `~/.local/state/sessionflow`.
 * It lies under the user's home directory, so another local user can neither guess it into
 * existence first nor write into it, and it survives restarts (unlike a directory under the
 * system's temp directory). Pure: it computes the path and creates nothing. Throws
 * `INVALID_OPTION` when there is no usable home directory.
 */
export function defaultSessionDir(env: NodeJS.ProcessEnv = process.env): string {
  const state = env.XDG_STATE_HOME;
  if (state && isAbsolute(state)) return join(state, 'sessionflow');
  let home = env.HOME;
  if (home === undefined) {
    try {
      home = userInfo().homedir;
    } catch {
      home = '';
    }
  }
  if (!home || !isAbsolute(home)) {
    throw new SessionError(
      'INVALID_OPTION',
      `FileStore: no usable home directory for the default session directory (HOME is ${JSON.stringify(home ?? '')}). ` +
        'Set XDG_STATE_HOME or HOME, or pass a directory: new FileStore({ dir }).',
    );
  }
  return join(home, '.local', 'state', 'sessionflow');
}

const octal = (mode: number) => `0${(mode & 0o7777).toString(8)}`;

function refuse(dir: string, problem: string, advice: string): never {
  throw new SessionError(
    'INVALID_OPTION',
    `FileStore: refusing the session directory ${dir}: ${problem}. ${advice}`,
  );
}

/**
 * Checks the default directory's parents, like ssh does a home directory: each must belong to
 * this user or root and must not be writable by anyone else (unless sticky, like /tmp), or
 * another user could swap the directory for one of their own.
 */
function checkParents(dir: string, uid: number): void {
  let path: string;
  try {
    path = realpathSync(dirname(dir));
  } catch (err) {
    refuse(
      dir,
      `its parent cannot be resolved (${errno(err) ?? String(err)})`,
      'Pass new FileStore({ dir }).',
    );
  }
  for (;;) {
    const st = statSync(path);
    if (st.uid !== uid && st.uid !== 0) {
      refuse(
        dir,
        `its parent ${path} belongs to uid ${st.uid}, not to this user (uid ${uid}) or root`,
        'Pass new FileStore({ dir }) under a directory you own.',
      );
    }
    if (st.mode & 0o022 && !(st.mode & 0o1000)) {
      refuse(
        dir,
        `its parent ${path} is writable by other users (mode ${octal(st.mode)})`,
        `Run chmod go-w ${path}, or pass new FileStore({ dir }).`,
      );
    }
    const up = dirname(path);
    if (up === path) return;
    path = up;
  }
}

/**
 * Makes sure `dir` is fit to hold sessions, creating it if allowed, and marks it as this store's
 * own. `strict` (the default directory): not a symbolic link, mode exactly 0700, parents safe.
 * Otherwise: owned by this user and not writable by other users (a symbolic link is followed).
 * Both: a directory that holds files of another program, and no marker, is refused.
 */
function prepareDir(dir: string, options: { strict: boolean; create: boolean }): void {
  const uid = process.getuid?.();
  let st: Stats;
  try {
    st = options.strict ? lstatSync(dir) : statSync(dir);
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
    if (!options.create) refuse(dir, 'it does not exist', 'Create it, or allow the store to (create: true).');
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      markAsOwn(dir, true);
    } catch (made) {
      if (errno(made) !== 'EEXIST') {
        refuse(
          dir,
          `it cannot be created (${errno(made) ?? String(made)})`,
          options.strict
            ? 'Set XDG_STATE_HOME or HOME to a writable directory, or pass new FileStore({ dir }).'
            : 'Create it, owned by the user the app runs as, with mode 0700.',
        );
      }
    }
    st = options.strict ? lstatSync(dir) : statSync(dir);
  }
  if (st.isSymbolicLink()) {
    refuse(
      dir,
      'it is a symbolic link',
      'Remove the link (sessionflow creates the directory, mode 0700) or pass new FileStore({ dir }).',
    );
  }
  if (!st.isDirectory()) {
    // Not a security refusal: the path is unusable right now (a file where the directory should
    // be, a mount not there yet): an outage (503) that ends once the directory is usable again.
    throw new SessionError(
      'STORE_UNAVAILABLE',
      `FileStore: the session directory ${dir} is not a directory; sessions are unavailable until it is.`,
    );
  }
  if (uid !== undefined) {
    if (st.uid !== uid) {
      refuse(
        dir,
        `it belongs to uid ${st.uid}, not to the user this process runs as (uid ${uid}); that user could edit session files`,
        `Remove it, or chown it to uid ${uid}.`,
      );
    }
    const loose = options.strict ? st.mode & 0o077 : st.mode & 0o022;
    if (loose) {
      refuse(
        dir,
        `its mode ${octal(st.mode)} lets other users ${options.strict ? 'in' : 'write into it'}`,
        `Run chmod 700 ${dir}.`,
      );
    }
    if (options.strict) checkParents(dir, uid);
  }
  if (!existsSync(join(dir, MARKER))) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch (err) {
      refuse(
        dir,
        `it cannot be read (${errno(err) ?? String(err)})`,
        'Give the user the app runs as access to it.',
      );
    }
    // An empty directory, or one holding only names of this store's scheme (written by a version
    // of sessionflow from before the marker), is adopted; anything else belongs to someone else.
    const foreign = names.filter((name) => ownName(name) === null);
    if (foreign.length > 0) {
      const shown = foreign
        .slice(0, 3)
        .map((n) => JSON.stringify(n))
        .join(', ');
      refuse(
        dir,
        `it is not empty and was not created by sessionflow (it holds ${shown}${foreign.length > 3 ? `, and ${foreign.length - 3} more` : ''}), and a FileStore never writes into or garbage-collects another program's directory`,
        'Pass a new or empty directory.',
      );
    }
    // Session files from before the expiry index: the first gc indexes them (a full scan).
    markAsOwn(dir, !names.some((name) => ownName(name) === 'session'));
  }
  for (const sub of SUBDIRS) {
    try {
      mkdirSync(join(dir, sub), { mode: 0o700 });
    } catch (err) {
      if (errno(err) !== 'EEXIST') throw err;
    }
  }
}

/** Writes the marker; `indexed`: no session file lacks its expiry marker (a new or empty directory). */
function markAsOwn(dir: string, indexed: boolean): void {
  if (indexed) {
    mkdirSync(join(dir, 'expiry'), { recursive: true, mode: 0o700 });
    writeFileSync(join(dir, 'expiry', INDEXED), '', { mode: 0o600, flag: 'w' });
  }
  try {
    writeFileSync(join(dir, MARKER), MARKER_TEXT, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if (errno(err) !== 'EEXIST') throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Lock owners: who holds a lock, and whether that process still exists.

/** Where a process runs: pids are comparable only between processes of one scope. */
interface ProcessIdentity {
  /** Host name, boot id (Linux) and PID namespace (Linux): pids mean the same thing only within one. */
  scope: string;
  pid: number;
  /** Start time in clock ticks since boot (Linux `/proc/<pid>/stat` field 22): with the pid, one process for good. */
  start: string;
}

interface LockOwner extends ProcessIdentity {
  /** Random id of the owning store instance (names its owner file and the locks' break guards). */
  id: string;
}

function readProc(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Field 22 (start time) of a /proc/<pid>/stat text: after the command name, which may hold spaces. */
function startOf(stat: string): string {
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
}

let self: ProcessIdentity | undefined;

function selfIdentity(): ProcessIdentity {
  if (!self) {
    let ns = '';
    try {
      ns = readlinkSync('/proc/self/ns/pid');
    } catch {}
    self = {
      scope: `${hostname()}|${readProc('/proc/sys/kernel/random/boot_id')}|${ns}`,
      pid: process.pid,
      start: startOf(readProc(`/proc/${process.pid}/stat`)),
    };
  }
  return self;
}

function parseOwner(text: string): LockOwner | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return null;
  }
  const o = parsed as Partial<LockOwner> | null;
  if (
    o === null ||
    typeof o !== 'object' ||
    typeof o.scope !== 'string' ||
    typeof o.start !== 'string' ||
    typeof o.id !== 'string' ||
    !OWNER_ID.test(o.id) ||
    // A pid of 0 or below would name a process group for process.kill: never accepted.
    typeof o.pid !== 'number' ||
    (o.pid | 0) !== o.pid ||
    o.pid <= 0
  ) {
    return null;
  }
  return o as LockOwner;
}

/**
 * 'dead' when the owner is certainly gone: same host, boot and PID namespace, and no process
 * with its pid and start time. 'alive' when it certainly runs. 'unknown' when this process
 * cannot tell (another namespace or host, no /proc): then the lock's age decides.
 */
async function liveness(owner: LockOwner): Promise<'alive' | 'dead' | 'unknown'> {
  const me = selfIdentity();
  if (owner.scope !== me.scope) return 'unknown';
  if (owner.pid === me.pid) return owner.start === me.start ? 'alive' : 'dead';
  try {
    process.kill(owner.pid, 0);
  } catch (err) {
    if (errno(err) === 'ESRCH') return 'dead';
    if (errno(err) !== 'EPERM') return 'unknown';
  }
  // The pid exists: is it still the owner, or a new process that was given the same pid?
  if (!me.start || !owner.start) return 'unknown';
  let stat: string;
  try {
    stat = await fs.readFile(`/proc/${owner.pid}/stat`, 'utf8');
  } catch (err) {
    return errno(err) === 'ENOENT' ? 'dead' : 'unknown';
  }
  return startOf(stat) === owner.start ? 'alive' : 'dead';
}

/** A lock file as seen at one instant. `tag` names this very lock (its owner's id, else its content). */
interface LockView {
  tag: string;
  dead: boolean;
}

/**
 * One file per session (Phalcon's Stream adapter), the default store: no server needed.
 *
 * - Files are named by the record key, mode 0600, in a directory owned by the app's user and
 *   marked as the store's own (`.sessionflow-store`); the content is the shared record JSON
 *   (`encodeRecord`). A file that does not decode is reported and treated as absent.
 * - Writes go to a temp file, are fsynced, then renamed over the old file: a reader sees the
 *   old or the new record, never a torn one. A write that fails removes its temp file.
 * - A per-session lock (in-process queue + a lock file, so several processes can share the
 *   directory) makes each commit one step: read, check the guard, merge only the keys the
 *   request changed, write. The lock file is a hard link to the owner's record (pid, start time,
 *   boot and PID namespace), made with one `link(2)`, which is atomic and fails if the lock is
 *   held; a waiter that finds the owner dead takes the lock over at once (see `#acquire`).
 * - The file's mtime is its expiry (rounded to the millisecond when read). An expiry index
 *   (`expiry/<bucket start>/<key>` marker files, 5-minute buckets) lets `gc()` find the
 *   sessions that ended without looking at the live ones. gc removes only names of the store's
 *   own scheme and never touches the directory's mode.
 * - A user index (`users/<hash>/<key>` marker files) serves `sessionsOf`.
 */
export class FileStore implements SessionStore {
  readonly capabilities = { listByUser: true, gc: true, nativeTtl: false } as const;
  readonly dir: string;
  readonly #create: boolean;
  readonly #fsync: boolean;
  readonly #staleLockMs: number;
  readonly #lockTimeoutMs: number;
  readonly #corrupt: CorruptLog;
  readonly #now: () => number;
  readonly #queues = new Map<string, Promise<void>>();
  /** Expiry buckets known to exist (saves a mkdir per write). */
  readonly #buckets = new Set<number>();
  readonly #ownerId = randomBytes(8).toString('hex');
  readonly #ownerFile: string;
  #ownerReady: Promise<void> | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #ready: Promise<void> | undefined;

  constructor(options: FileStoreOptions = {}) {
    const given = options.dir;
    if (given !== undefined && (typeof given !== 'string' || given === '')) {
      throw new SessionError(
        'INVALID_OPTION',
        'FileStore: `dir` must be a non-empty path (or left out for the default).',
      );
    }
    this.#create = options.create ?? true;
    if (given === undefined) {
      // The default directory is checked now, so that an unsafe one stops the app at start.
      this.dir = defaultSessionDir();
      prepareDir(this.dir, { strict: true, create: this.#create });
      this.#ready = Promise.resolve();
    } else {
      this.dir = given;
    }
    this.#ownerFile = join(this.dir, 'owners', this.#ownerId);
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
    this.#ready ??= (async () => prepareDir(this.dir, { strict: false, create: this.#create }))().catch(
      (err: unknown) => {
        // A directory that is not usable yet (mount not ready, wrong permissions, files to move
        // out) may be fixed while the process runs: try again on the next request.
        this.#ready = undefined;
        throw err;
      },
    );
    return this.#ready;
  }

  #file(key: string): string {
    // Keys come from the manager (base64url); anything else never reaches a path.
    checkStorageKey('FileStore', key);
    return join(this.dir, `${key}.json`);
  }

  /** The file as it is: null if absent, `record: null` if it does not decode (nothing reported). */
  async #inspect(key: string): Promise<FileRecord | null> {
    const found = await readWithStat(this.#file(key));
    if (!found) return null;
    return { record: decodeRecord(found.text), expiresAt: Math.round(found.stat.mtimeMs) };
  }

  async #read(key: string): Promise<{ record: StoredSession; expiresAt: number } | null> {
    const found = await this.#inspect(key);
    if (!found) return null;
    if (!found.record) {
      this.#corrupt.report('FileStore', this.#file(key), 'not a session record');
      return null;
    }
    return { record: found.record, expiresAt: found.expiresAt };
  }

  async #write(key: string, record: StoredSession, expiresAt: number): Promise<void> {
    const file = this.#file(key);
    const tmp = join(this.dir, `.tmp-${key}-${this.#ownerId}-${randomBytes(4).toString('hex')}`);
    const handle = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      try {
        await handle.writeFile(encodeRecord(record));
        if (this.#fsync) await handle.datasync();
      } finally {
        await handle.close();
      }
      const expiry = expiresAt / 1000;
      await fs.utimes(tmp, expiry, expiry);
      await fs.rename(tmp, file);
    } catch (err) {
      // Disk full, quota, I/O error: the half-written temp file goes at once, not at the next gc.
      await fs.rm(tmp, { force: true }).catch(() => {});
      throw err;
    }
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
   * Files `key` in the expiry index: an empty `expiry/<bucket start>/<key>`, made before the
   * session file gets that expiry. Index markers are never removed on the write path, only by gc
   * under the session's lock, so a session file always has a marker in the bucket of its expiry.
   */
  async #index(key: string, expiresAt: number): Promise<void> {
    const bucket = bucketOf(expiresAt);
    const dir = join(this.dir, 'expiry', String(bucket));
    for (let attempt = 0; ; attempt++) {
      if (!this.#buckets.has(bucket)) {
        await fs.mkdir(dir, { recursive: true, mode: 0o700 });
        if (this.#buckets.size > 1000) this.#buckets.clear();
        this.#buckets.add(bucket);
      }
      try {
        await fs.writeFile(join(dir, key), '', { mode: 0o600 });
        return;
      } catch (err) {
        // The bucket was emptied and removed by a gc meanwhile: make it again, once.
        this.#buckets.delete(bucket);
        if (errno(err) !== 'ENOENT' || attempt > 0) throw err;
      }
    }
  }

  /**
   * Writes a record under the lock, keeping the indexes in step: the expiry marker (if the
   * expiry moves to another bucket) and the new user's marker are made before the record (a
   * crash in between leaves a stray marker, which gc or `sessionsOf` prunes, never a session
   * missing from an index), the old user's marker removed after. `previous`: the file there now.
   */
  async #store(
    key: string,
    record: StoredSession,
    expiresAt: number,
    previous: { userId: string | undefined; expiresAt: number } | null,
  ) {
    if (!previous || bucketOf(previous.expiresAt) !== bucketOf(expiresAt)) await this.#index(key, expiresAt);
    const previousUser = previous?.userId;
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
        // Only this process can remove its lock while it lives (a waiter takes over a lock only
        // from a dead owner), so removing by name removes this lock and no other.
        await fs.rm(lock, { force: true });
      }
    } finally {
      release();
      if (this.#queues.get(key) === tail) this.#queues.delete(key);
    }
  }

  // ------------------------------------------------------------------------------------------
  // The lock file.
  //
  // Each store instance writes its owner record once, to `owners/<id>`, and takes a lock by
  // hard-linking that file to `<key>.json.lock`: one link(2), atomic, failing with EEXIST if the
  // lock is held, and the lock's content (its owner) is complete from its first instant. While
  // the store holds locks it touches its owner file every staleLockMs/4, which (the links share
  // one inode) keeps the mtime of every lock it holds recent: a sign of life for waiters that
  // cannot check its process directly.
  //
  // A waiter that finds the lock held reads the owner. If the owner is dead (see `liveness`),
  // the waiter takes the lock over at once; without a way to check, when it has given no sign
  // of life for staleLockMs. Taking over is race-free even with many waiters: the waiter first
  // takes a break guard `<lock>.<tag>` (`tag` names the dead lock: its owner's id), then, holding
  // the guard, reads the lock again and removes it only if it is still that same dead lock. Two
  // waiters that both saw the dead lock compete for one guard; one that saw it late finds a new
  // live lock under the guard and leaves it. A guard left by a waiter that died is broken the
  // same way (a guard on the guard), at most MAX_GUARDS deep.
  // ------------------------------------------------------------------------------------------

  #ownerText(): string {
    const me = selfIdentity();
    const owner: LockOwner = { scope: me.scope, pid: me.pid, start: me.start, id: this.#ownerId };
    return `${JSON.stringify({ ...owner, host: hostname() })}\n`;
  }

  #ensureOwner(): Promise<void> {
    this.#ownerReady ??= (async () => {
      try {
        await fs.writeFile(this.#ownerFile, this.#ownerText(), { mode: 0o600, flag: 'wx' });
      } catch (err) {
        if (errno(err) !== 'EEXIST') throw err;
      }
      this.#startHeartbeat();
    })().catch((err: unknown) => {
      this.#ownerReady = undefined;
      throw err;
    });
    return this.#ownerReady;
  }

  #startHeartbeat(): void {
    if (this.#heartbeat) return;
    const every = Math.max(50, Math.floor(this.#staleLockMs / 4));
    this.#heartbeat = setInterval(() => {
      const now = new Date();
      fs.utimes(this.#ownerFile, now, now).catch((err: unknown) => {
        // Gone (the directory was removed, or a gc wrongly judged this process dead): made
        // again by the next lock; until then there is nothing to keep alive.
        if (errno(err) === 'ENOENT') this.#stopHeartbeat();
      });
    }, every);
    this.#heartbeat.unref();
  }

  #stopHeartbeat(): void {
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
    this.#ownerReady = undefined;
  }

  /** Tries once to take the lock at `path`: true if taken, false if someone holds it. */
  async #tryLock(path: string, retried = false): Promise<boolean> {
    await this.#ensureOwner();
    try {
      await fs.link(this.#ownerFile, path);
      return true;
    } catch (err) {
      const code = errno(err);
      if (code === 'EEXIST') return false;
      if (code === 'ENOENT' && !retried) {
        // The owner file went away (see the heartbeat): make it again, once.
        this.#stopHeartbeat();
        return this.#tryLock(path, true);
      }
      // A file system without hard links (or too many of them): a lock file of its own, created
      // exclusively, then filled. A waiter that reads it empty waits, and breaks it only once old.
      if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'EMLINK') {
        return this.#tryLockByCreate(path);
      }
      throw err;
    }
  }

  async #tryLockByCreate(path: string): Promise<boolean> {
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    } catch (err) {
      if (errno(err) === 'EEXIST') return false;
      throw err;
    }
    try {
      await handle.writeFile(this.#ownerText());
    } catch (err) {
      await handle.close().catch(() => {});
      await fs.rm(path, { force: true });
      throw err;
    }
    await handle.close();
    return true;
  }

  /** Who holds the lock at `path` and whether it is dead; null if there is no lock. */
  async #view(path: string): Promise<LockView | null> {
    const found = await readWithStat(path, 4096);
    if (!found) return null;
    const owner = parseOwner(found.text);
    const state = owner ? await liveness(owner) : 'unknown';
    const dead =
      state === 'dead' || (state === 'unknown' && Date.now() - found.stat.mtimeMs > this.#staleLockMs);
    const tag =
      owner?.id ??
      createHash('sha256')
        .update(`${found.stat.ino}:${found.stat.mtimeMs}:${found.text}`)
        .digest('hex')
        .slice(0, 16);
    return { tag, dead };
  }

  async #acquire(lock: string): Promise<void> {
    const started = Date.now();
    for (let delay = 1; ; ) {
      if (await this.#tryLock(lock)) return;
      const held = await this.#view(lock);
      // Released meanwhile, or its dead owner's lock removed: try again at once.
      if (!held || (held.dead && (await this.#break(lock, held.tag, 0)))) continue;
      if (Date.now() - started > this.#lockTimeoutMs)
        throw new Error(`timed out waiting for session lock ${lock}`);
      await sleep(delay);
      delay = Math.min(delay * 2, 50);
    }
  }

  /**
   * Removes the lock at `path` if it is still the dead lock named `tag`. True when it made
   * progress (the lock is gone, or a dead guard was cleared), false when another live waiter is
   * breaking it right now (the caller waits).
   */
  async #break(path: string, tag: string, depth: number): Promise<boolean> {
    const guard = `${path}.${tag}`;
    if (!(await this.#tryLock(guard))) {
      if (depth + 1 >= MAX_GUARDS) return false;
      const holder = await this.#view(guard);
      if (!holder) return true;
      return holder.dead ? this.#break(guard, holder.tag, depth + 1) : false;
    }
    try {
      const again = await this.#view(path);
      if (again?.dead && again.tag === tag) await fs.rm(path, { force: true });
      return true;
    } finally {
      await fs.rm(guard, { force: true });
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
      const previous = existing && { userId: existing.record.meta.userId, expiresAt: existing.expiresAt };
      await this.#store(key, record, this.#now() + ttlMs, previous);
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
      // Read before the merge, which may reuse the record it is given.
      const previous = { userId: existing.record.meta.userId, expiresAt: existing.expiresAt };
      await this.#store(key, applyDelta(existing.record, delta), this.#now() + ttlMs, previous);
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
   * Deletes expired sessions, and what crashed processes left behind. It costs what ended, not
   * what lives: it lists only the expiry buckets that are due (`expiry/<start>/`, see `#index`)
   * and looks at the sessions filed there; a live session costs nothing unless it expires in the
   * current bucket or has moved on from a due one since (its old marker is then dropped). Only
   * when a store process has ended since the last gc (its owner file is left in `owners/`) does
   * gc list the directory, for that process's temp files and locks. A directory from before the
   * expiry index gets one full scan, which indexes it. gc removes only names of the store's own
   * scheme (a `.json` file that is not a session record is left alone), never changes the
   * directory's mode, and yields to the event loop every few milliseconds of work.
   */
  async gc(now = this.#now()): Promise<number> {
    await this.#init();
    const pace = pacer();
    const owners = await this.#owners(pace);
    const indexed = await fs.stat(join(this.dir, 'expiry', INDEXED)).then(
      () => true,
      () => false,
    );
    let removed = indexed ? await this.#gcIndexed(now, pace) : 0;
    if (!indexed || owners.dead.size > 0) removed += await this.#sweep(now, pace, owners, !indexed);
    if (!indexed) await fs.writeFile(join(this.dir, 'expiry', INDEXED), '', { mode: 0o600 });
    for (const id of owners.dead) await fs.rm(join(this.dir, 'owners', id), { force: true });
    return removed;
  }

  /** The owner files of other store instances, by whether their process is dead. */
  async #owners(pace: () => Promise<void>): Promise<{ dead: Set<string>; live: Set<string> }> {
    const dead = new Set<string>();
    const live = new Set<string>();
    for (const id of await fs.readdir(join(this.dir, 'owners')).catch(() => [] as string[])) {
      await pace();
      if (!OWNER_ID.test(id) || id === this.#ownerId) continue;
      const view = await this.#view(join(this.dir, 'owners', id));
      if (view) (view.dead ? dead : live).add(id);
    }
    return { dead, live };
  }

  async #gcIndexed(now: number, pace: () => Promise<void>): Promise<number> {
    const root = join(this.dir, 'expiry');
    const due = (await fs.readdir(root))
      .filter((name) => /^\d{1,16}$/.test(name) && Number(name) <= now)
      .map(Number)
      .sort((a, b) => a - b);
    let removed = 0;
    for (const bucket of due) {
      const dir = join(root, String(bucket));
      const keys = (await fs.readdir(dir).catch(() => [] as string[])).filter(isStorageKey);
      // A few sessions at a time (each one waits on the file system, not on the CPU).
      let next = 0;
      const worker = async () => {
        while (next < keys.length) {
          const key = keys[next++]!;
          await pace();
          if (await this.#gcFiled(key, bucket, now)) removed++;
        }
      };
      await Promise.all(Array.from({ length: GC_PARALLEL }, worker));
      if (bucket + BUCKET_MS <= now) {
        // Every session filed here has expired: the bucket is empty now, unless a write raced in.
        this.#buckets.delete(bucket);
        await fs.rmdir(dir).catch(() => {});
      }
    }
    return removed;
  }

  /** One marker of a due bucket: deletes the session if expired, drops the marker if stale. */
  async #gcFiled(key: string, bucket: number, now: number): Promise<boolean> {
    const marker = join(this.dir, 'expiry', String(bucket), key);
    // Without the lock, the common case: live, and expiring in this very bucket (kept).
    const stat = await fs.stat(this.#file(key)).catch(() => null);
    const expiresAt = stat ? Math.round(stat.mtimeMs) : 0;
    if (stat && expiresAt > now && bucketOf(expiresAt) === bucket) return false;
    return this.#locked(key, async () => {
      const found = await this.#inspect(key);
      if (found && found.expiresAt > now && bucketOf(found.expiresAt) === bucket) return false;
      const expired = found?.record && found.expiresAt <= now;
      if (expired) await this.#unlink(key, found.record);
      // Gone, expired, renewed into another bucket (filed there too), or not a session record.
      await fs.rm(marker, { force: true });
      return !!expired;
    });
  }

  /** Deletes `key` if it is an expired session record (under its lock); true if it did. */
  async #gcSession(key: string, now: number): Promise<boolean> {
    return this.#locked(key, async () => {
      const found = await this.#inspect(key);
      // Absent (removed meanwhile), renewed, or not a session record (not ours to delete).
      if (!found?.record || found.expiresAt > now) return false;
      await this.#unlink(key, found.record);
      return true;
    });
  }

  /**
   * Lists the directory for what ended processes left: their temp files (at once; others' once
   * older than staleLockMs) and dead locks. `full` (a directory from before the expiry index):
   * also deletes expired sessions and files the live ones in the index.
   */
  async #sweep(
    now: number,
    pace: () => Promise<void>,
    owners: { dead: Set<string>; live: Set<string> },
    full: boolean,
  ): Promise<number> {
    let removed = 0;
    for await (const entry of await fs.opendir(this.dir)) {
      await pace();
      if (!entry.isFile()) continue;
      const name = entry.name;
      const path = join(this.dir, name);
      const kind = ownName(name);
      if (kind === 'session' && full) {
        const stat = await fs.stat(path).catch(() => null);
        if (!stat) continue;
        const key = name.slice(0, -'.json'.length);
        const expiresAt = Math.round(stat.mtimeMs);
        if (expiresAt > now) await this.#index(key, expiresAt);
        else if (await this.#gcSession(key, now)) removed++;
      } else if (kind === 'temp') {
        const owner = NAMES.temp.exec(name)?.[1];
        if (owner && owners.dead.has(owner)) {
          await fs.rm(path, { force: true });
        } else if (!owner || (!owners.live.has(owner) && owner !== this.#ownerId)) {
          // No owner to ask: removed once old enough that no live writer still uses it.
          const stat = await fs.stat(path).catch(() => null);
          if (stat && Date.now() - stat.mtimeMs > this.#staleLockMs) await fs.rm(path, { force: true });
        }
      } else if (kind === 'lock') {
        const depth = name.split('.').length - 3;
        const held = await this.#view(path);
        if (held?.dead && depth < MAX_GUARDS) await this.#break(path, held.tag, depth);
      }
    }
    return removed;
  }

  /** Stops the heartbeat and removes this store's owner file (locks it holds keep their owner). */
  async close(): Promise<void> {
    this.#stopHeartbeat();
    // Best effort: an owner file that cannot be removed (the directory is gone or unusable) is
    // recognised as a dead process's by the next gc.
    await fs.rm(this.#ownerFile, { force: true }).catch(() => undefined);
  }
}
