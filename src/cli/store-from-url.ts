import { createHash } from 'node:crypto';
import { type Dirent, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { SessionError } from '../errors.js';
import { defaultSessionDir, FileStore } from '../stores/file.js';
import { asMeta, flatHash, isStorageKey } from '../stores/kit.js';
import { MemoryStore } from '../stores/memory.js';
import { checkTable, DEFAULT_TABLE } from '../stores/sql-common.js';
import type { SessionMeta, SessionStore, SessionSummary } from '../stores/store.js';

/** Which backend a URL named. */
export type StoreKind =
  | 'file'
  | 'memory'
  | 'redis'
  | 'redis-cluster'
  | 'memcached'
  | 'postgres'
  | 'mysql'
  | 'sqlite';

/**
 * Why a store could not be opened:
 * - `bad-url`: the URL (or a `prefix`/`table` option) is malformed or names no usable store;
 * - `driver-missing`: the driver package is not installed (the message names it);
 * - `unreachable`: the server did not answer, refused the connection or the login;
 * - `not-found`: the server answered, but the directory, database file or table is not there
 *   (admin mode never creates one);
 * - `refused`: the store refused what it found (a session directory owned by another user,
 *   open to other users, or holding another program's files).
 */
export type StoreOpenFailure = 'bad-url' | 'driver-missing' | 'unreachable' | 'not-found' | 'refused';

/** A store that could not be opened; the message is safe to print (no password). */
export class StoreOpenError extends Error {
  readonly reason: StoreOpenFailure;

  constructor(reason: StoreOpenFailure, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreOpenError';
    this.reason = reason;
  }
}

/** Upper bounds (exclusive, bytes) of the size histogram's buckets; the last bucket is open. */
export const SIZE_BOUNDS = [1024, 4096, 16_384, 65_536, 262_144] as const;

/** One bucket of the size histogram. `max` is exclusive; null for the open last bucket. */
export interface SizeBucket {
  label: string;
  min: number;
  max: number | null;
  count: number;
}

/**
 * What `stats` reports. Sizes are the bytes of a record as stored (the file, the row's JSON
 * columns, the hash's fields and values). Numbers a store cannot give are null, with the reason
 * in `notes`.
 */
export interface StoreStats {
  /** Records present: live, expired but not collected yet, and unreadable ones. */
  count: number;
  live: number;
  /** Expired records still stored (gc removes them); null where the backend drops them itself. */
  expired: number | null;
  /** Records whose metadata cannot be read (not counted as live); null where not checked. */
  corrupt: number | null;
  /** Live sessions with a user / without one. */
  authenticated: number;
  anonymous: number;
  /** Distinct users with at least one live session. */
  users: number;
  /** Bytes of all live records. */
  bytes: number;
  /** Live records by size. */
  sizes: SizeBucket[];
  /** The live session created first. */
  oldest: { id: string; createdAt: number } | null;
  /** Users with the most live sessions, most first. */
  byUser: { user: string; sessions: number }[];
  notes: string[];
}

/** Progress of a running `gc`: how many expired records it will remove, and has removed so far. */
export interface GcProgress {
  total(): Promise<number>;
  done(): Promise<number>;
}

/** A store built from a URL, with a label safe to print (no password) and a way to close it. */
export interface SelectedStore {
  store: SessionStore;
  label: string;
  kind: StoreKind;
  /** Closes the driver's connections (the store does not own the client it was given). */
  close: () => Promise<void>;
  /**
   * Admin mode: the store exists but holds nothing yet and must not be touched (a file
   * directory without its index, which any store call would create).
   */
  empty?: boolean;
  /**
   * Admin mode, file store: a user's live sessions read straight from the directory, where
   * `store.sessionsOf` would first prepare the directory and prune its index (writes).
   */
  listUser?: (userId: string, now: number) => Promise<SessionSummary[]>;
  /** Admin mode, stores that can enumerate: counts, sizes, oldest, users (read only). */
  stats?: (now: number, top: number) => Promise<StoreStats>;
  /** Admin mode, stores with a gc: a baseline taken now, to follow a gc that starts next. */
  gcProgress?: (now: number) => Promise<GcProgress>;
  /** Admin mode, Memcached: what the servers hold in all (every key, not only sessions). */
  serverItems?: () => Promise<{ items: number; bytes: number }>;
}

/** How {@link storeFromUrl} opens a store. */
export interface StoreFromUrlOptions {
  /**
   * Where `file` without a path keeps its sessions (`<dataDir>/sessions`), for the demo. Without
   * it, `file` is the library's own default store, `new FileStore()`.
   */
  dataDir?: string;
  /**
   * Admin mode (the `sessionflow` command): never create or migrate anything (a missing
   * directory, database file or table is a `not-found` error), fail within `timeoutMs` when a
   * server does not answer, never reconnect, and offer `stats`/`gcProgress`. Without it, the
   * store is opened as an application opens it: the table is migrated, the directory created.
   */
  admin?: boolean;
  /** Admin mode: open for reading only (SQLite is opened read-only). */
  readOnly?: boolean;
  /** Key prefix (Redis, Redis Cluster, Memcached); the store's default when absent. */
  prefix?: string;
  /** Table name (PostgreSQL, MySQL/MariaDB, SQLite); `sessionflow_sessions` when absent. */
  table?: string;
  /** Admin mode: the longest wait for a server to answer when opening. @default 3000 */
  timeoutMs?: number;
}

const nothing = async () => {};

/** `scheme://user:secret@host/…` -> `scheme://host/…`: a connection URL may carry a password. */
export function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}

