import { createHash, hash as digest, randomBytes } from 'node:crypto';
import nodeFs, {
  close,
  closeSync,
  constants,
  type Dir,
  existsSync,
  type FSWatcher,
  fdatasync,
  promises as fs,
  fstat,
  fstatSync,
  fsync,
  ftruncateSync,
  futimes,
  futimesSync,
  link,
  linkSync,
  lstatSync,
  mkdirSync,
  opendir,
  openSync,
  read,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  realpathSync,
  rename,
  renameSync,
  type Stats,
  statfsSync,
  statSync,
  unlink,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { hostname, userInfo } from 'node:os';
import { dirname, isAbsolute, join, sep } from 'node:path';
import { promisify } from 'node:util';
import { SessionError } from '../errors.js';
import {
  asMeta,
  asValues,
  CorruptLog,
  checkDelta,
  checkRecord,
  checkStorageKey,
  decodeRecord,
  encodeRecord,
  freezeRecord,
  isStorageKey,
} from './kit.js';
import {
  applyDelta,
  type CommitGuard,
  type CommitResult,
  cloneRecord,
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
  /**
   * `true`: a change is durable before it is acknowledged, and survives a power cut or a kernel
   * crash: a version written in place (into the file's other slot) is fdatasynced; a new file is
   * fdatasynced before it replaces the old one (rename), and the directory fsynced after the
   * rename or removal (one directory fsync serves every change that waits for it, across
   * sessions), and the index entries a change needs (user, expiry) are fsynced before the record
   * that needs them. A logout (destroy) is durable too.
   * `false`: a process crash loses nothing that was acknowledged and never leaves a torn record
   * (every system call of a change has returned before it is acknowledged); a power cut or kernel
   * crash can lose the changes of the last seconds to minutes (the kernel's writeback), which can
   * roll a session back to an earlier version, bring back a session that was logged out, or leave
   * its file unreadable (then treated as absent: its user signs in again).
   * @default true
   */
  fsync?: boolean;
  /**
   * `'auto'`: on a local file system (ext4, XFS, Btrfs, tmpfs, … on Linux), the calls that work on
   * cached data (reads, the lock's link and unlink, a write in place and its timestamps, and a
   * write into the session's spare inode: the copy of its content, renames, link, timestamps) are
   * made synchronously, a few microseconds each, instead of through libuv's thread pool, where
   * each call costs far more in thread hand-offs than the system call itself. fsync and
   * fdatasync, the creation of a file (a new session, an index entry) and everything gc does
   * always go through the thread pool, and nothing is synchronous while gc runs. A synchronous
   * call that blocks the thread longer than 2 ms (a cold cache on a slow disk, a wait behind
   * writeback; time on the CPU or waiting for one, as when a VM's host runs other guests, is not
   * counted: the thread pool would not avoid it) is a stall; a second
   * stall within a second sends the store to the thread pool for a second, for longer (up to a
   * minute) while stalls keep coming.
   * `'async'`: every call goes through the thread pool, for storage whose stalls must never hold
   * up the event loop. A network or FUSE file system always gets `'async'`.
   * @default 'auto'
   */
  io?: 'auto' | 'async';
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
   * After a write in place (a record of up to 4 KiB), the session's lock stays with this store
   * for this long, with the record it wrote: the session's next load answers that record
   * without reading the file, and its next commit writes without taking the lock or reading
   * the file again. That is correct across processes because no store writes a session without
   * its lock. Another store instance that needs the lock (another process, or another FileStore
   * on this directory) says so in `owners/.wants/`, which every store that keeps locks watches
   * (inotify): the lock is released at once, or after the write that runs now, and that
   * session's locks are then not kept for a second. Locks are kept only where the calls are
   * synchronous (`io: 'auto'` on a local file system) and the watch runs; `close()`, and the
   * process's exit, release them. A process killed meanwhile leaves them as a crash leaves any
   * lock (see `staleLockMs`). `0` turns it off.
   * @default 50
   */
  lockLingerMs?: number;
  /**
   * Sessions whose file is kept open, so that a load can answer from the record it decoded last
   * time after one `fstat` of the open file, instead of opening, reading and parsing it. The
   * answer is never stale, whichever process wrote: every change this store makes to a session
   * (a write, a logout, gc; in any process) rewrites its file in place, links, renames over or
   * unlinks it, which changes the open file's ctime or link count, and a load that sees either
   * change reads the file again. A record is answered from without reading only once its file's
   * ctime is more than a second old (two changes within one tick of a coarse clock can share a
   * ctime); before that, a two-slot file is kept open too and read again through its descriptor
   * on each load, saving the open and close of its path; a commit of a kept two-slot file writes
   * through its descriptor too (it is opened for writing where the process may). Files are kept
   * only on a local file system with sub-second timestamps (see `io`), and never while gc runs.
   * Each kept session holds one file descriptor; the least recently loaded is closed first. `0`
   * turns it off.
   * @default 256
   */
  openFiles?: number;
  /**
   * Called when a file cannot be parsed; the session is then treated as absent.
   * @default the manager's `warn` (see `setWarn`), else console.warn
   */
  onCorrupt?: (file: string, error: Error) => void;
  /** Clock in milliseconds, for tests. @default Date.now */
  now?: () => number;
}

/**
 * A session file as read: the record (null if it does not decode) and its expiry. `current`:
 * written in the current format (checksummed, expiry inside), so its inode may be reused as the
 * session's spare (see `#write`).
 */
interface FileRecord {
  record: StoredSession | null;
  expiresAt: number;
  current: boolean;
  /** A file of two slots: the slot the record came from and its sequence number (see `#writeInPlace`). */
  slot?: Slot;
  /** Read under the lock through this file kept open (see `#inspect`), which a write in place may use. */
  via?: OpenFile;
}

/** A session file that held a record. */
type LiveFile = FileRecord & { record: StoredSession };

const errno = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | null)?.code;

/** unlink(2) that finds nothing to remove is fine. */
function removeSync(path: string): void {
  try {
    unlinkSync(path);
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
  }
}
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// The file format.
//
// A file of two slots, rewritten in place (a record of up to SLOT - 1 bytes):
//
//   slot 0, at byte 0:    {"c":"<checksum>","q":<sequence>,"x":<expiry, ms>,"meta":{…},"values":{…}}\n
//   slot 1, at byte SLOT: the same, or nothing yet (the file ends before it)
//
// Each slot holds one version of the record, ended by a newline (JSON text never holds a raw
// one). `c` is the first 22 base64url characters (132 bits) of SHA-256 over everything after `",`
// up to the newline: it tells a whole slot from one being written, or torn by a crash. The
// record is the one in the slot with the higher sequence number whose checksum matches. A write
// goes into the other slot, so the version it replaces stays whole on disk until the write is
// done (and fsynced): a crash at any point leaves the old version or the new one. Slots start on
// 4 KiB boundaries, so a write of one never touches the blocks of the other.
//
// A larger record is a file of one version, replaced by a rename:
//
//   {"c":"<checksum>","x":<expiry, ms>,"meta":{…},"values":{…}}
//
// The expiry is in the content, so a read needs no fstat; the file's mtime is set to it too, for
// gc. Files of the oldest format (`{"meta":…,"values":…}`, the expiry only in the mtime) are read
// as before, and rewritten in a current one at their next change.

const HEAD = Buffer.from('{"c":"');
const SUM_LENGTH = 22;
/** Where the checksummed part starts: after `{"c":"<checksum>",`. */
const BODY_AT = HEAD.length + SUM_LENGTH + 2;
/** The size of a slot, and where slot 1 starts. */
const SLOT = 4096;
const NEWLINE = 0x0a;
/**
 * Written over the head of a slot whose write failed: a checksum that never matches (not
 * base64url) and sequence number 0, below the other slot's, so that readers take the other slot
 * without reading again.
 */
const SPOILED = Buffer.from(`{"c":"${'!'.repeat(SUM_LENGTH)}","q":0,`);
const checksum = (body: string | Uint8Array) => digest('sha256', body, 'base64url').slice(0, SUM_LENGTH);

/** Where a record of a two-slot file lives: slot 0 or 1, and the sequence number it was written with. */
interface Slot {
  at: 0 | 1;
  seq: number;
}

/**
 * The bytes of a file for `record`: one slot with sequence number `seq` (ended by a newline) if
 * given and the record fits in a slot, else a whole file of one version.
 */
function encodeFile(record: StoredSession, expiresAt: number, seq?: number): Buffer {
  const rest = `"x":${expiresAt},${encodeRecord(record).slice(1)}`;
  if (seq !== undefined) {
    const body = `"q":${seq},${rest}`;
    const data = Buffer.from(`{"c":"${checksum(body)}",${body}\n`);
    if (data.length <= SLOT) return data;
  }
  return Buffer.from(`{"c":"${checksum(rest)}",${rest}`);
}

/** A read that came back with a checksum that does not match: read again. */
const TORN = Symbol('torn');

/** Bytes of the file: `length` of `buffer`; `mtimeMs` only for a file of the oldest format. */
interface RawFile {
  buffer: Buffer;
  length: number;
  mtimeMs: number;
}

/** `{"c":"<22 characters>",` at `at`. */
function hasHead(buffer: Buffer, at: number, length: number): boolean {
  return (
    length > at + BODY_AT &&
    buffer.compare(HEAD, 0, HEAD.length, at, at + HEAD.length) === 0 &&
    buffer[at + BODY_AT - 2] === 0x22 &&
    buffer[at + BODY_AT - 1] === 0x2c
  );
}

/** `"q":` after the head at `at`: a slot. */
function isSlotAt(buffer: Buffer, at: number, length: number): boolean {
  return (
    hasHead(buffer, at, length) &&
    buffer[at + BODY_AT] === 0x22 &&
    buffer[at + BODY_AT + 1] === 0x71 &&
    buffer[at + BODY_AT + 2] === 0x22 &&
    buffer[at + BODY_AT + 3] === 0x3a
  );
}

/**
 * 'slots' (either slot's head says so: one of them may be mid-write), 'whole' (a checksummed
 * file of one version), or 'oldest' (no checksum; the expiry in the mtime).
 */
function formatOf(buffer: Buffer, length: number): 'slots' | 'whole' | 'oldest' {
  if (isSlotAt(buffer, 0, length) || (length > SLOT && isSlotAt(buffer, SLOT, length))) return 'slots';
  return hasHead(buffer, 0, length) ? 'whole' : 'oldest';
}

/** The sequence number in the slot at `at` (its digits after `"q":`), or -1. */
function seqAt(buffer: Buffer, at: number, end: number): number {
  let seq = 0;
  let i = at + BODY_AT + 4;
  for (; i < end && i < at + BODY_AT + 20; i++) {
    const c = buffer[i]!;
    if (c === 0x2c) break;
    if (c < 0x30 || c > 0x39) return -1;
    seq = seq * 10 + (c - 0x30);
  }
  return i > at + BODY_AT + 4 && i < end && buffer[i] === 0x2c ? seq : -1;
}