function hostList(url: string): string[] {
  return url
    .slice(url.indexOf('://') + 3)
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean);
}

/** `host:port,host:port`, each checked: a typo here would otherwise surface as a hang. */
function hostPorts(url: string, scheme: string): { host: string; port: number }[] {
  const list = url.includes('://') ? hostList(url) : [];
  if (list.length === 0) {
    throw new StoreOpenError(
      'bad-url',
      `${scheme}:// needs at least one host:port, e.g. ${scheme}://127.0.0.1:${scheme === 'memcached' ? 11211 : 7000}.`,
    );
  }
  return list.map((h) => {
    const colon = h.lastIndexOf(':');
    const host = colon > 0 ? h.slice(0, colon).replace(/^\[(.*)\]$/, '$1') : '';
    const port = Number(h.slice(colon + 1));
    if (!host || !Number.isInteger(port) || port < 1 || port > 65_535 || /[/@?#\s]/.test(host)) {
      throw new StoreOpenError('bad-url', `${JSON.stringify(h)} in the ${scheme} URL is not host:port.`);
    }
    return { host, port };
  });
}

function parseUrl(value: string, example: string): URL {
  try {
    const url = new URL(value);
    if (!url.hostname) throw new Error('no host');
    if (url.port !== '' && !(Number(url.port) >= 1 && Number(url.port) <= 65_535))
      throw new Error('bad port');
    return url;
  } catch {
    throw new StoreOpenError(
      'bad-url',
      `${JSON.stringify(redact(value))} is not a valid URL; expected e.g. ${example}.`,
    );
  }
}

function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function messageOf(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) return messageOf(err.errors[0]);
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
]);

/** A driver error while opening, as a StoreOpenError that says what to check. */
function openFailure(label: string, err: unknown): StoreOpenError {
  if (err instanceof StoreOpenError) return err;
  const code = errorCode(err) ?? errorCode((err as { cause?: unknown } | null)?.cause);
  const detail = redact(messageOf(err));
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') {
    return new StoreOpenError(
      'unreachable',
      `cannot reach ${label}: the host name does not resolve (${detail}).`,
      {
        cause: err,
      },
    );
  }
  if (code && NETWORK_CODES.has(code)) {
    return new StoreOpenError('unreachable', `cannot reach ${label}: ${detail}. Is the server running?`, {
      cause: err,
    });
  }
  return new StoreOpenError('unreachable', `cannot use ${label}: ${detail}`, { cause: err });
}

/** Imports a driver; a missing package becomes an error that names it. */
async function driver<T>(pkg: string, storeName: string, load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (err) {
    const code = errorCode(err);
    if (
      (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') &&
      messageOf(err).includes(`'${pkg}`)
    ) {
      throw new StoreOpenError(
        'driver-missing',
        `the ${storeName} store needs its driver, the '${pkg}' package, which is not installed: install the '${pkg}' package (npm install ${pkg}) where the application's dependencies are.`,
        { cause: err },
      );
    }
    throw new StoreOpenError('driver-missing', `the '${pkg}' package did not load: ${messageOf(err)}`, {
      cause: err,
    });
  }
}

/**
 * Waits for `work`, at most `ms`; on timeout runs `abandon` (closing what was opened) and throws
 * an `unreachable` error.
 */
async function bounded<T>(label: string, ms: number, work: Promise<T>, abandon: () => unknown): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      Promise.resolve()
        .then(abandon)
        .catch(() => undefined);
      reject(
        new StoreOpenError(
          'unreachable',
          `no answer from ${label} within ${ms / 1000} s. Is the server running and reachable from here?`,
        ),
      );
    }, ms);
  });
  work.catch(() => undefined);
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs a store constructor; its option errors (prefix, table) are URL errors. */
function construct<T>(make: () => T): T {
  try {
    return make();
  } catch (err) {
    if (err instanceof SessionError && err.code === 'INVALID_OPTION') {
      throw new StoreOpenError('bad-url', err.message, { cause: err });
    }
    throw err;
  }
}

// ---- statistics -------------------------------------------------------------------------------

function sizeLabel(bytes: number): string {
  return bytes % 1024 === 0 ? `${bytes / 1024} KiB` : `${bytes} B`;
}

function emptySizes(): SizeBucket[] {
  const out: SizeBucket[] = [];
  let min = 0;
  for (const max of SIZE_BOUNDS) {
    out.push({
      label: min === 0 ? `< ${sizeLabel(max)}` : `${sizeLabel(min)} – ${sizeLabel(max)}`,
      min,
      max,
      count: 0,
    });
    min = max;
  }
  out.push({ label: `≥ ${sizeLabel(min)}`, min, max: null, count: 0 });
  return out;
}

function bucketOf(bytes: number): number {
  const i = SIZE_BOUNDS.findIndex((bound) => bytes < bound);
  return i === -1 ? SIZE_BOUNDS.length : i;
}

/** Statistics built record by record, for the stores that are enumerated (file, Redis). */
class StatsBuilder {
  count = 0;
  live = 0;
  expired = 0;
  corrupt = 0;
  authenticated = 0;
  bytes = 0;
  readonly sizes = emptySizes();
  oldest: { id: string; createdAt: number } | null = null;
  readonly users = new Map<string, number>();

  add(id: string, bytes: number, meta: SessionMeta | null, live: boolean): void {
    this.count++;
    if (!live) {
      this.expired++;
      return;
    }
    if (!meta) {
      this.corrupt++;
      return;
    }
    this.live++;
    this.bytes += bytes;
    this.sizes[bucketOf(bytes)]!.count++;
    if (!this.oldest || meta.createdAt < this.oldest.createdAt)
      this.oldest = { id, createdAt: meta.createdAt };
    if (typeof meta.userId === 'string') {
      this.authenticated++;
      this.users.set(meta.userId, (this.users.get(meta.userId) ?? 0) + 1);
    }
  }

  result(top: number, expiredKnown: boolean, notes: string[]): StoreStats {
    const byUser = [...this.users]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      .slice(0, top)
      .map(([user, sessions]) => ({ user, sessions }));
    return {
      count: this.count,
      live: this.live,
      expired: expiredKnown ? this.expired : null,
      corrupt: this.corrupt,
      authenticated: this.authenticated,
      anonymous: this.live - this.authenticated,
      users: this.users.size,
      bytes: this.bytes,
      sizes: this.sizes,
      oldest: this.oldest,
      byUser,
      notes,
    };
  }
}

/** The statistics of a store that holds nothing. */
export function emptyStats(): StoreStats {
  return new StatsBuilder().result(0, true, []);
}

/** Runs `fn` over `items`, `width` at a time. */
async function inBatches<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += width) await Promise.all(items.slice(i, i + width).map(fn));
}

// ---- file -------------------------------------------------------------------------------------

/** A session file: `<storage key>.json` (see FileStore); every other name is not a session. */
const SESSION_FILE = /^([A-Za-z0-9_-]{16,128})\.json$/;
/** The file a FileStore keeps in a directory it created (see FileStore). */
const STORE_MARKER = '.sessionflow-store';
/** A file a FileStore may have written at the top of its directory: sessions and their locks. */
const FILE_STORE_FILE = /^[A-Za-z0-9_-]{16,128}\.json(\.lock(\.[0-9a-f]{16})*)?$/;

/**
 * A directory from before the marker: it has the store's `users/` index, and every plain file
 * in it is a session file, a lock or a dot-file (temp files, lock owners). Subdirectories are the
 * store's own layout. The store makes its own, stricter check before it writes.
 */
function looksLikeFileStore(entries: Dirent[]): boolean {
  if (!entries.some((e) => e.name === 'users' && e.isDirectory())) return false;
  return entries.every((e) => e.isDirectory() || e.name.startsWith('.') || FILE_STORE_FILE.test(e.name));
}

async function sessionFileNames(dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).filter((name) => SESSION_FILE.test(name));
}

/**
 * Admin mode: the directory must exist and be a session directory. 'empty' when it holds nothing
 * (created ahead of the application, or by a FileStore that never stored a session): then no
 * store call is made, since the first one would create the store's index in it.
 */