/** The record in `buffer[start, end)`, its checksum already checked (or not to be). */
function parseRecord(
  buffer: Buffer,
  start: number,
  end: number,
): { record: StoredSession; expiresAt: number } | null {
  let parsed: { x?: unknown; meta?: unknown; values?: unknown };
  try {
    parsed = JSON.parse(buffer.toString('utf8', start, end));
  } catch {
    return null;
  }
  const meta = asMeta(parsed.meta);
  const values = asValues(parsed.values);
  const expiresAt = parsed.x;
  if (!meta || !values || typeof expiresAt !== 'number' || !Number.isFinite(expiresAt)) return null;
  return { record: { meta, values }, expiresAt };
}

const NOT_A_RECORD: FileRecord = { record: null, expiresAt: 0, current: false };

/**
 * The record of a two-slot file: from the slot with the higher sequence number whose checksum
 * matches. A write puts a slot's head (the checksum and the sequence number) last (see
 * `#writeInPlace`), so a slot that is not whole still shows the sequence number of the version it
 * held before. If that number is higher than the whole slot's (or unreadable), the whole slot is
 * not the latest version: the other one was complete and has been rewritten since, while this
 * read ran (two writes between the reader's copies of the two slots). The read then is TORN and
 * is made again, as is a read with no whole slot. Under the lock (`check` false) no write runs:
 * the whole slot is the record; with none, the file was edited outside the store or damaged,
 * and its newer slot (or, for an edit that dropped the newline, the whole file) is taken as it
 * parses, not `current` (the next write replaces the file).
 */
function decodeSlots(buffer: Buffer, length: number, check: boolean): FileRecord | typeof TORN {
  let best: { at: 0 | 1; seq: number; start: number; end: number } | undefined;
  let newest: { start: number; end: number; seq: number } | undefined;
  /** The highest sequence number in the head of a slot that is not whole (-1: none; NaN: unreadable). */
  let brokenSeq = -1;
  for (const at of [0, 1] as const) {
    const start = at * SLOT;
    if (!isSlotAt(buffer, start, length)) continue;
    // The buffer may be longer than the file (a shared read buffer): nothing past `limit` counts.
    const limit = Math.min(length, start + SLOT);
    const seq = seqAt(buffer, start, limit);
    const found = buffer.indexOf(NEWLINE, start + BODY_AT);
    const end = found < limit ? found : -1;
    const whole =
      seq >= 0 &&
      end >= 0 &&
      checksum(buffer.subarray(start + BODY_AT, end)) ===
        buffer.toString('latin1', start + HEAD.length, start + BODY_AT - 2);
    if (whole) {
      if (!best || seq > best.seq) best = { at, seq, start, end };
    } else {
      brokenSeq = seq < 0 ? Number.NaN : Math.max(brokenSeq, seq);
      if (seq >= 0 && end >= 0 && (!newest || seq > newest.seq)) newest = { start, end, seq };
    }
  }
  if (best && (!check || brokenSeq < best.seq)) {
    const parsed = parseRecord(buffer, best.start, best.end);
    if (!parsed) return NOT_A_RECORD;
    return { ...parsed, current: true, slot: { at: best.at, seq: best.seq } };
  }
  if (check) return TORN;
  // An edit may have dropped the newline, or made one long line: then the whole file is the record.
  const parsed = (newest && parseRecord(buffer, newest.start, newest.end)) ?? parseRecord(buffer, 0, length);
  return parsed ? { ...parsed, current: false } : NOT_A_RECORD;
}

/**
 * The record in a file's bytes. A checksum that does not match is TORN, unless `check` is false
 * (a read under the session's lock, where no write runs: the file was edited outside the store,
 * or damaged): the content is then taken as it parses, as files were before the checksum, and
 * the inode is neither reused nor written in place (`current: false`).
 */
function decodeFile({ buffer, length, mtimeMs }: RawFile, check = true): FileRecord | typeof TORN {
  const format = formatOf(buffer, length);
  if (format === 'slots') return decodeSlots(buffer, length, check);
  if (format === 'oldest') {
    return {
      record: decodeRecord(buffer.toString('utf8', 0, length)),
      expiresAt: Math.round(mtimeMs),
      current: false,
    };
  }
  const whole =
    checksum(buffer.subarray(BODY_AT, length)) === buffer.toString('latin1', HEAD.length, BODY_AT - 2);
  if (!whole && check) return TORN;
  const parsed = parseRecord(buffer, 0, length);
  return parsed ? { ...parsed, current: whole } : NOT_A_RECORD;
}

// ---------------------------------------------------------------------------------------------
// Reading a file: synchronously (into one shared buffer) or through the thread pool.

const READ_SIZE = 16_384;
let shared = Buffer.allocUnsafeSlow(READ_SIZE);

/** Fills `buffer` from `fd` to the end of the file (a short read is the end of a regular file). */
function readAllSync(fd: number): { buffer: Buffer; length: number } {
  let buffer = shared;
  let length = 0;
  for (;;) {
    const got = readSync(fd, buffer, length, buffer.length - length, length);
    length += got;
    if (got === 0 || length < buffer.length) break;
    const bigger = Buffer.allocUnsafeSlow(buffer.length * 2);
    buffer.copy(bigger, 0, 0, length);
    buffer = bigger;
  }
  if (buffer.length <= 1 << 20) shared = buffer;
  return { buffer, length };
}

/**
 * How a session file is opened for reading. Its mtime is its expiry, in the future, so under
 * Linux's default `relatime` every read would also write the inode's access time (a dirty inode,
 * a journal handle on ext4, a block to write back): O_NOATIME leaves the access time alone. The
 * kernel grants it only to the file's owner; a file of another user (EPERM) is opened without it.
 */
const READ_FLAGS = constants.O_RDONLY | (constants.O_NOATIME ?? 0);

/** The kernel refused O_NOATIME (not the file's owner): open it again without. */
function refusedNoatime(err: unknown): boolean {
  return READ_FLAGS !== constants.O_RDONLY && errno(err) === 'EPERM';
}

// Both through the module object, so that a test can refuse O_NOATIME as the kernel does.
function openReadSync(path: string): number {
  try {
    return nodeFs.openSync(path, READ_FLAGS);
  } catch (err) {
    if (!refusedNoatime(err)) throw err;
    return nodeFs.openSync(path, constants.O_RDONLY);
  }
}

/**
 * How a session file to be kept open is opened: for reading and writing, so that a write in
 * place under the lock can use the descriptor a load kept, instead of opening and closing the
 * path (two system calls of a commit's nine). A file this process may not write (another user's,
 * a read-only mount) is kept for reading only.
 */
function openKeptSync(path: string): { fd: number; writable: boolean } {
  try {
    try {
      return { fd: nodeFs.openSync(path, constants.O_RDWR | (constants.O_NOATIME ?? 0)), writable: true };
    } catch (err) {
      if (!refusedNoatime(err)) throw err;
      return { fd: nodeFs.openSync(path, constants.O_RDWR), writable: true };
    }
  } catch (err) {
    const code = errno(err);
    if (code !== 'EACCES' && code !== 'EROFS' && code !== 'EPERM') throw err;
    return { fd: openReadSync(path), writable: false };
  }
}

/**
 * A session file kept open by `FileStore.load` (see `openFiles`): its decoded record, valid as
 * long as an fstat of `fd` shows the same inode state (`sameFile`) if `settled`. A two-slot file
 * (`slots`) is also kept before it has settled: a load then reads it again through `fd`, which
 * saves the open and close of its path (see `#rereadKept`).
 */
interface OpenFile {
  fd: number;
  stat: nodeFs.BigIntStats;
  record: Readonly<StoredSession>;
  expiresAt: number;
  settled: boolean;
  slots: boolean;
  /** Opened for writing too (see `openKeptSync`). */
  writable: boolean;
  /**
   * Writes in place using `fd` now. A file forgotten (no longer in the store's map) while pinned
   * is closed when the last of them ends, not before (see `#forget`).
   */
  pins: number;
}

/** The ctime of `stat` is more than SETTLED_NS old, by the kernel's clock (not the store's `now`). */
const settledAt = (stat: nodeFs.BigIntStats) => BigInt(Date.now()) * 1_000_000n - stat.ctimeNs > SETTLED_NS;

/** How old (ns) a file's ctime must be before the file is kept open: see `openFiles`. */
const SETTLED_NS = 1_000_000_000n;

function sameFile(a: nodeFs.BigIntStats, b: nodeFs.BigIntStats): boolean {
  return (
    a.ctimeNs === b.ctimeNs &&
    a.ino === b.ino &&
    a.dev === b.dev &&
    a.nlink === b.nlink &&
    a.size === b.size &&
    a.mtimeNs === b.mtimeNs
  );
}

/** The file system under `dir` keeps timestamps finer than a second (its ctime has a fraction). */
function fineTimes(dir: string): boolean {
  try {
    return statSync(dir, { bigint: true }).ctimeNs % 1_000_000_000n !== 0n;
  } catch {
    return false;
  }
}

/** The file's bytes, read synchronously (open, read, close; fstat only for the previous format). */
function readRawSync(path: string): RawFile | null {
  let fd: number;
  try {
    fd = openReadSync(path);
  } catch (err) {
    if (errno(err) === 'ENOENT') return null;
    throw err;
  }
  try {
    const { buffer, length } = readAllSync(fd);
    const mtimeMs = formatOf(buffer, length) === 'oldest' ? fstatSync(fd).mtimeMs : 0;
    return { buffer, length, mtimeMs };
  } finally {
    closeSync(fd);
  }
}

// The callback fs functions, promisified, cost about half of what fs.promises costs (measured
// in bench/README.md): a read is open, read, close (plus an fstat for a file of the previous
// format), one descriptor, so the content and the mtime are of the same file even if a writer
// renames a new version over it meanwhile.
// Through the module object, so that a test can refuse O_NOATIME as the kernel does.
const openFd = (path: string, flags: number) =>
  new Promise<number>((resolve, reject) =>
    nodeFs.open(path, flags, (err, fd) => (err ? reject(err) : resolve(fd))),
  );
const fstatFd = promisify(fstat);
const readFd = promisify(read);
const closeFd = promisify(close);
const fsyncFd = promisify(fsync);
const fdatasyncFd = promisify(fdatasync);
const linkAsync = promisify(link);
const unlinkAsync = promisify(unlink);
const renameAsync = promisify(rename);
const futimesFd = promisify(futimes);
/** fdatasync through the module object, so that a test can make it fail as a failing disk does. */
const datasyncFd = (fd: number) =>
  new Promise<void>((resolve, reject) => nodeFs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));

/** Writes all of `data` at `position` (a write to a regular file is short only when it fails). */
function writeAllSync(fd: number, data: Buffer, position: number): void {
  // Through the module object, so that a test can make it fail like a full disk.
  for (let at = 0; at < data.length; ) at += nodeFs.writeSync(fd, data, at, data.length - at, position + at);
}