async function checkFileDir(dir: string, isDefault: boolean): Promise<'sessions' | 'empty'> {
  let entries: Dirent[];
  try {
    const stat = await fs.stat(dir);
    if (!stat.isDirectory())
      throw new StoreOpenError(
        'not-found',
        `${dir} is not a directory: check the path given to --store file:<dir>.`,
      );
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch (err) {
    if (err instanceof StoreOpenError) throw err;
    if (errorCode(err) === 'ENOENT') {
      throw new StoreOpenError(
        'not-found',
        isDefault
          ? `no session directory at ${dir}, the library's default: no application running as this user has stored a session there yet, or the application uses another directory (pass --store file:<dir>). Nothing was created.`
          : `no such directory: ${dir}. Check the path (the admin command never creates a directory).`,
      );
    }
    if (errorCode(err) === 'EACCES' || errorCode(err) === 'EPERM') {
      throw new StoreOpenError(
        'unreachable',
        `cannot read ${dir}: permission denied (run as the application's user).`,
        { cause: err },
      );
    }
    throw openFailure(`file (${dir})`, err);
  }
  if (entries.length === 0) return 'empty';
  // As FileStore decides: its marker, or (a directory from before the marker) only its own names.
  if (entries.some((e) => e.name === STORE_MARKER) || looksLikeFileStore(entries)) return 'sessions';
  throw new StoreOpenError(
    'not-found',
    `${dir} is not a sessionflow session directory (no ${STORE_MARKER} marker, no users/ index, no session files): check the path. Nothing was changed.`,
  );
}

/**
 * The metadata of a session file, read without the session's lock. FileStore rewrites a spare
 * inode in place before renaming it over the session file, so a reader in another process can
 * catch a version half written: it does not parse, and is read again (three tries).
 */
async function readFileMeta(path: string): Promise<SessionMeta | null> {
  for (let attempt = 1; ; attempt++) {
    const text = await fs.readFile(path, 'utf8');
    try {
      return asMeta((JSON.parse(text) as { meta?: unknown }).meta);
    } catch (err) {
      if (!(err instanceof SyntaxError) || attempt >= 3) throw err;
    }
  }
}

async function fileStats(dir: string, now: number, top: number): Promise<StoreStats> {
  const stats = new StatsBuilder();
  const names = await sessionFileNames(dir);
  await inBatches(names, 64, async (name) => {
    const id = name.slice(0, -'.json'.length);
    const path = join(dir, name);
    let stat: Awaited<ReturnType<typeof fs.stat>>;
    try {
      stat = await fs.stat(path);
    } catch {
      return; // removed meanwhile
    }
    // The file's mtime is its expiry (see FileStore).
    const live = Math.round(stat.mtimeMs) > now;
    let meta: SessionMeta | null = null;
    if (live) {
      try {
        meta = await readFileMeta(path);
      } catch (err) {
        if (errorCode(err) === 'ENOENT') return;
      }
    }
    stats.add(id, stat.size, meta, live);
  });
  return stats.result(top, true, []);
}

/** A user's live sessions from the FileStore's index (`users/<sha256(user)>/<key>`), read only. */
async function fileSessionsOf(dir: string, userId: string, now: number): Promise<SessionSummary[]> {
  const index = join(dir, 'users', createHash('sha256').update(userId).digest('base64url'));
  const keys = await fs.readdir(index).catch((err: unknown) => {
    if (errorCode(err) === 'ENOENT') return [] as string[];
    throw err;
  });
  const out: SessionSummary[] = [];
  for (const key of keys) {
    if (!isStorageKey(key)) continue;
    const path = join(dir, `${key}.json`);
    try {
      const stat = await fs.stat(path);
      if (Math.round(stat.mtimeMs) <= now) continue; // expired: its mtime is its expiry
      const meta = await readFileMeta(path);
      // A stray index entry (the session ended or changed user) is skipped, not pruned.
      if (meta && meta.userId === userId) out.push({ key, meta: { ...meta } });
    } catch (err) {
      if (errorCode(err) !== 'ENOENT' && !(err instanceof SyntaxError)) throw err;
    }
  }
  return out;
}

async function fileGcProgress(dir: string, now: number): Promise<GcProgress> {
  const before = (await sessionFileNames(dir)).length;
  const removed = async () => Math.max(0, before - (await sessionFileNames(dir)).length);
  return {
    async total() {
      // Removed so far, plus what is expired now among the rest; a file gone during the scan was
      // removed after the listing, so it counts as expired too.
      const names = await sessionFileNames(dir);
      let expired = 0;
      for (const name of names) {
        const stat = await fs.stat(join(dir, name)).catch(() => null);
        if (!stat || Math.round(stat.mtimeMs) <= now) expired++;
      }
      return Math.max(0, before - names.length) + expired;
    },
    done: removed,
  };
}

/** Runs a FileStore step whose refusal (unsafe or unusable directory) is a store error. */
function refusal<T>(make: () => T): T {
  try {
    return make();
  } catch (err) {
    if (err instanceof SessionError) throw new StoreOpenError('refused', err.message, { cause: err });
    throw err;
  }
}

// ---- Redis ------------------------------------------------------------------------------------

/** Escapes a key prefix for a SCAN MATCH pattern. */
function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

function asText(value: unknown): string {
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  return String(value);
}

/** An HGETALL reply (a RESP2 array or a RESP3 map) as field/value pairs. */
function pairs(reply: unknown): [string, string][] {
  const flat = flatHash(reply);
  const out: [string, string][] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) out.push([asText(flat[i]), asText(flat[i + 1])]);
  return out;
}

type ScanNode = (cursor: string, pattern: string) => Promise<[string, string[]]>;

async function redisStats(
  prefix: string,
  nodes: ScanNode[],
  hgetall: (key: string) => Promise<unknown>,
  top: number,
): Promise<StoreStats> {
  const stats = new StatsBuilder();
  const pattern = `${globEscape(prefix)}{*}`;
  const sessionKey = /^\{[A-Za-z0-9_-]{16,128}\}$/;
  for (const scan of nodes) {
    let cursor = '0';
    do {
      const [next, keys] = await scan(cursor, pattern);
      cursor = next;
      const mine = keys.filter((k) => k.startsWith(prefix) && sessionKey.test(k.slice(prefix.length)));
      await inBatches(mine, 128, async (key) => {
        const fields = pairs(await hgetall(key));
        if (fields.length === 0) return; // expired or deleted since the scan
        let bytes = 0;
        let meta: SessionMeta | null = null;
        for (const [field, value] of fields) {
          bytes += Buffer.byteLength(field) + Buffer.byteLength(value);
          if (field === 'meta') {
            try {
              meta = asMeta(JSON.parse(value));
            } catch {
              meta = null;
            }
          }
        }
        stats.add(key.slice(prefix.length + 1, -1), bytes, meta, true);
      });
    } while (cursor !== '0');
  }
  return stats.result(top, false, [
    'expired: Redis removes expired sessions by itself, so none are kept to count.',
  ]);
}