async function writeAll(fd: number, data: Buffer, position: number): Promise<void> {
  for (let at = 0; at < data.length; ) {
    const written = await new Promise<number>((resolve, reject) =>
      nodeFs.write(fd, data, at, data.length - at, position + at, (err, n) =>
        err ? reject(err) : resolve(n),
      ),
    );
    at += written;
  }
}
const opendirAsync = promisify(opendir);

async function openRead(path: string): Promise<number> {
  try {
    return await openFd(path, READ_FLAGS);
  } catch (err) {
    if (!refusedNoatime(err)) throw err;
    return await openFd(path, constants.O_RDONLY);
  }
}

async function readRaw(path: string): Promise<RawFile | null> {
  let fd: number;
  try {
    fd = await openRead(path);
  } catch (err) {
    if (errno(err) === 'ENOENT') return null;
    throw err;
  }
  try {
    let buffer = Buffer.allocUnsafe(READ_SIZE);
    let length = 0;
    for (;;) {
      const { bytesRead } = await readFd(fd, buffer, length, buffer.length - length, length);
      length += bytesRead;
      if (bytesRead === 0 || length < buffer.length) break;
      const bigger = Buffer.allocUnsafe(buffer.length * 2);
      buffer.copy(bigger, 0, 0, length);
      buffer = bigger;
    }
    const mtimeMs = formatOf(buffer, length) === 'oldest' ? (await fstatFd(fd)).mtimeMs : 0;
    return { buffer, length, mtimeMs };
  } finally {
    await closeFd(fd);
  }
}

/** A small file read whole with its stat, for lock and owner files. */
async function readWithStat(file: string, limit = Number.POSITIVE_INFINITY) {
  let fd: number;
  try {
    fd = await openFd(file, constants.O_RDONLY);
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

/** fsync of a directory, so that the names made or removed in it survive a power cut. */
async function syncDirectory(dir: string): Promise<void> {
  const fd = await openFd(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fsyncFd(fd);
  } finally {
    await closeFd(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// Synchronous or through the thread pool.

/** A synchronous step that kept the thread longer than this is slow (see IoMode). */
const SLOW_SYNC_MS = 2;
/** A slow step pauses the synchronous mode if another came less than this long before it. */
const SLOW_AGAIN_MS = 1_000;
/** How long a pause of the synchronous mode lasts at first; it doubles while slow calls keep coming. */
const SYNC_PAUSE_MS = 1_000;
/** The longest pause. */
const SYNC_PAUSE_MAX_MS = 60_000;
/** The thread's run-queue wait is sampled at most this often (see IoMode). */
const SAMPLE_MS = 5;

/** What the scheduler says of the calling thread so far, in ms (see `threadTimes`). */
interface ThreadTimes {
  /** Time on a CPU (as the kernel sees it: on a VM whose host gives no steal clock, stolen time counts here). */
  cpu: number;
  /** Time runnable but not running (the run-queue wait). */
  wait: number;
  /** How many times the thread went to sleep (voluntary context switches); undefined where unknown. */
  sleeps: number | undefined;
  /** Time the event loop waited for events (`performance.eventLoopUtilization().idle`). */
  idle: number;
}

/**
 * The calling thread's CPU time and run-queue wait so far (Linux `/proc/thread-self/schedstat`,
 * first and second fields), its voluntary context switches (`/proc/thread-self/status`) and its
 * event loop's idle time; undefined where the first two cannot be read. The files are opened
 * once per thread (module state is per thread) and kept open.
 */
let schedstat: number | undefined;
let status: number | undefined;
const schedBuffer = Buffer.alloc(96);
const statusBuffer = Buffer.alloc(4096);
const SLEEPS = '\nvoluntary_ctxt_switches:';
function openProc(path: string): number {
  try {
    return openSync(path, 'r');
  } catch {
    return -1;
  }
}
function threadTimes(): ThreadTimes | undefined {
  schedstat ??= openProc('/proc/thread-self/schedstat');
  if (schedstat < 0) return undefined;
  try {
    const n = readSync(schedstat, schedBuffer, 0, schedBuffer.length, 0);
    const fields = schedBuffer.toString('latin1', 0, n).split(' ');
    const cpu = Number(fields[0]);
    const wait = Number(fields[1]);
    if (!Number.isFinite(cpu) || !Number.isFinite(wait)) return undefined;
    return {
      cpu: cpu / 1e6,
      wait: wait / 1e6,
      sleeps: threadSleeps(),
      idle: performance.eventLoopUtilization().idle,
    };
  } catch {
    return undefined;
  }
}
function threadSleeps(): number | undefined {
  status ??= openProc('/proc/thread-self/status');
  if (status < 0) return undefined;
  try {
    const n = readSync(status, statusBuffer, 0, statusBuffer.length, 0);
    const text = statusBuffer.toString('latin1', 0, n);
    const at = text.indexOf(SLEEPS);
    if (at < 0) return undefined;
    const sleeps = Number.parseInt(text.slice(at + SLEEPS.length), 10);
    return Number.isFinite(sleeps) ? sleeps : undefined;
  } catch {
    return undefined;
  }
}

/**
 * File systems on which a file operation on cached data is a matter of microseconds (statfs
 * f_type): ext2/3/4, XFS, Btrfs, tmpfs, F2FS, ZFS, bcachefs, overlayfs, JFS, ReiserFS.
 */
const LOCAL_FS = new Set([
  0xef53, 0x58465342, 0x9123683e, 0x01021994, 0xf2f52010, 0x2fc12fc1, 0xca451a4e, 0x794c7630, 0x3153464a,
  0x52654973,
]);

function isLocalFileSystem(dir: string): boolean {
  if (process.platform !== 'linux') return false;
  try {
    return LOCAL_FS.has(Number(statfsSync(dir).type));
  } catch {
    return false;
  }
}

/**
 * An upper bound of the time a step (from `started` to `ended`) was blocked, from the thread's
 * times sampled at `since` (at most SAMPLE_MS before the step began) and at its end. A thread that
 * did not go to sleep was not blocked: what the scheduler counts as neither its CPU time nor its
 * run-queue wait (1-2.5 ms of a 5 ms spin on a loaded 2-vCPU VM, with no sleep) is not a stall.
 * Otherwise the smaller of two bounds: the step's length less the run-queue wait since the sample,
 * and the time since the sample that was neither CPU time, run-queue wait nor the event loop
 * waiting for events (before the step).
 */
function blocked(
  before: ThreadTimes,
  since: number,
  started: number,
  after: ThreadTimes,
  ended: number,
): number {
  if (before.sleeps !== undefined && before.sleeps === after.sleeps) return 0;
  const wait = after.wait - before.wait;
  return Math.min(
    ended - started - wait,
    ended - since - (after.cpu - before.cpu) - wait - (after.idle - before.idle),
  );
}

/**
 * Decides, call by call, whether a cheap file operation runs synchronously. A synchronous step
 * costs the system call (a few µs on cached data); the same call through the thread pool costs
 * two thread hand-offs on top (10 to 40 µs of CPU on a 2-core machine, measured in
 * bench/file-store.ts). A step that holds the thread longer than SLOW_SYNC_MS (a read from a
 * slow disk, a wait behind writeback or a directory lock) is slow. The second slow step within
 * SLOW_AGAIN_MS pauses the synchronous mode: for SYNC_PAUSE_MS, doubled (up to
 * SYNC_PAUSE_MAX_MS) each time a slow step comes soon after the last pause ended (within ten
 * pauses' length; then one is enough). So a slow disk is kept off the event loop after two
 * stalls, and a lone stall (a page fault waiting for the garbage collector's threads, the host
 * running another guest: on a shared 2-vCPU VM one every few seconds) costs nothing more: each
 * such pause used to cost a second of thread-pool calls, three times the CPU of a synchronous
 * load. Only the time the thread was blocked counts (off the CPU and not waiting for one): the
 * time the scheduler gave the CPU to other processes (the thread's run-queue wait) and the time
 * the thread was on the CPU are not. The synchronous calls touch files of a few KB, so one that
 * stays on the CPU for milliseconds has had its CPU taken: on a VM by the host's other guests,
 * which take it from whichever thread runs (stolen time that the guest kernel, without a steal
 * clock, counts as the thread's CPU time; on a 2-vCPU VM it held cached reads for 2-6 ms several
 * times a second in bench/file-store.ts). The thread pool would have avoided neither. A thread
 * that never went to sleep during the step was not blocked, whatever part of its time the
 * scheduler counted as neither (see `blocked`). The times are sampled at most every SAMPLE_MS,
 * so the blocked time is bounded over the interval from the sample to the end of the step (less
 * the event loop's wait for events in it) and by the step's length less its run-queue wait.
 * Where they cannot be read, every slow step counts.
 */
class IoMode {
  #allowed = false;
  #pausedUntil = 0;
  #pauseMs = SYNC_PAUSE_MS;
  #resumedAt = Number.NEGATIVE_INFINITY;
  /** When the last slow step ended. */
  #slowAt = Number.NEGATIVE_INFINITY;
  /** While gc runs (`hold`), nothing is synchronous: see `FileStore.gc`. */
  #held = 0;
  /** The thread's times as sampled at `#sampledAt`. */
  #sampled: ThreadTimes | undefined;
  #sampledAt = Number.NEGATIVE_INFINITY;

  allow(allowed: boolean): void {
    this.#allowed = allowed;
  }

  hold(): void {
    this.#held++;
  }

  unhold(): void {
    this.#held--;
  }

  get sync(): boolean {
    if (!this.#allowed || this.#held > 0) return false;
    if (this.#pausedUntil === 0) return true;
    const now = performance.now();
    if (now < this.#pausedUntil) return false;
    this.#pausedUntil = 0;
    this.#resumedAt = now;
    return true;
  }

  /** Runs a synchronous step, timing it. */
  run<T>(step: () => T): T {
    const started = performance.now();
    if (started - this.#sampledAt > SAMPLE_MS) {
      this.#sampled = threadTimes();
      this.#sampledAt = started;
    }
    try {
      return step();
    } finally {
      const ended = performance.now();
      if (ended - started > SLOW_SYNC_MS) this.#slowStep(started, ended);
    }
  }

  #slowStep(started: number, ended: number): void {
    const before = this.#sampled;
    const since = this.#sampledAt;
    const after = threadTimes();
    this.#sampled = after;
    this.#sampledAt = ended;
    const held =
      before === undefined || after === undefined
        ? ended - started
        : blocked(before, since, started, after, ended);
    if (held <= SLOW_SYNC_MS) return;
    const again = ended - this.#resumedAt < 10 * this.#pauseMs;
    const repeated = ended - this.#slowAt < SLOW_AGAIN_MS;
    this.#slowAt = ended;
    if (!again && !repeated) return;
    this.#pauseMs = again ? Math.min(this.#pauseMs * 2, SYNC_PAUSE_MAX_MS) : SYNC_PAUSE_MS;
    this.#pausedUntil = ended + this.#pauseMs;
  }
}

// ---------------------------------------------------------------------------------------------
// gc pacing.

/** Expired sessions gc handles at once through the thread pool. */
const GC_PARALLEL = 16;
/** Directory entries gc reads from an expiry bucket at a time. */
const GC_LIST = 256;
/** gc yields to the event loop after this much work. */
const GC_SLICE_MS = 2;

/** For long loops: yields to the event loop once GC_SLICE_MS of work has gone by since the last yield. */
function pacer(): () => Promise<void> {
  let since = performance.now();
  return async () => {
    if (performance.now() - since < GC_SLICE_MS) return;
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
/**
 * Where the spare inodes are (`users/.spare/<key>`: the inode of a session's previous version,
 * reused by its next write). In a subdirectory the store already had, under a name no user index
 * can take (those are base64url), so that the top of the directory holds the names it always did.
 */
const SPARES = join('users', '.spare');
/** Where a store instance that waits for a lock another one keeps says so (see `lockLingerMs`). */
const WANTS = join('owners', '.wants');
/** After a sign that another store instance waits for a session, none of its locks is kept for this long (ms). */
const CONTENDED_MS = 1_000;
/** At the process's exit: the release of the locks each store only keeps (see `lockLingerMs`). */
const keptAtExit = new Set<() => void>();
let exitHooked = false;
function atExit(release: () => void): void {
  if (!exitHooked) {
    exitHooked = true;
    process.on('exit', () => {
      for (const each of keptAtExit) each();
    });
  }
  keptAtExit.add(release);
}
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
  for (const sub of [...SUBDIRS, SPARES, WANTS]) {
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

/** A commit waiting in its session's queue (see `#drain`: consecutive ones share one write). */
interface CommitJob {
  kind: 'commit';
  delta: SessionDelta;
  ttlMs: number;
  guard: CommitGuard | undefined;
  resolve: (result: CommitResult) => void;
  reject: (err: unknown) => void;
}

/** Any other step that needs the session's lock. */
interface RunJob {
  kind: 'run';
  fn: () => Promise<unknown>;
  /** gc: the lock is taken and released through the thread pool, whatever the io mode. */
  background: boolean;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

type Job = CommitJob | RunJob;

/** The commits at the head of a queue, in order, up to the first job that is not a commit. */
function takeCommits(queue: Job[]): CommitJob[] {
  const batch: CommitJob[] = [];
  while (queue.length > 0 && queue[0]!.kind === 'commit') batch.push(queue.shift() as CommitJob);
  return batch;
}

/** Reads tried before a record whose checksum keeps failing is reported as corrupt. */
const READ_ATTEMPTS = 3;

/**
 * One file per session (Phalcon's Stream adapter), the default store: no server needed.
 *
 * - Files are named by the record key, mode 0600, in a directory owned by the app's user and
 *   marked as the store's own (`.sessionflow-store`). A file holds two slots, each the shared
 *   record JSON with a checksum, a sequence number and the expiry in front (see "The file
 *   format" above); the file's mtime is the expiry too. A file that does not decode is reported
 *   and treated as absent.
 * - A write goes into the slot that does not hold the current version, in place, then is
 *   fdatasynced (`fsync: true`): a reader sees the old or the new record, never a torn one (see
 *   `#writeInPlace`). A new session, and a record too large for a slot, is a new file: a temp
 *   file, fsynced, then renamed over the old file; a write that fails removes its temp file.
 *   For such records, the inode of the version a write replaces is kept as the session's spare
 *   (`users/.spare/<key>`, a hard link made before the rename) and becomes the temp file of the
 *   next write, so a steady write load neither allocates nor frees inodes (on ext4 without a
 *   journal, allocating one can cost a millisecond of CPU once many were freed recently). A
 *   reader that still holds such an inode open while it is rewritten sees a checksum that does
 *   not match and reads again (after three such reads, once under the session's lock). Versions
 *   of sessionflow from before the two slots take a two-slot file for a damaged one: do not let
 *   them read a directory this one writes.
 * - A per-session lock (in-process queue + a lock file, so several processes can share the
 *   directory) makes each commit one step: read, check the guard, merge only the keys the
 *   request changed, write. Commits that queue for one session while a write is in progress are
 *   committed together (group commit): one lock, one read, each delta applied in order with its
 *   own guard checked against the record as merged so far, one write, one fsync, and each caller
 *   gets its own answer. The lock file is a hard link to the owner's record (pid, start time, boot
 *   and PID namespace), made with one `link(2)`, which is atomic and fails if the lock is held; a
 *   waiter that finds the owner dead takes the lock over at once (see `#acquire`).
 * - With `fsync: true` a change is acknowledged once it is durable: the new file is fsynced
 *   before the rename, the directory after it (one directory fsync serves every change waiting
 *   for one), and a new index entry (and a new index directory) before the record that needs it.
 * - The calls that work on cached data run synchronously on a local file system (see the `io`
 *   option), fsyncs and file creation through the thread pool; gc only through the thread pool.
 * - An expiry index (`expiry/<bucket start>/<key>` marker files, 5-minute buckets) lets `gc()`
 *   find the sessions that ended without looking at the live ones. gc removes only names of the
 *   store's own scheme and never touches the directory's mode.
 * - A user index (`users/<hash>/<key>` marker files) serves `sessionsOf`.
 * - A load of a session whose file has settled answers from the file kept open, after one fstat
 *   that shows it unchanged (see `openFiles`).
 * - After a write in place, the session's lock is kept for a moment with the record written, for
 *   the session's next load and commit, and given up as soon as another store instance asks for
 *   it (see `lockLingerMs` and `#linger`).
 */
export class FileStore implements SessionStore {
  readonly capabilities = { listByUser: true, gc: true, nativeTtl: false } as const;
  readonly dir: string;
  readonly #create: boolean;
  readonly #fsync: boolean;
  readonly #ioOption: 'auto' | 'async';
  /**
   * `dir` and the spares' directory, normalized, each with a trailing separator. The paths of a
   * session's files are these plus a name of the store's own (a base64url key), which is what
   * `path.join` would give: `join` normalizes the whole path again on every call, and it was
   * about 5,000 instructions of every request's load (callgrind, bench:instr).
   */
  readonly #base: string;
  readonly #spareBase: string;
  readonly #io = new IoMode();
  readonly #staleLockMs: number;
  readonly #lockTimeoutMs: number;
  readonly #openMax: number;
  /** Sessions kept open (see `openFiles`), least recently loaded first. */
  readonly #open = new Map<string, OpenFile>();
  /** The directory's timestamps are finer than a second (checked once by `#init`). */
  #fineTimes = false;
  readonly #corrupt: CorruptLog;
  readonly #now: () => number;
  /** Each session's waiting jobs, in order; present while its queue is being worked through. */
  readonly #jobs = new Map<string, Job[]>();
  /** Locks kept by this process after their session's last job (see `#linger`): their timers. */
  readonly #leases = new Map<string, NodeJS.Timeout>();
  /**
   * The record of a session whose lock this process holds (in a job or kept), as this process
   * last wrote it in place: the file holds it, as no other process can write without the lock.
   */
  readonly #owned = new Map<string, LiveFile>();
  readonly #lingerMs: number;
  /** Sessions another store instance waited for lately: until when none of their locks is kept. */
  readonly #contended = new Map<string, number>();
  /** The watch on `owners/.wants/` (see `#linger`): undefined until started, null if it cannot run. */
  #watcher: FSWatcher | null | undefined;
  /** Expiry buckets known to exist (saves a mkdir per write). */
  readonly #buckets = new Set<number>();
  readonly #ownerId = randomBytes(8).toString('hex');
  readonly #ownerFile: string;
  #ownerReady: Promise<void> | undefined;
  #ownerMade = false;
  #heartbeat: NodeJS.Timeout | undefined;
  #ready: Promise<void> | undefined;
  #temps = 0;
  /** Per directory: the fsync in flight, and the one queued to start when it ends (see `#syncDir`). */
  readonly #dirSyncs = new Map<string, { running?: Promise<void>; next?: Promise<void> }>();

  constructor(options: FileStoreOptions = {}) {
    const given = options.dir;
    if (given !== undefined && (typeof given !== 'string' || given === '')) {
      throw new SessionError(
        'INVALID_OPTION',
        'FileStore: `dir` must be a non-empty path (or left out for the default).',
      );
    }
    const io = options.io ?? 'auto';
    if (io !== 'auto' && io !== 'async') {
      throw new SessionError('INVALID_OPTION', "FileStore: `io` must be 'auto' or 'async'.");
    }
    this.#ioOption = io;
    this.#create = options.create ?? true;
    if (given === undefined) {
      // The default directory is checked now, so that an unsafe one stops the app at start.
      this.dir = defaultSessionDir();
      prepareDir(this.dir, { strict: true, create: this.#create });
      this.#probeDir();
      this.#ready = Promise.resolve();
    } else {
      this.dir = given;
    }
    this.#ownerFile = join(this.dir, 'owners', this.#ownerId);
    this.#base = join(this.dir, sep);
    this.#spareBase = join(this.dir, SPARES, sep);
    this.#fsync = options.fsync ?? true;
    this.#staleLockMs = options.staleLockMs ?? 10_000;
    this.#lockTimeoutMs = options.lockTimeoutMs ?? 5_000;
    const lingerMs = options.lockLingerMs ?? 50;
    // A timer cannot wait longer than 2^31 - 1 ms.
    if (typeof lingerMs !== 'number' || !(lingerMs >= 0 && lingerMs <= 2_147_483_647)) {
      throw new SessionError(
        'INVALID_OPTION',
        'FileStore: `lockLingerMs` must be a number of milliseconds >= 0.',
      );
    }
    this.#lingerMs = lingerMs;
    const openMax = options.openFiles ?? 256;
    if (!Number.isInteger(openMax) || openMax < 0) {
      throw new SessionError('INVALID_OPTION', 'FileStore: `openFiles` must be a whole number >= 0.');
    }
    this.#openMax = openMax;
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

  /** What the directory's file system allows: synchronous calls (`io`), files kept open. */
  #probeDir(): void {
    this.#io.allow(this.#ioOption === 'auto' && isLocalFileSystem(this.dir));
    this.#fineTimes = fineTimes(this.dir);
  }

  #init(): Promise<void> {
    this.#ready ??= (async () => {
      prepareDir(this.dir, { strict: false, create: this.#create });
      this.#probeDir();
    })().catch((err: unknown) => {
      // A directory that is not usable yet (mount not ready, wrong permissions, files to move
      // out) may be fixed while the process runs: try again on the next request.
      this.#ready = undefined;
      throw err;
    });
    return this.#ready;
  }

  #file(key: string): string {
    // Keys come from the manager (base64url); anything else never reaches a path.
    checkStorageKey('FileStore', key);
    return `${this.#base}${key}.json`;
  }

  /** The session's lock file (see "The lock file" below). */
  #lock(key: string): string {
    return `${this.#file(key)}.lock`;
  }

  #spare(key: string): string {
    return this.#spareBase + key;
  }

  // ------------------------------------------------------------------------------------------
  // Small file operations: synchronous while the io mode allows it, else through the thread pool.

  /** Removes `path`; false if it was not there. `sync`: see `#inspect`. */
  async #remove(path: string, sync = this.#io.sync): Promise<boolean> {
    try {
      if (sync) this.#io.run(() => unlinkSync(path));
      else await unlinkAsync(path);
      return true;
    } catch (err) {
      if (errno(err) === 'ENOENT') return false;
      throw err;
    }
  }

  /**
   * The file as it is: null if absent, `record: null` if it does not decode (nothing reported).
   * `sync`: synchronous system calls (the io mode's choice; gc always passes false).
   * `unlocked`: the caller does not hold the session's lock (a load). Such a read can meet an
   * inode that a writer in another process (or this one, through the thread pool) is rewriting,
   * whose checksum then fails: it reads again, and after READ_ATTEMPTS such reads it reads once
   * under the session's lock, where no write can run. Under the lock a failing checksum means a
   * file edited outside the store (or damaged): it is read as it parses (see `decodeFile`).
   * (Every caller but `load` holds the lock.)
   */
  async #inspect(key: string, sync = this.#io.sync, unlocked = false): Promise<FileRecord | null> {
    if (!unlocked && sync) {
      // Under the lock, a two-slot file kept open is read through its descriptor (see `#rereadKept`).
      const kept = this.#open.get(key);
      if (kept?.slots) {
        const found = this.#io.run(() =>
          fstatSync(kept.fd).nlink > 0 ? decodeFile({ ...readAllSync(kept.fd), mtimeMs: 0 }, false) : TORN,
        );
        // A two-slot inode that still has a name is the session's file, and stays so while the
        // lock is held: the write in place may go through this descriptor.
        if (found !== TORN) {
          if (found.slot) found.via = kept; // a fresh object: only NOT_A_RECORD is shared, and has no slot
          return found;
        }
      }
    }
    const path = this.#file(key);
    for (let attempt = 1; ; attempt++) {
      const raw = sync ? this.#io.run(() => readRawSync(path)) : await readRaw(path);
      if (!raw) return null;
      // Decoded at once: a synchronous read lends a shared buffer.
      // Under the lock no write runs: a checksum that fails there is not a torn read.
      const found = decodeFile(raw, unlocked);
      if (found !== TORN) return found;
      if (attempt >= READ_ATTEMPTS) return this.#locked(key, () => this.#inspect(key));
    }
  }

  async #read(key: string, unlocked = false): Promise<LiveFile | null> {
    const found = await this.#inspect(key, this.#io.sync, unlocked);
    if (!found) return null;
    if (!found.record) {
      this.#corrupt.report('FileStore', this.#file(key), 'not a session record');
      return null;
    }
    return found as LiveFile;
  }

  /**
   * Writes a new file for `key` (under its lock), as a two-slot file (the record in slot 0) if
   * it fits, else as a file of one version: into the session's spare inode if it has one (see
   * `#writeReused`), else into a new temp file, then renamed over the session file. `previous`:
   * what is there now: 'none' (create), 'legacy' (a file of the oldest format, one that did not
   * decode, or a two-slot file) or 'current' (a checksummed file of one version). Only an inode
   * that held a checksummed file of one version becomes a spare, and only when the new file is
   * one too (a two-slot file is rewritten in place and needs none): a reader that meets a
   * rewritten inode always finds a checksum to check.
   */
  async #write(
    key: string,
    record: StoredSession,
    expiresAt: number,
    previous: 'none' | 'legacy' | 'current',
    pending: Promise<void>[] = [],
  ): Promise<void> {
    const file = this.#file(key);
    const spare = this.#spare(key);
    this.#temps = (this.#temps + 1) >>> 0;
    const tmp = `${this.#base}.tmp-${key}-${this.#ownerId}-${this.#temps.toString(16).padStart(8, '0')}`;
    const data = encodeFile(record, expiresAt, 1);
    const keep = previous === 'current' && data[data.length - 1] !== NEWLINE;
    let reused: { handle: fs.FileHandle; size: number } | null = null;
    if (previous !== 'none') {
      if (this.#io.sync) {
        if (await this.#writeReused(file, spare, tmp, data, expiresAt, keep, pending)) return;
      } else {
        reused = await this.#takeSpare(spare, tmp);
      }
    }
    const handle =
      reused?.handle ??
      (await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600));
    try {
      try {
        await handle.writeFile(data);
        if (reused && reused.size > data.length) await handle.truncate(data.length);
        // After the content (a write sets the mtime to now).
        const expiry = expiresAt / 1000;
        if (this.#io.sync) this.#io.run(() => futimesSync(handle.fd, expiry, expiry));
        else await handle.utimes(expiry, expiry);
        if (this.#fsync) await handle.datasync();
      } finally {
        await handle.close();
      }
      if (keep) {
        try {
          if (this.#io.sync) this.#io.run(() => linkSync(file, spare));
          else await linkAsync(file, spare);
        } catch {}
      }
      await Promise.all(pending);
      await fs.rename(tmp, file);
      if (this.#fsync) await this.#syncDir();
    } catch (err) {
      // Disk full, quota, I/O error: the half-written temp file goes at once, not at the next gc.
      await this.#remove(tmp).catch(() => {});
      throw err;
    }
  }

  /**
   * Writes `record` into the slot of the session's two-slot file that does not hold the version
   * read under the lock (`slot`), with the next sequence number. The inode, its name and the
   * directory stay as they are: a write is one pwrite, the timestamps (the mtime is the expiry)
   * and, with fsync, one fdatasync; no rename, no directory fsync, no spare. Until the write is
   * complete, readers (in any process) find the version before it whole in the other slot: a
   * slot being written fails its checksum. False, having changed nothing, when the record does
   * not fit in a slot or the file is gone (`#write` then makes a new file).
   *
   * The slot's head (its checksum and sequence number) is written after the rest of it, so that
   * a slot being written still shows the number of the version it held (see `decodeSlots`).
   * A load may see the new version while its fdatasync runs, before it is acknowledged. A write
   * that fails (a full disk when the file first grows into slot 1, an I/O error, a failed
   * fdatasync) spoils the head of the slot it wrote, so that the version before it is the record
   * again, and fails.
   */
  async #writeInPlace(
    key: string,
    record: StoredSession,
    expiresAt: number,
    slot: Slot,
    pending: Promise<void>[],
    via?: OpenFile,
  ): Promise<boolean> {
    const data = encodeFile(record, expiresAt, slot.seq + 1);
    if (data[data.length - 1] !== NEWLINE) return false;
    // The index entries the record needs are durable (with fsync) before it reaches the file:
    // written in place, it is visible, and may be written back, from its write on.
    if (pending.length > 0) await Promise.all(pending);
    const at = (1 - slot.at) * SLOT;
    const expiry = expiresAt / 1000;
    const path = this.#file(key);
    const sync = this.#io.sync;
    // The file the record was read through under this lock, if it is still kept (not closed
    // since): the session's file until the lock is released (see `#inspect`).
    const kept = via?.writable && this.#open.get(key) === via ? via : undefined;
    let fd: number;
    if (kept) {
      kept.pins++;
      fd = kept.fd;
    } else {
      try {
        fd = sync
          ? this.#io.run(() => openSync(path, constants.O_WRONLY))
          : await openFd(path, constants.O_WRONLY);
      } catch (err) {
        if (errno(err) === 'ENOENT') return false;
        throw err;
      }
    }
    try {
      try {
        // The head (checksum and sequence number) after the rest: see `decodeSlots`.
        const head = BODY_AT + 4 + String(slot.seq + 1).length + 1;
        if (sync) {
          this.#io.run(() => {
            writeAllSync(fd, data.subarray(head), at + head);
            writeAllSync(fd, data.subarray(0, head), at);
            // After the content (a write sets the mtime to now).
            futimesSync(fd, expiry, expiry);
          });
        } else {
          await writeAll(fd, data.subarray(head), at + head);
          await writeAll(fd, data.subarray(0, head), at);
          await futimesFd(fd, expiry, expiry);
        }
        if (this.#fsync) await datasyncFd(fd);
      } catch (err) {
        try {
          nodeFs.writeSync(fd, SPOILED, 0, SPOILED.length, at);
        } catch {}
        throw err;
      }
    } finally {
      if (kept) this.#unpin(key, kept);
      else if (sync) this.#io.run(() => closeSync(fd));
      else await closeFd(fd);
    }
    return true;
  }

  /**
   * `#write` into the session's spare inode with every step but the fsyncs synchronous: the
   * content is copied into pages of a file that exists, the renames and the link change names
   * only (no inode is allocated or freed). The spare is renamed to `tmp` (so that a crash leaves
   * a temp file of this owner, which gc removes), written, fsynced (`fsync`, through the thread
   * pool), then the session file's current inode is linked as the next spare (`keep`) and `tmp`
   * renamed over the session file. False, having changed nothing, when there is no usable spare.
   *
   * With fsync, the rename is made durable (directory fsync) before the lock is released: the next
   * write reuses the inode this one replaced, which must no longer be the session file on disk
   * by then, or a power cut during that write could leave a torn session file.
   */
  async #writeReused(
    file: string,
    spare: string,
    tmp: string,
    data: Buffer,
    expiresAt: number,
    keep: boolean,
    pending: Promise<void>[],
  ): Promise<boolean> {
    const fd = this.#io.run(() => {
      try {
        renameSync(spare, tmp);
      } catch (err) {
        if (errno(err) === 'ENOENT') return -1;
        throw err;
      }
      let fd = -1;
      let size = 0;
      try {
        fd = openSync(tmp, constants.O_WRONLY);
        const stat = fstatSync(fd);
        // A spare that still has another name (a writer died between its link and its rename, so
        // it is the session file too) is never written.
        if (!stat.isFile() || stat.nlink !== 1) throw new Error('not a spare');
        size = stat.size;
      } catch {
        try {
          if (fd >= 0) closeSync(fd);
          removeSync(tmp);
        } catch {}
        return -1;
      }
      try {
        // Through the module object, so that a test can make it fail like a full disk.
        for (let at = 0; at < data.length; ) at += nodeFs.writeSync(fd, data, at, data.length - at, at);
        if (size > data.length) ftruncateSync(fd, data.length);
        // After the content (a write sets the mtime to now).
        futimesSync(fd, expiresAt / 1000, expiresAt / 1000);
        return fd;
      } catch (err) {
        closeSync(fd);
        removeSync(tmp);
        throw err;
      }
    });
    if (fd < 0) return false;
    if (this.#fsync) {
      try {
        await fdatasyncFd(fd);
      } catch (err) {
        this.#io.run(() => {
          closeSync(fd);
          removeSync(tmp);
        });
        throw err;
      }
    }
    try {
      await Promise.all(pending);
    } catch (err) {
      this.#io.run(() => {
        closeSync(fd);
        removeSync(tmp);
      });
      throw err;
    }
    this.#io.run(() => {
      closeSync(fd);
      if (keep) {
        try {
          linkSync(file, spare);
        } catch {}
      }
      try {
        renameSync(tmp, file);
      } catch (err) {
        removeSync(tmp);
        throw err;
      }
    });
    if (this.#fsync) await this.#syncDir();
    return true;
  }

  /**
   * The session's spare inode, renamed to `tmp` and opened for writing (async io mode); null if
   * there is none usable.
   */
  async #takeSpare(spare: string, tmp: string): Promise<{ handle: fs.FileHandle; size: number } | null> {
    try {
      await renameAsync(spare, tmp);
    } catch (err) {
      if (errno(err) === 'ENOENT') return null;
      throw err;
    }
    let handle: fs.FileHandle | undefined;
    try {
      handle = await fs.open(tmp, constants.O_WRONLY);
      const stat = await handle.stat();
      if (stat.isFile() && stat.nlink === 1) return { handle, size: stat.size };
    } catch {}
    await handle?.close().catch(() => {});
    await this.#remove(tmp).catch(() => {});
    return null;
  }

  /**
   * Resolves once an fsync of `dir` that started after this call has ended: every name made or
   * removed in it before the call is then durable. One fsync serves every caller that arrives
   * while the one before it runs (group commit across sessions).
   */
  #syncDir(dir = this.dir): Promise<void> {
    let state = this.#dirSyncs.get(dir);
    if (!state) {
      state = {};
      this.#dirSyncs.set(dir, state);
    }
    if (state.next) return state.next;
    if (!state.running) return this.#startDirSync(dir, state);
    const queued = state;
    const next = state.running
      .catch(() => {})
      .then(() => {
        queued.next = undefined;
        return this.#startDirSync(dir, queued);
      });
    state.next = next;
    return next;
  }

  #startDirSync(dir: string, state: { running?: Promise<void>; next?: Promise<void> }): Promise<void> {
    const running: Promise<void> = syncDirectory(dir).finally(() => {
      if (state.running === running) state.running = undefined;
      if (!state.running && !state.next && this.#dirSyncs.get(dir) === state) this.#dirSyncs.delete(dir);
    });
    state.running = running;
    return running;
  }

  /**
   * With fsync: the fsync of `dir` (and of its parent, if `dir` was just made), as a promise the
   * record's write awaits before its rename, so that an index entry is durable before the record
   * that needs it while its fsync overlaps the record's own write.
   */
  #durable(pending: Promise<void>[], dir: string, made: boolean): void {
    if (!this.#fsync) return;
    const started = [this.#syncDir(dir), ...(made ? [this.#syncDir(dirname(dir))] : [])];
    for (const promise of started) {
      promise.catch(() => {}); // awaited by the write; not unhandled if the write fails first
      pending.push(promise);
    }
  }

  #marker(key: string, userId: string): string {
    return join(this.dir, 'users', userDirName(userId), key);
  }

  /** Files `key` under `userId` in the user index (its durability joins `pending`). */
  async #mark(key: string, userId: string, pending: Promise<void>[]): Promise<void> {
    const dir = join(this.dir, 'users', userDirName(userId));
    const made = await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    await fs.writeFile(this.#marker(key, userId), '', { mode: 0o600 });
    // Durable before the record that names the user: a power cut must not leave a session that
    // `sessionsOf` (and so revokeAll) cannot find.
    this.#durable(pending, dir, made !== undefined);
  }

  async #unmark(key: string, userId: string): Promise<void> {
    await this.#remove(this.#marker(key, userId));
  }

  /**
   * Files `key` in the expiry index: an empty `expiry/<bucket start>/<key>`, made (with fsync,
   * durably: see `pending`) before the session file gets that expiry. Index markers are never
   * removed on the write path, only by gc under the session's lock, so a session file always has
   * a marker in the bucket of its expiry.
   */
  async #index(key: string, expiresAt: number, pending: Promise<void>[]): Promise<void> {
    const bucket = bucketOf(expiresAt);
    const dir = join(this.dir, 'expiry', String(bucket));
    for (let attempt = 0; ; attempt++) {
      let made = false;
      if (!this.#buckets.has(bucket)) {
        made = (await fs.mkdir(dir, { recursive: true, mode: 0o700 })) !== undefined;
        if (this.#buckets.size > 1000) this.#buckets.clear();
        this.#buckets.add(bucket);
      }
      try {
        await fs.writeFile(join(dir, key), '', { mode: 0o600 });
      } catch (err) {
        // The bucket was emptied and removed by a gc meanwhile: make it again, once.
        this.#buckets.delete(bucket);
        if (errno(err) !== 'ENOENT' || attempt > 0) throw err;
        continue;
      }
      this.#durable(pending, dir, made);
      return;
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
    previous:
      | (Pick<FileRecord, 'expiresAt' | 'current' | 'slot' | 'via'> & { userId: string | undefined })
      | null,
    create = false,
  ): Promise<Slot | undefined> {
    const pending: Promise<void>[] = [];
    if (!previous || bucketOf(previous.expiresAt) !== bucketOf(expiresAt))
      await this.#index(key, expiresAt, pending);
    const previousUser = previous?.userId;
    const userId = record.meta.userId;
    if (userId !== undefined && userId !== previousUser) await this.#mark(key, userId, pending);
    const slot = previous?.current ? previous.slot : undefined;
    const inPlace =
      !create &&
      slot !== undefined &&
      (await this.#writeInPlace(key, record, expiresAt, slot, pending, previous?.via));
    if (!inPlace) {
      const mode = create ? 'none' : previous?.current && !slot ? 'current' : 'legacy';
      await this.#write(key, record, expiresAt, mode, pending);
      this.#forget(key); // the file kept open is now the spare, which the next write rewrites
    }
    if (previousUser !== undefined && previousUser !== userId) await this.#unmark(key, previousUser);
    // Where the record is now, if it was written in place.
    return inPlace && slot ? { at: slot.at === 0 ? 1 : 0, seq: slot.seq + 1 } : undefined;
  }

  /** Deletes the session's file, its spare and its user marker; `durable`: fsyncs the directory (with fsync). */
  async #unlink(
    key: string,
    userId: string | undefined,
    durable = true,
    sync = this.#io.sync,
  ): Promise<void> {
    this.#forget(key); // a removed file kept open would hold its blocks until closed
    const removed = await this.#remove(this.#file(key), sync);
    await this.#remove(this.#spare(key), sync);
    // A logout must not come back after a power cut.
    if (removed && durable && this.#fsync) await this.#syncDir();
    if (userId !== undefined) await this.#remove(this.#marker(key, userId), sync);
  }

  // ------------------------------------------------------------------------------------------
  // Each session's queue. Jobs run one at a time, in the order they were asked for, each holding
  // the session's lock file; consecutive commits at the head of the queue run as one batch.

  /**
   * Runs `fn` holding the session's lock: queued within this process, a lock file across
   * processes. `background` (gc): no synchronous system call for the lock.
   */
  #locked<T>(key: string, fn: () => Promise<T>, background = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#enqueue(key, {
        kind: 'run',
        fn,
        background,
        resolve: resolve as (value: unknown) => void,
        reject,
      });
    });
  }

  #enqueue(key: string, job: Job): void {
    const queue = this.#jobs.get(key);
    if (queue) {
      queue.push(job);
      return;
    }
    const fresh = [job];
    this.#jobs.set(key, fresh);
    void this.#drain(key, fresh);
  }

  async #drain(key: string, queue: Job[]): Promise<void> {
    try {
      // Also lets the callers of this very tick join the queue before the first batch is taken.
      await this.#init();
    } catch (err) {
      this.#jobs.delete(key);
      for (const job of queue.splice(0)) job.reject(err);
      return;
    }
    const lock = this.#lock(key);
    // A lock kept from the last jobs of this session (see `#linger`): held already.
    let held = this.#takeLease(key);
    while (queue.length > 0) {
      const head = queue[0]!;
      const sync = head.kind === 'run' && head.background ? false : undefined;
      if (!held) {
        try {
          await this.#acquire(key, lock, sync);
          held = true;
        } catch (err) {
          queue.shift();
          head.reject(err);
          continue;
        }
      }
      // Taken once the lock is held, so that what queued while it was awaited joins the batch.
      const batch: Job[] = head.kind === 'commit' ? takeCommits(queue) : [queue.shift()!];
      let settle: () => void;
      try {
        settle =
          head.kind === 'commit'
            ? await this.#commitBatch(key, batch as CommitJob[])
            : await this.#run(key, head as RunJob);
      } catch (err) {
        this.#owned.delete(key);
        settle = () => {
          for (const job of batch) job.reject(err);
        };
      }
      // Kept only after a write in place, with the record it wrote (see `#linger`).
      if (!this.#owned.has(key)) {
        const released = await this.#release(key, sync);
        held = false;
        if (released !== undefined) {
          settle = () => {
            for (const job of batch) job.reject(released);
          };
        }
      }
      // Answers go out once the lock is released (or kept for this process: see `#linger`), as a
      // caller may ask again at once.
      settle();
    }
    this.#jobs.delete(key);
    if (held) this.#linger(key);
  }

  // ------------------------------------------------------------------------------------------
  // Locks kept after their jobs (see `lockLingerMs`).
  //
  // A session's requests come in bursts (a page and its parallel requests, a form and the page
  // after it). So after the last job of a session's queue, its lock file stays, held by this
  // store, for lockLingerMs: a job within that time neither links nor unlinks it, and finds the
  // record this store last wrote in place (`#owned`) without reading the file, as no other
  // process can write the file while the lock is held. That saves four of the seven system calls
  // a commit of a two-slot file makes (link, fstat, pread, unlink; the fdatasync aside), and the
  // two a load makes (fstat, pread).
  //
  // Another store instance (another process, or another FileStore on the same directory) that
  // finds the lock held says so: it writes `owners/.wants/<key>`. Every store that keeps locks
  // watches that directory (inotify on Linux); on any change to a session's entry it releases
  // the session's lock if it is only kept, or releases it after the batch that runs now, and
  // keeps none of that session's locks for CONTENDED_MS. The waiter's back-off (1 ms, doubled
  // up to 50 ms) then finds the lock free. A store that cannot watch (no inotify, a network
  // file system: wherever `io` is not synchronous) keeps no lock after its jobs.
  // ------------------------------------------------------------------------------------------

  /** Whether the session's lock is kept after its jobs (see above). */
  #lingers(key: string): boolean {
    if (this.#lingerMs <= 0 || !this.#io.sync || !this.#watching()) return false;
    const until = this.#contended.get(key);
    if (until === undefined) return true;
    if (performance.now() < until) return false;
    this.#contended.delete(key);
    return true;
  }

  /** The watch on `owners/.wants/` is running (started on first use); false if it cannot run. */
  #watching(): boolean {
    if (this.#watcher === undefined) {
      try {
        // Through the module object, so that a test can make it fail as a system without inotify does.
        const watcher = nodeFs.watch(join(this.dir, WANTS), { persistent: false }, (_event, name) =>
          this.#wanted(name),
        );
        watcher.on('error', () => {
          // Not told any more: nothing may be kept.
          watcher.close();
          this.#watcher = null;
          this.#releaseKept();
        });
        this.#watcher = watcher;
      } catch {
        this.#watcher = null;
      }
    }
    return this.#watcher !== null;
  }

  /**
   * Another store instance waits for the lock of `name` (or, with no name, for some lock: the
   * watch overflowed): release it if it is only kept, and keep none of its locks for a while.
   */
  #wanted(name: string | Buffer | null): void {
    const keys = typeof name === 'string' ? (isStorageKey(name) ? [name] : []) : [...this.#leases.keys()];
    for (const key of keys) {
      this.#contend(key);
      if (this.#takeLease(key)) void this.#release(key);
    }
  }

  /** Keeps none of the session's locks for CONTENDED_MS: another store instance wants them too. */
  #contend(key: string): void {
    const now = performance.now();
    if (this.#contended.size > 1_000) {
      for (const [old, until] of this.#contended) if (until <= now) this.#contended.delete(old);
    }
    this.#contended.set(key, now + CONTENDED_MS);
  }

  /**
   * Keeps the session's lock, held by this store, for lockLingerMs after its last job: the next
   * job of the session neither takes nor releases it and, while it is kept, finds the record
   * this store wrote (see `#owned`) without reading the file.
   */
  #linger(key: string): void {
    const timer = setTimeout(() => {
      if (this.#takeLease(key)) void this.#release(key);
    }, this.#lingerMs);
    timer.unref();
    this.#leases.set(key, timer);
    if (this.#leases.size === 1) atExit(this.#releaseAtExit);
  }

  /** Takes over the lock kept for `key`, if any: true if it is held now. */
  #takeLease(key: string): boolean {
    const timer = this.#leases.get(key);
    if (!timer) return false;
    clearTimeout(timer);
    this.#leases.delete(key);
    if (this.#leases.size === 0) keptAtExit.delete(this.#releaseAtExit);
    return true;
  }

  /** Releases every lock that is only kept (see `#linger`). */
  #releaseKept(): Promise<unknown[]> {
    const releases: Promise<unknown>[] = [];
    for (const key of [...this.#leases.keys()]) if (this.#takeLease(key)) releases.push(this.#release(key));
    return Promise.all(releases);
  }

  /**
   * At the process's exit, the locks it only keeps go with it (synchronously: nothing else runs
   * then), so that no other process waits for them to be found dead.
   */
  readonly #releaseAtExit = () => {
    for (const key of this.#leases.keys()) {
      try {
        unlinkSync(this.#lock(key));
      } catch {}
    }
  };

  /** Removes the session's lock file; the error, if that failed (a lock already gone is not). */
  async #release(key: string, sync?: boolean): Promise<unknown> {
    this.#owned.delete(key);
    const lock = this.#lock(key);
    try {
      // Only this process can remove its lock while it lives (a waiter takes over a lock only
      // from a dead owner), so removing by name removes this lock and no other.
      if (sync ?? this.#io.sync) this.#io.run(() => unlinkSync(lock));
      else await unlinkAsync(lock);
      return undefined;
    } catch (err) {
      return errno(err) === 'ENOENT' ? undefined : err;
    }
  }

  /**
   * Tells the store instance that holds the session's lock that this one waits for it (see
   * `#linger`), and keeps none of that session's locks for a while itself: a session two
   * instances write is passed from one to the other after each batch.
   */
  async #want(key: string, sync: boolean): Promise<void> {
    this.#contend(key);
    const path = join(this.dir, WANTS, key);
    try {
      if (sync) this.#io.run(() => writeFileSync(path, '', { mode: 0o600 }));
      else await fs.writeFile(path, '', { mode: 0o600 });
    } catch {
      // Without the sign, the lock is still released when its holder stops keeping it.
    }
  }

  async #unwant(key: string, sync: boolean): Promise<void> {
    await this.#remove(join(this.dir, WANTS, key), sync).catch(() => false);
  }

  async #run(key: string, job: RunJob): Promise<() => void> {
    // Any step other than a commit may change the file in ways the record kept does not follow.
    this.#owned.delete(key);
    try {
      const value = await job.fn();
      return () => job.resolve(value);
    } catch (err) {
      return () => job.reject(err);
    }
  }

  /**
   * A batch of commits in one step under the lock: one read, each delta applied in order with its
   * own guard checked against the record as merged so far, one write. If the write fails, the
   * answers that depended on it (from the first commit that changed the record on) are that
   * error; the ones before it stand (they answered from the file as it is).
   */
  async #commitBatch(key: string, batch: CommitJob[]): Promise<() => void> {
    const results: CommitResult[] = [];
    let firstChange = batch.length;
    try {
      const owned = this.#owned.get(key);
      // Taken out first: a batch that fails leaves no record kept.
      this.#owned.delete(key);
      const existing = owned ? { ...owned, record: cloneRecord(owned.record) } : await this.#read(key);
      const now = this.#now();
      if (!existing || existing.expiresAt <= now) {
        if (existing) await this.#unlink(key, existing.record.meta.userId);
        for (let i = 0; i < batch.length; i++) results.push('gone');
      } else {
        // Read before the merge, which changes the record in place.
        const previous = {
          userId: existing.record.meta.userId,
          expiresAt: existing.expiresAt,
          current: existing.current,
          slot: existing.slot,
          via: existing.via,
        };
        let record: StoredSession | null = existing.record;
        let expiresAt = existing.expiresAt;
        for (const [i, job] of batch.entries()) {
          if (!record) {
            results.push('gone');
          } else if (!guardHolds(record.meta, job.guard)) {
            results.push('conflict');
          } else {
            if (firstChange === batch.length) firstChange = i;
            if (isLiveTtl(job.ttlMs)) {
              record = applyDelta(record, job.delta);
              expiresAt = now + job.ttlMs;
              results.push('ok');
            } else {
              record = null;
              results.push('gone');
            }
          }
        }
        if (!record) await this.#unlink(key, previous.userId);
        else if (firstChange < batch.length) {
          const slot = await this.#store(key, record, expiresAt, previous);
          if (slot && this.#lingers(key))
            this.#owned.set(key, {
              record: freezeRecord(record),
              expiresAt,
              current: true,
              slot,
              via: previous.via,
            });
        } else if (owned && this.#lingers(key)) this.#owned.set(key, owned);
      }
      return () => {
        for (const [i, job] of batch.entries()) job.resolve(results[i]!);
      };
    } catch (err) {
      return () => {
        for (const [i, job] of batch.entries()) {
          if (i < firstChange && i < results.length) job.resolve(results[i]!);
          else job.reject(err);
        }
      };
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
      this.#ownerMade = true;
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
    this.#ownerMade = false;
  }

  /** Tries once to take the lock at `path`: true if taken, false if someone holds it. */
  async #tryLock(path: string, sync = this.#io.sync, retried = false): Promise<boolean> {
    if (!this.#ownerMade) await this.#ensureOwner();
    try {
      if (sync) this.#io.run(() => linkSync(this.#ownerFile, path));
      else await linkAsync(this.#ownerFile, path);
      return true;
    } catch (err) {
      const code = errno(err);
      if (code === 'EEXIST') return false;
      if (code === 'ENOENT' && !retried) {
        // The owner file went away (see the heartbeat): make it again, once.
        this.#stopHeartbeat();
        return this.#tryLock(path, sync, true);
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

  async #acquire(key: string, lock: string, sync?: boolean): Promise<void> {
    const started = Date.now();
    let wanted = false;
    try {
      for (let delay = 1; ; ) {
        if (await this.#tryLock(lock, sync ?? this.#io.sync)) return;
        const held = await this.#view(lock);
        // Released meanwhile, or its dead owner's lock removed: try again at once.
        if (!held || (held.dead && (await this.#break(lock, held.tag, 0)))) continue;
        if (Date.now() - started > this.#lockTimeoutMs)
          throw new Error(`timed out waiting for session lock ${lock}`);
        // Held by another live store instance, which may only be keeping it: say so, at first
        // and again every 50 ms of waiting (a sign it missed, a holder that took it back).
        if (held.tag !== this.#ownerId && (!wanted || delay === 50)) {
          wanted = true;
          await this.#want(key, sync ?? this.#io.sync);
        }
        await sleep(delay);
        delay = Math.min(delay * 2, 50);
      }
    } finally {
      if (wanted) await this.#unwant(key, sync ?? this.#io.sync);
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

  // ------------------------------------------------------------------------------------------
  // The contract.

  async load(key: string): Promise<StoredSession | null> {
    checkStorageKey('FileStore', key);
    await this.#init();
    const owned = this.#owned.get(key);
    if (owned && owned.expiresAt > this.#now()) return owned.record;
    if (this.#openMax > 0 && this.#fineTimes && this.#io.sync) {
      const kept = this.#loadKept(key);
      if (kept !== undefined) return kept;
    }
    const found = await this.#read(key, true);
    if (!found) return null;
    if (found.expiresAt <= this.#now()) {
      await this.#locked(key, async () => {
        const again = await this.#read(key);
        if (again && again.expiresAt <= this.#now()) await this.#unlink(key, again.record.meta.userId);
      });
      return null;
    }
    return found.record;
  }

  // ------------------------------------------------------------------------------------------
  // Session files kept open (see `openFiles`).

  /**
   * `load` through the files kept open: the kept record while its file is as it was (one fstat),
   * else the file read again (and kept once it has settled). undefined: not answered here (a
   * file that is torn, of the previous format, expired or unreadable), `load` reads as usual.
   */
  #loadKept(key: string): Readonly<StoredSession> | null | undefined {
    const kept = this.#open.get(key);
    if (kept) {
      const now = this.#io.run(() => fstatSync(kept.fd, { bigint: true }));
      if (kept.settled && sameFile(now, kept.stat) && kept.expiresAt > this.#now()) {
        this.#open.delete(key); // most recently loaded last
        this.#open.set(key, kept);
        return kept.record;
      }
      if (kept.slots && now.nlink > 0) {
        const again = this.#io.run(() => this.#rereadKept(kept, now));
        if (again) {
          this.#open.delete(key);
          this.#open.set(key, kept);
          return again;
        }
      }
      this.#forget(key);
    }
    return this.#io.run(() => this.#readKept(key));
  }

  /**
   * Reads a kept two-slot file again through its descriptor (`now`: its fstat): the record, the
   * kept entry updated; undefined if the read is not a whole live record of two slots (the
   * caller reads the path as usual). Such an inode is the session's file as long as it has a
   * name: the store never gives a two-slot inode a second name (only files of one version become
   * spares), and every change that replaces or removes it (a larger record, a logout, gc)
   * unlinks it, so a link count above 0 is the check that `#readKept` makes with a stat of the
   * path. The entry is settled (answered from without reading) once its ctime is old enough and
   * a second fstat shows nothing changed during the read.
   */
  #rereadKept(kept: OpenFile, now: nodeFs.BigIntStats): Readonly<StoredSession> | undefined {
    const { buffer, length } = readAllSync(kept.fd);
    const found = decodeFile({ buffer, length, mtimeMs: 0 }, true);
    if (found === TORN || !found.record || !found.slot || found.expiresAt <= this.#now()) return undefined;
    const record = freezeRecord(found.record);
    kept.record = record;
    kept.expiresAt = found.expiresAt;
    kept.stat = now;
    kept.settled = settledAt(now) && sameFile(now, fstatSync(kept.fd, { bigint: true }));
    return record;
  }

  /**
   * Reads the session's file on one descriptor: fstat, read, decode. The file is kept open if
   * its ctime is older than SETTLED_NS and, checked after the read, `path` still names it and
   * nothing about it changed (a second fstat): from then on any change to it, or to what
   * `path` names, changes its ctime or link count (see `openFiles`).
   */
  #readKept(key: string): Readonly<StoredSession> | null | undefined {
    const path = this.#file(key);
    let fd: number;
    let writable: boolean;
    try {
      ({ fd, writable } = openKeptSync(path));
    } catch (err) {
      const code = errno(err);
      // Out of descriptors: give back the ones kept here before the read as usual tries again.
      if (code === 'EMFILE' || code === 'ENFILE') this.#forgetAll();
      return code === 'ENOENT' ? null : undefined;
    }
    let kept = false;
    try {
      const before = fstatSync(fd, { bigint: true });
      const { buffer, length } = readAllSync(fd);
      if (formatOf(buffer, length) === 'oldest') return undefined;
      const found = decodeFile({ buffer, length, mtimeMs: 0 }, true);
      if (found === TORN || !found.record || !found.current || found.expiresAt <= this.#now())
        return undefined;
      const record = freezeRecord(found.record);
      const slots = found.slot !== undefined;
      // The kernel's clock, as the ctime is (not the store's `now`, which tests may move).
      const settled = settledAt(before);
      let keep: boolean;
      if (settled) {
        const named = statSync(path, { bigint: true, throwIfNoEntry: false });
        const after = fstatSync(fd, { bigint: true });
        keep = !!named && named.ino === before.ino && named.dev === before.dev && sameFile(before, after);
      } else {
        // Opened by its path just now, so the session's file: read again through `fd` next time.
        keep = slots;
      }
      if (keep) {
        this.#keep(key, {
          fd,
          stat: before,
          record,
          expiresAt: found.expiresAt,
          settled,
          slots,
          writable,
          pins: 0,
        });
        kept = true;
      }
      return record;
    } catch {
      return undefined;
    } finally {
      if (!kept) closeSync(fd);
    }
  }

  #keep(key: string, file: OpenFile): void {
    this.#forget(key);
    this.#open.set(key, file);
    if (this.#open.size > this.#openMax) this.#forget(this.#open.keys().next().value!);
  }

  #forgetAll(): void {
    for (const key of [...this.#open.keys()]) this.#forget(key);
  }

  /** Closes the session's kept file, if any (once the write in place using it, if one is, ends). */
  #forget(key: string): void {
    const kept = this.#open.get(key);
    if (!kept) return;
    this.#open.delete(key);
    if (kept.pins === 0) this.#close(kept);
  }

  /** Ends a write's use of the session's kept file, closing it if it was forgotten meanwhile. */
  #unpin(key: string, kept: OpenFile): void {
    if (--kept.pins === 0 && this.#open.get(key) !== kept) this.#close(kept);
  }

  #close(kept: OpenFile): void {
    try {
      closeSync(kept.fd);
    } catch {}
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    checkStorageKey('FileStore', key);
    checkRecord('FileStore', record);
    return this.#locked(key, async () => {
      const existing = await this.#read(key);
      if (existing && existing.expiresAt > this.#now()) return false;
      if (!isLiveTtl(ttlMs)) return true;
      const previous = existing && {
        userId: existing.record.meta.userId,
        expiresAt: existing.expiresAt,
        current: existing.current,
      };
      await this.#store(key, record, this.#now() + ttlMs, previous, true);
      return true;
    });
  }

  /**
   * Guard check, merge and write happen under the session's lock, on the record read under it;
   * commits queued together share that step (see `#commitBatch`).
   */
  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    checkStorageKey('FileStore', key);
    checkDelta('FileStore', delta);
    return new Promise<CommitResult>((resolve, reject) => {
      this.#enqueue(key, { kind: 'commit', delta, ttlMs, guard, resolve, reject });
    });
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'> {
    return (await this.commit(key, { set: {}, unset: [], meta }, ttlMs)) === 'ok' ? 'ok' : 'gone';
  }

  async destroy(key: string): Promise<void> {
    checkStorageKey('FileStore', key);
    await this.#locked(key, async () => {
      await this.#unlink(key, (await this.#read(key))?.record.meta.userId);
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
    this.#io.hold();
    try {
      return await this.#gc(now);
    } finally {
      this.#io.unhold();
    }
  }

  async #gc(now: number): Promise<number> {
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
    await this.#gcWants(pace);
    return removed;
  }

  /**
   * Removes the signs of waiters that died waiting (see `#want`): an entry of `owners/.wants/`
   * that nobody has written for staleLockMs. A live waiter writes its entry again every 50 ms
   * of waiting and removes it once it has the lock.
   */
  async #gcWants(pace: () => Promise<void>): Promise<void> {
    const dir = join(this.dir, WANTS);
    for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
      await pace();
      if (!isStorageKey(name)) continue;
      const stat = await fs.stat(join(dir, name)).catch(() => null);
      if (stat && Date.now() - stat.mtimeMs > this.#staleLockMs) await this.#remove(join(dir, name), false);
    }
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

  /**
   * The due buckets, each listed a few hundred names at a time (never the whole of a large one
   * at once). A bucket whose whole span has passed holds only sessions that expired or moved on,
   * so its sessions are not stat'ed first.
   */
  async #gcIndexed(now: number, pace: () => Promise<void>): Promise<number> {
    const root = join(this.dir, 'expiry');
    const due = (await fs.readdir(root))
      .filter((name) => /^\d{1,16}$/.test(name) && Number(name) <= now)
      .map(Number)
      .sort((a, b) => a - b);
    let removed = 0;
    for (const bucket of due) {
      const dir = join(root, String(bucket));
      const whole = bucket + BUCKET_MS <= now;
      let listing: Dir;
      try {
        listing = await opendirAsync(dir, { bufferSize: GC_LIST });
      } catch (err) {
        if (errno(err) === 'ENOENT') continue;
        throw err;
      }
      try {
        for (;;) {
          const keys: string[] = [];
          while (keys.length < GC_LIST) {
            const entry = await listing.read();
            if (!entry) break;
            if (isStorageKey(entry.name)) keys.push(entry.name);
          }
          if (keys.length === 0) break;
          removed += await this.#gcKeys(keys, bucket, now, whole, pace);
        }
      } finally {
        await listing.close().catch(() => {});
      }
      if (whole) {
        // Every session filed here has expired: the bucket is empty now, unless a write raced in.
        this.#buckets.delete(bucket);
        await fs.rmdir(dir).catch(() => {});
      }
    }
    return removed;
  }

  /** Markers of one bucket, GC_PARALLEL sessions at a time. */
  async #gcKeys(
    keys: string[],
    bucket: number,
    now: number,
    whole: boolean,
    pace: () => Promise<void>,
  ): Promise<number> {
    let removed = 0;
    let next = 0;
    const worker = async () => {
      while (next < keys.length) {
        const key = keys[next++]!;
        if (await this.#gcFiled(key, bucket, now, whole)) removed++;
        await pace();
      }
    };
    await Promise.all(Array.from({ length: Math.min(GC_PARALLEL, keys.length) }, worker));
    return removed;
  }

  /** One marker of a due bucket: deletes the session if expired, drops the marker if stale. */
  async #gcFiled(key: string, bucket: number, now: number, whole: boolean): Promise<boolean> {
    const marker = join(this.dir, 'expiry', String(bucket), key);
    if (!whole) {
      // Without the lock, the common case: live, and expiring in this very bucket (kept).
      const stat = await fs.stat(this.#file(key)).catch(() => null);
      const expiresAt = stat ? Math.round(stat.mtimeMs) : 0;
      if (stat && expiresAt > now && bucketOf(expiresAt) === bucket) return false;
    }
    return this.#locked(
      key,
      async () => {
        const found = await this.#inspect(key, false);
        if (found && found.expiresAt > now && bucketOf(found.expiresAt) === bucket) return false;
        const record = found?.record;
        const expired = !!record && found.expiresAt <= now;
        if (record && expired) await this.#unlink(key, record.meta.userId, false, false);
        else if (!found) await this.#remove(this.#spare(key), false);
        // Gone, expired, renewed into another bucket (filed there too), or not a session record.
        await this.#remove(marker, false);
        return expired;
      },
      true,
    );
  }

  /** Deletes `key` if it is an expired session record (under its lock); true if it did. */
  async #gcSession(key: string, now: number): Promise<boolean> {
    return this.#locked(
      key,
      async () => {
        const found = await this.#inspect(key, false);
        // Absent (removed meanwhile), renewed, or not a session record (not ours to delete).
        if (!found?.record || found.expiresAt > now) return false;
        await this.#unlink(key, found.record.meta.userId, false, false);
        return true;
      },
      true,
    );
  }

  /**
   * Lists the directory for what ended processes left: their temp files (at once; others' once
   * older than staleLockMs), dead locks, and spares whose session is gone. `full` (a directory
   * from before the expiry index): also deletes expired sessions and files the live ones in the
   * index.
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
        if (expiresAt > now) {
          const pending: Promise<void>[] = [];
          await this.#index(key, expiresAt, pending);
          await Promise.all(pending);
        } else if (await this.#gcSession(key, now)) removed++;
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
    // Spares whose session is gone (deleted by a version of sessionflow from before spares): no
    // write will take them. Without the lock: only a write of an existing session makes a spare.
    for (const key of await fs.readdir(join(this.dir, SPARES)).catch(() => [] as string[])) {
      await pace();
      if (!isStorageKey(key)) continue;
      const gone = await fs.stat(this.#file(key)).then(
        () => false,
        (err: unknown) => errno(err) === 'ENOENT',
      );
      if (gone) await this.#remove(this.#spare(key), false);
    }
    return removed;
  }

  /** Stops the heartbeat and removes this store's owner file (locks it holds keep their owner). */
  async close(): Promise<void> {
    await this.#releaseKept();
    this.#watcher?.close();
    this.#watcher = undefined;
    this.#stopHeartbeat();
    this.#forgetAll();
    // Best effort: an owner file that cannot be removed (the directory is gone or unusable) is
    // recognised as a dead process's by the next gc.
    await fs.rm(this.#ownerFile, { force: true }).catch(() => undefined);
  }
}