// ---- SQL --------------------------------------------------------------------------------------

/** How one SQL engine is queried by the admin command (read-only statements). */
interface SqlInspect {
  /** Rows of a statement; the statement carries no user input but the validated table name. */
  rows: (sql: string) => Promise<Record<string, unknown>[]>;
  /** Quoted table name. */
  table: string;
  /** Bytes of a row's record. */
  bytes: string;
  /** The row's `meta.createdAt` as a number. */
  createdAt: string;
}

const num = (value: unknown): number => (value === null || value === undefined ? 0 : Number(value));

async function sqlStats(q: SqlInspect, now: number, top: number): Promise<StoreStats> {
  const n = Math.floor(now);
  const live = `expires_at > ${n}`;
  const [totals] = await q.rows(
    `SELECT COUNT(*) AS total,
      COALESCE(SUM(CASE WHEN ${live} THEN 1 ELSE 0 END), 0) AS live,
      COALESCE(SUM(CASE WHEN ${live} AND user_id IS NOT NULL THEN 1 ELSE 0 END), 0) AS authenticated,
      COUNT(DISTINCT CASE WHEN ${live} THEN user_id END) AS users,
      COALESCE(SUM(CASE WHEN ${live} THEN ${q.bytes} ELSE 0 END), 0) AS bytes
    FROM ${q.table}`,
  );
  const cases = SIZE_BOUNDS.map((bound, i) => `WHEN ${q.bytes} < ${bound} THEN ${i}`).join(' ');
  const buckets = await q.rows(
    `SELECT CASE ${cases} ELSE ${SIZE_BOUNDS.length} END AS bucket, COUNT(*) AS n
    FROM ${q.table} WHERE ${live} GROUP BY 1`,
  );
  const [oldest] = await q.rows(
    `SELECT id, ${q.createdAt} AS created FROM ${q.table} WHERE ${live} ORDER BY ${q.createdAt} ASC, id LIMIT 1`,
  );
  const byUser = await q.rows(
    `SELECT user_id, COUNT(*) AS sessions FROM ${q.table}
    WHERE ${live} AND user_id IS NOT NULL GROUP BY user_id ORDER BY sessions DESC, user_id LIMIT ${Math.floor(top)}`,
  );
  const sizes = emptySizes();
  for (const row of buckets) sizes[num(row.bucket)]!.count = num(row.n);
  const liveCount = num(totals?.live);
  const authenticated = num(totals?.authenticated);
  return {
    count: num(totals?.total),
    live: liveCount,
    expired: num(totals?.total) - liveCount,
    corrupt: null,
    authenticated,
    anonymous: liveCount - authenticated,
    users: num(totals?.users),
    bytes: num(totals?.bytes),
    sizes,
    oldest: oldest ? { id: asText(oldest.id), createdAt: num(oldest.created) } : null,
    byUser: byUser.map((row) => ({ user: asText(row.user_id), sessions: num(row.sessions) })),
    notes: ['corrupt: not checked on SQL stores (rows are aggregated by the database, not parsed).'],
  };
}

async function sqlGcProgress(q: SqlInspect, now: number): Promise<GcProgress> {
  const expired = async () =>
    num((await q.rows(`SELECT COUNT(*) AS n FROM ${q.table} WHERE expires_at <= ${Math.floor(now)}`))[0]?.n);
  const before = await expired();
  return { total: async () => before, done: async () => Math.max(0, before - (await expired())) };
}

function noTable(table: string, where: string): StoreOpenError {
  return new StoreOpenError(
    'not-found',
    `no sessions table "${table}" in ${where}: no application has stored a session there yet, or it uses another table (--table) or database. Nothing was created.`,
  );
}

// ---- the URL ----------------------------------------------------------------------------------

const SUPPORTED =
  'file (default), file:<dir>, memory, redis://, redis-cluster://, memcached://, postgres://, mysql:// or sqlite:<path>';

/**
 * Builds a store from a URL, as the demo's `SESSION_STORE` and the admin CLI's `--store` take it
 * (drivers are imported only when chosen):
 * - `file` (default): the library's default directory (`new FileStore()`), or `<dataDir>/sessions`
 *   when `dataDir` is given (the demo); `file:/some/dir` names the directory itself;
 * - `memory`: in this process only, lost on restart (not in admin mode: the CLI cannot see an
 *   application's memory);
 * - `redis://host:6379` (node-redis), `redis-cluster://host:7101,host:7102` (Cluster);
 * - `memcached://host:11211,host:11212`;
 * - `postgres://user@host/db`, `mysql://user@host/db`, `sqlite:/path/to/file.db`.
 *
 * Throws {@link StoreOpenError} when the store cannot be opened.
 */
export async function storeFromUrl(
  value: string | undefined,
  options: StoreFromUrlOptions = {},
): Promise<SelectedStore> {
  const choice = (value ?? '').trim() || 'file';
  const scheme = (choice.includes(':') ? choice.slice(0, choice.indexOf(':')) : choice).toLowerCase();
  const admin = options.admin === true;
  const timeoutMs = options.timeoutMs ?? 3000;
  const takesPrefix = ['redis', 'rediss', 'redis-cluster', 'memcached'].includes(scheme);
  const takesTable = ['postgres', 'postgresql', 'mysql', 'mariadb', 'sqlite'].includes(scheme);
  if (options.prefix !== undefined && !takesPrefix) {
    throw new StoreOpenError(
      'bad-url',
      `a key prefix applies to Redis and Memcached stores only, not to ${scheme}.`,
    );
  }
  if (options.table !== undefined && !takesTable) {
    throw new StoreOpenError(
      'bad-url',
      `a table name applies to SQL stores only (postgres, mysql, sqlite), not to ${scheme}.`,
    );
  }
  const table = takesTable ? construct(() => checkTable(options.table ?? DEFAULT_TABLE)) : DEFAULT_TABLE;
  const prefixOption = options.prefix === undefined ? {} : { prefix: options.prefix };

  switch (scheme) {
    case 'file': {
      const explicit = choice.startsWith('file:') ? choice.replace(/^file:(\/\/)?/, '') : '';
      if (choice.startsWith('file:') && !explicit) {
        throw new StoreOpenError(
          'bad-url',
          'file: needs a directory (file:/var/lib/app/sessions), or use file alone for the default directory.',
        );
      }
      if (!admin) {
        const store = explicit
          ? new FileStore({ dir: explicit })
          : options.dataDir !== undefined
            ? new FileStore({ dir: join(options.dataDir, 'sessions') })
            : new FileStore();
        return { store, label: `file (${store.dir})`, kind: 'file', close: nothing };
      }
      // Admin mode: the directory is checked before any store is built, since building the
      // default store prepares its directory, and none is ever created (create: false).
      const isDefault = !explicit;
      const dir = explicit || refusal(() => defaultSessionDir());
      const label = `file (${dir}${isDefault ? ', the default directory' : ''})`;
      const state = await checkFileDir(dir, isDefault);
      // An empty directory is never handed to a store call (the first one would write its index
      // there); the default one, when it holds sessions, gets the library's own checks (owner,
      // mode 0700, no symbolic link) now.
      const store =
        isDefault && state === 'sessions'
          ? refusal(() => new FileStore({ create: false }))
          : new FileStore({ dir, create: false });
      return {
        store,
        label,
        kind: 'file',
        close: nothing,
        empty: state === 'empty',
        listUser: (userId, now) => fileSessionsOf(dir, userId, now),
        stats: (now, top) => fileStats(dir, now, top),
        gcProgress: (now) => fileGcProgress(dir, now),
      };
    }
    case 'memory':
      if (admin) {
        throw new StoreOpenError(
          'bad-url',
          "the memory store lives inside the application's process: the admin command cannot see it. Use the store the application uses.",
        );
      }
      return { store: new MemoryStore(), label: 'memory (lost on restart)', kind: 'memory', close: nothing };
    case 'redis':
    case 'rediss': {
      parseUrl(choice, 'redis://127.0.0.1:6379');
      const { createClient } = await driver('redis', 'Redis', () => import('redis'));
      const { RedisStore } = await import('../stores/redis.js');
      const label = `redis (${redact(choice)})`;
      if (!admin) {
        const client = createClient({ url: choice });
        await client.connect();
        return {
          store: construct(() => new RedisStore({ client, ...prefixOption })),
          label,
          kind: 'redis',
          close: async () => void (await client.quit()),
        };
      }
      const client = createClient({
        url: choice,
        socket: { connectTimeout: timeoutMs, reconnectStrategy: false },
      });
      // Reported through connect() and each command; without a listener an error would crash.
      client.on('error', () => undefined);
      const store = construct(() => new RedisStore({ client, ...prefixOption }));
      try {
        await bounded(
          label,
          timeoutMs,
          client.connect().then(() => client.sendCommand(['PING'])),
          () => client.destroy(),
        );
      } catch (err) {
        if (client.isOpen) client.destroy();
        throw openFailure(label, err);
      }
      const prefix = store.prefix;
      return {
        store,
        label,
        kind: 'redis',
        close: async () => void (await client.quit().catch(() => client.destroy())),
        stats: (_now, top) =>
          redisStats(
            prefix,
            [
              async (cursor, pattern) => {
                const [next, keys] = (await client.sendCommand([
                  'SCAN',
                  cursor,
                  'MATCH',
                  pattern,
                  'COUNT',
                  '1000',
                ])) as [unknown, unknown[]];
                return [asText(next), keys.map(asText)];
              },
            ],
            (key) => client.sendCommand(['HGETALL', key]),
            top,
          ),
      };
    }
    case 'redis-cluster': {
      // ioredis, because node-redis 5's Cluster client does not re-route while a dead master
      // stays down (see docs/stores-redis.md); ioredis follows the replica's promotion.
      const nodes = hostPorts(choice, 'redis-cluster');
      const { Cluster } = await driver('ioredis', 'Redis Cluster', () => import('ioredis'));
      const { RedisStore } = await import('../stores/redis.js');
      const label = `redis cluster (${nodes.map((n) => `${n.host}:${n.port}`).join(', ')})`;
      if (!admin) {
        const cluster = new Cluster(nodes);
        return {
          store: construct(() => new RedisStore({ client: cluster, ...prefixOption })),
          label,
          kind: 'redis-cluster',
          close: async () => void (await cluster.quit()),
        };
      }
      const cluster = new Cluster(nodes, {
        clusterRetryStrategy: () => null,
        enableOfflineQueue: true,
        redisOptions: { connectTimeout: timeoutMs, maxRetriesPerRequest: 1 },
      });
      let lastError: unknown;
      cluster.on('error', (err: unknown) => {
        lastError = err;
      });
      const store = construct(() => new RedisStore({ client: cluster, ...prefixOption }));
      try {
        await bounded(
          label,
          timeoutMs,
          new Promise<void>((resolve, reject) => {
            cluster.once('ready', () => resolve());
            cluster.once('end', () => reject(lastError ?? new Error('the cluster closed the connection')));
          }),
          () => cluster.disconnect(),
        );
      } catch (err) {
        cluster.disconnect();
        if (err instanceof StoreOpenError) throw err;
        // ioredis reports a refused or dropped startup node only as "Connection is closed."
        const detail = messageOf((err as { lastNodeError?: unknown }).lastNodeError ?? err);
        throw new StoreOpenError(
          'unreachable',
          `cannot reach ${label}: no startup node answered (${detail}). Is the cluster running?`,
          { cause: err },
        );
      }
      const prefix = store.prefix;
      return {
        store,
        label,
        kind: 'redis-cluster',
        close: async () => void (await cluster.quit().catch(() => cluster.disconnect())),
        stats: (_now, top) =>
          redisStats(
            prefix,
            cluster.nodes('master').map((node) => async (cursor: string, pattern: string) => {
              const [next, keys] = (await node.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)) as [
                unknown,
                unknown[],
              ];
              return [asText(next), keys.map(asText)] as [string, string[]];
            }),
            (key) => cluster.call('HGETALL', key),
            top,
          ),
      };
    }
    case 'memcached': {
      const servers = hostPorts(choice, 'memcached').map(
        (n) => `${n.host.includes(':') ? `[${n.host}]` : n.host}:${n.port}`,
      );
      const { default: Memcached } = await driver('memcached', 'Memcached', () => import('memcached'));
      const { MemcachedStore, recommendedMemcachedOptions } = await import('../stores/memcached.js');
      const label = `memcached (${servers.join(', ')})`;
      const client = new Memcached(servers, { ...recommendedMemcachedOptions });
      const store = construct(() => new MemcachedStore(client, prefixOption));
      const close = async () => client.end();
      if (!admin) return { store, label, kind: 'memcached', close };
      // Every server must answer: keys are spread over all of them.
      const probe = new Promise<void>((resolve, reject) => {
        client.version((err: unknown) => (err ? reject(err) : resolve()));
      });
      try {
        await bounded(label, timeoutMs, probe, () => client.end());
      } catch (err) {
        client.end();
        throw openFailure(label, err);
      }
      return {
        store,
        label,
        kind: 'memcached',
        close,
        serverItems: () =>
          bounded(
            label,
            timeoutMs,
            new Promise<{ items: number; bytes: number }>((resolve, reject) => {
              client.stats((err: unknown, list: unknown) => {
                if (err) return reject(err);
                const servers = (Array.isArray(list) ? list : [list]) as Record<string, unknown>[];
                resolve({
                  items: servers.reduce((sum, s) => sum + num(s.curr_items), 0),
                  bytes: servers.reduce((sum, s) => sum + num(s.bytes), 0),
                });
              });
            }),
            () => undefined,
          ),
      };
    }
    case 'postgres':
    case 'postgresql': {
      const url = parseUrl(choice, 'postgres://user@127.0.0.1:5432/app');
      const { default: pg } = await driver('pg', 'PostgreSQL', () => import('pg'));
      const { PostgresStore } = await import('../stores/postgres.js');
      const label = `postgres (${redact(choice)})`;
      if (!admin) {
        // A bounded connect: an unreachable server answers 503 within a second, not after the OS's timeout.
        const pool = new pg.Pool({ connectionString: choice, connectionTimeoutMillis: 1000 });
        const store = new PostgresStore(pool, { table });
        await store.migrate();
        return { store, label, kind: 'postgres', close: () => pool.end() };
      }
      const pool = new pg.Pool({ connectionString: choice, connectionTimeoutMillis: timeoutMs, max: 3 });
      pool.on('error', () => undefined);
      const store = new PostgresStore(pool, { table });
      const close = () => pool.end().catch(() => undefined);
      let found: unknown;
      try {
        const result = await bounded(
          label,
          timeoutMs,
          pool.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [`"${table}"`]),
          close,
        );
        found = result.rows[0]?.t;
      } catch (err) {
        void close();
        throw openFailure(label, err);
      }
      if (!found) {
        await close();
        throw noTable(
          table,
          `database ${decodeURIComponent(url.pathname.slice(1)) || '(default)'} (${label})`,
        );
      }
      const inspect: SqlInspect = {
        rows: async (sql) => (await pool.query(sql)).rows,
        table: `"${table}"`,
        bytes: '(octet_length(meta::text) + octet_length(data::text))',
        createdAt: "(meta ->> 'createdAt')::float8",
      };
      return {
        store,
        label,
        kind: 'postgres',
        close,
        stats: (now, top) => sqlStats(inspect, now, top),
        gcProgress: (now) => sqlGcProgress(inspect, now),
      };
    }
    case 'mysql':
    case 'mariadb': {
      const normalized = choice.replace(/^mariadb:/i, 'mysql:');
      const url = parseUrl(normalized, 'mysql://user@127.0.0.1:3306/app');
      const mysql = await driver('mysql2', 'MySQL/MariaDB', () => import('mysql2/promise'));
      const { MySqlStore } = await import('../stores/mysql.js');
      const label = `mysql (${redact(choice)})`;
      if (!admin) {
        const pool = mysql.createPool({ uri: normalized, connectTimeout: 1000 });
        const store = new MySqlStore(pool, { table });
        await store.migrate();
        return { store, label, kind: 'mysql', close: () => pool.end() };
      }
      if (url.pathname.length <= 1) {
        throw new StoreOpenError(
          'bad-url',
          `the MySQL URL names no database: add it, e.g. mysql://user@host:3306/app.`,
        );
      }
      const pool = mysql.createPool({ uri: normalized, connectTimeout: timeoutMs, connectionLimit: 3 });
      const close = () => pool.end().catch(() => undefined);
      const store = new MySqlStore(pool, { table });
      let present = 0;
      try {
        const [rows] = await bounded(
          label,
          timeoutMs,
          pool.query(
            'SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?',
            [table],
          ),
          close,
        );
        present = num((rows as Record<string, unknown>[])[0]?.n);
      } catch (err) {
        void close();
        throw openFailure(label, err);
      }
      if (present === 0) {
        await close();
        throw noTable(table, `database ${decodeURIComponent(url.pathname.slice(1))} (${label})`);
      }
      const inspect: SqlInspect = {
        rows: async (sql) => (await pool.query(sql))[0] as Record<string, unknown>[],
        table: `\`${table}\``,
        bytes: '(LENGTH(meta) + LENGTH(data))',
        createdAt: "(JSON_EXTRACT(meta, '$.createdAt') + 0)",
      };
      return {
        store,
        label,
        kind: 'mysql',
        close,
        stats: (now, top) => sqlStats(inspect, now, top),
        gcProgress: (now) => sqlGcProgress(inspect, now),
      };
    }
    case 'sqlite': {
      const file = choice.replace(/^sqlite:(\/\/)?/i, '');
      if (!file)
        throw new StoreOpenError(
          'bad-url',
          'sqlite: needs a database file (sqlite:/var/lib/app/sessions.db).',
        );
      const { default: Database } = await driver('better-sqlite3', 'SQLite', () => import('better-sqlite3'));
      const { SqliteStore } = await import('../stores/sqlite.js');
      const label = `sqlite (${file})`;
      if (admin) {
        const stat = await fs.stat(file).catch((err: unknown) => {
          if (errorCode(err) === 'ENOENT') return null;
          throw openFailure(label, err);
        });
        if (!stat)
          throw new StoreOpenError(
            'not-found',
            `no such database file: ${file}. Check the path (the admin command never creates one).`,
          );
      }
      let db: InstanceType<typeof Database>;
      try {
        db = admin
          ? new Database(file, { readonly: options.readOnly === true, fileMustExist: true })
          : new Database(file);
      } catch (err) {
        if (/bindings|NODE_MODULE_VERSION|invalid ELF/i.test(messageOf(err))) {
          throw new StoreOpenError(
            'driver-missing',
            `the 'better-sqlite3' package is installed but its native module did not load (${messageOf(err)}): reinstall it for this Node version (npm rebuild better-sqlite3).`,
            { cause: err },
          );
        }
        throw openFailure(label, err);
      }
      const close = async () => void db.close();
      const store = new SqliteStore(db, { table });
      if (!admin) {
        db.pragma('journal_mode = WAL');
        await store.migrate();
        return { store, label, kind: 'sqlite', close };
      }
      try {
        db.pragma(`busy_timeout = ${Math.floor(timeoutMs)}`);
        const row = db
          .prepare("SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?")
          .get(table) as { n: number } | undefined;
        if (!row?.n) throw noTable(table, file);
      } catch (err) {
        db.close();
        if (err instanceof StoreOpenError) throw err;
        throw openFailure(label, err);
      }
      const inspect: SqlInspect = {
        rows: async (sql) => db.prepare(sql).all() as Record<string, unknown>[],
        table: `"${table}"`,
        bytes: '(length(CAST(meta AS BLOB)) + length(CAST(data AS BLOB)))',
        createdAt: "json_extract(meta, '$.createdAt')",
      };
      return {
        store,
        label,
        kind: 'sqlite',
        close,
        stats: (now, top) => sqlStats(inspect, now, top),
        gcProgress: (now) => sqlGcProgress(inspect, now),
      };
    }
    default:
      throw new StoreOpenError(
        'bad-url',
        `store ${JSON.stringify(redact(choice))} is not supported; use ${SUPPORTED}.`,
      );
  }
}
