#!/usr/bin/env node
/**
 * sessionflow's admin command: collect expired sessions from cron, list and count sessions,
 * revoke one session or all of a user's. The store is named by URL, as for the demo; docs/cli.md
 * has every command, flag and exit code.
 *
 *   sessionflow gc       --store file:/var/lib/app/sessions
 *   sessionflow sessions --store postgres://app@db/app --user 42
 *   sessionflow stats    --store redis://127.0.0.1:6379 --json
 *   sessionflow revoke   --store redis://127.0.0.1:6379 --user 42 [--except <id>]
 *   sessionflow revoke   --store redis://127.0.0.1:6379 --id <session id>
 *
 * Session ids are record ids (`session.id`): safe to print, useless as cookies.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { SessionError } from '../errors.js';
import { isStorageKey } from '../stores/kit.js';
import type { SessionSummary } from '../stores/store.js';
import {
  emptyStats,
  type GcProgress,
  type SelectedStore,
  StoreOpenError,
  storeFromUrl,
} from './store-from-url.js';

/** Exit codes scripts can rely on (docs/cli.md). */
export const EXIT = {
  /** Done. */
  ok: 0,
  /** Nothing matched: no such session, or a user with no live session. */
  nothingMatched: 1,
  /** Usage: unknown command or flag, missing or malformed argument, bad store URL. */
  usage: 2,
  /** The store cannot be used: unreachable, driver missing, directory/table missing, failed. */
  store: 3,
} as const;

type Command = 'gc' | 'sessions' | 'revoke' | 'stats';
type Flag = 'store' | 'prefix' | 'table' | 'timeout' | 'json' | 'help' | 'user' | 'id' | 'except' | 'top';

const STORE_FLAGS: Flag[] = ['store', 'prefix', 'table', 'timeout', 'json', 'help'];

const COMMON = `store options:
  --store <url>      the store (default: file, the library's default directory):
                       file | file:<dir> | redis://host:6379 | redis-cluster://h:p,h:p
                       memcached://h:p[,h:p] | postgres://user@host/db | mysql://user@host/db
                       sqlite:<path>
  --prefix <prefix>  key prefix, if the application set one (Redis, Memcached; default sf:)
  --table <name>     table name, if the application set one (SQL; default sessionflow_sessions)
  --timeout <s>      longest wait for the server to answer (default 3)
  --json             one JSON object on stdout (errors: a JSON object on stderr)
  -h, --help         this help

exit codes: 0 done, 1 nothing matched, 2 usage error, 3 store unusable (unreachable,
  driver missing, no such directory or table). See docs/cli.md.`;

const COMMANDS: Record<Command, { flags: Flag[]; summary: string; usage: string }> = {
  gc: {
    flags: [],
    summary: 'remove expired sessions (file, SQL; Redis and Memcached expire by themselves)',
    usage: `usage: sessionflow gc [--store <url>] [--json]

Removes expired sessions. Run it from cron on file and SQL stores; on Redis and Memcached the
server expires sessions itself and gc has nothing to do. A long run shows a progress bar when
stdout is a terminal.`,
  },
  sessions: {
    flags: ['user'],
    summary: "list a user's live sessions",
    usage: `usage: sessionflow sessions --user <user id> [--store <url>] [--json]

Lists the user's live sessions: id, created, last seen, absolute deadline. Reads only: nothing is
created or migrated. Exit code 1 when the user has no live session. Memcached cannot list.`,
  },
  revoke: {
    flags: ['user', 'id', 'except'],
    summary: 'end one session (--id) or all sessions of a user (--user [--except <id>])',
    usage: `usage: sessionflow revoke --id <session id> [--store <url>] [--json]
       sessionflow revoke --user <user id> [--except <session id>] [--store <url>] [--json]

--id ends one session, and with it every cookie it ever had (like manager.revoke(id));
exit code 1 if no live session has that id.
--user ends every live session of the user but --except (like manager.revokeAll); exit code 1
if there was none. On Memcached, which cannot list, every session of the user is revoked by a
per-user generation and the number of sessions ended is unknown.`,
  },
  stats: {
    flags: ['top'],
    summary: 'count sessions: live vs expired, sizes, oldest, sessions by user',
    usage: `usage: sessionflow stats [--top <n>] [--store <url>] [--json]

Counts sessions (live, expired awaiting gc, authenticated, anonymous), a size histogram of the
live ones, the oldest live session and the users with the most sessions (--top, default 10).
Reads only. Memcached cannot enumerate its keys: only the servers' item counts are shown.`,
  },
};

/** Own keys only: `toString` is not a command. */
const isCommand = (name: string): name is Command => Object.hasOwn(COMMANDS, name);

function overview(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `usage: sessionflow <command> [options]

commands:
${lines.join('\n')}

sessionflow <command> --help shows a command's options.

${COMMON}`;
}

const commandHelp = (command: Command) => `${COMMANDS[command].usage}\n\n${COMMON}`;

/** Options of {@link run} beyond the output writers, for tests and embedding. */
export interface RunOptions {
  /** Whether stdout is a terminal (the gc progress bar shows only then). @default process.stdout.isTTY */
  stdoutIsTTY?: boolean;
  /** Where the progress bar is drawn. @default process.stderr */
  progressStream?: NodeJS.WritableStream;
  /** A gc still running after this many milliseconds gets its progress bar. @default 500 */
  progressAfterMs?: number;
  /** Clock in milliseconds. @default Date.now */
  now?: () => number;
}

class UsageError extends Error {
  readonly command: Command | undefined;
  constructor(message: string, command?: Command) {
    super(message);
    this.command = command;
  }
}

/** A failure with a given exit code and a message for the operator. */
class Failure extends Error {
  readonly code: number;
  readonly reason: string;
  constructor(code: number, reason: string, message: string) {
    super(message);
    this.code = code;
    this.reason = reason;
  }
}

const STRING_OPTIONS = new Set([
  '--store',
  '--prefix',
  '--table',
  '--timeout',
  '--user',
  '--id',
  '--except',
  '--top',
]);
const BOOLEAN_OPTIONS = new Set(['--json', '--help', '-h', '--version']);

/**
 * `--id -Xy…` as `--id=-Xy…`: session ids are base64url, so one in 64 starts with a dash, which
 * parseArgs would otherwise refuse as an ambiguous value. A following token that is itself an
 * option (`--id --json`) is left alone, and reported as a missing value.
 */
function bindDashValues(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const next = argv[i + 1];
    if (
      STRING_OPTIONS.has(arg) &&
      next?.startsWith('-') &&
      next !== '--' &&
      !STRING_OPTIONS.has(next) &&
      !BOOLEAN_OPTIONS.has(next)
    ) {
      out.push(`${arg}=${next!}`);
      i++;
    } else {
      out.push(arg);
    }
  }
  return out;
}

function parse(argv: string[]) {
  return parseArgs({
    args: bindDashValues(argv),
    allowPositionals: true,
    strict: true,
    options: {
      store: { type: 'string' },
      prefix: { type: 'string' },
      table: { type: 'string' },
      timeout: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean' },
      user: { type: 'string' },
      id: { type: 'string' },
      except: { type: 'string' },
      top: { type: 'string' },
    },
  });
}

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: string;
    };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

const iso = (ms: number | undefined) =>
  ms === undefined || !Number.isFinite(ms) ? null : new Date(ms).toISOString();

function age(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172_800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86_400)} d`;
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function positiveNumber(value: string, flag: string, command: Command, integer: boolean): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new UsageError(
      `--${flag} needs a positive ${integer ? 'integer' : 'number'}, not ${JSON.stringify(value)}`,
      command,
    );
  }
  return n;
}

/** Runs one admin command; returns the process exit code. Output goes to the given writers. */
export async function run(
  argv: string[],
  out: (line: string) => void,
  err: (line: string) => void,
  options: RunOptions = {},
): Promise<number> {
  const asksHelp = argv.includes('--help') || argv.includes('-h');
  const wantsJson = argv.includes('--json');
  const positional = argv.find((a) => !a.startsWith('-'));
  const guessed = positional && isCommand(positional) ? positional : undefined;

  const fail = (code: number, reason: string, message: string, usage?: string) => {
    if (wantsJson) err(JSON.stringify({ error: { exitCode: code, reason, message } }));
    else err(usage ? `sessionflow: ${message}\n\n${usage}` : `sessionflow: ${message}`);
    return code;
  };

  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (e) {
    // `sessionflow gc --help --bogus` still helps.
    if (asksHelp) {
      out(guessed ? commandHelp(guessed) : overview());
      return EXIT.ok;
    }
    return fail(EXIT.usage, 'usage', (e as Error).message, guessed ? commandHelp(guessed) : overview());
  }
  const { values, positionals } = parsed;
  if (values.version) {
    out(values.json ? JSON.stringify({ version: version() }) : version());
    return EXIT.ok;
  }
  const [name, ...extra] = positionals;
  if (name === 'help') {
    const topic = extra[0];
    if (topic === undefined) out(overview());
    else if (isCommand(topic)) out(commandHelp(topic));
    else return fail(EXIT.usage, 'usage', `no command ${JSON.stringify(topic)}`, overview());
    return EXIT.ok;
  }
  if (name === undefined) {
    if (values.help) {
      out(overview());
      return EXIT.ok;
    }
    return fail(EXIT.usage, 'usage', 'no command given', overview());
  }
  if (!isCommand(name)) {
    return fail(EXIT.usage, 'usage', `unknown command ${JSON.stringify(name)}`, overview());
  }
  const command = name;
  if (values.help) {
    out(commandHelp(command));
    return EXIT.ok;
  }
  try {
    if (extra.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`, command);
    const allowed = new Set<string>([...STORE_FLAGS, ...COMMANDS[command].flags, 'version']);
    for (const flag of Object.keys(values)) {
      if (!allowed.has(flag)) throw new UsageError(`--${flag} is not an option of ${command}`, command);
    }
    return await execute(command, values, out, options);
  } catch (e) {
    if (e instanceof UsageError) return fail(EXIT.usage, 'usage', e.message, commandHelp(command));
    if (e instanceof Failure) return fail(e.code, e.reason, e.message);
    if (e instanceof StoreOpenError) {
      return fail(e.reason === 'bad-url' ? EXIT.usage : EXIT.store, e.reason, e.message);
    }
    // Option errors (prefix, table) arrive as StoreOpenError; one raised by a running store is
    // its refusal of what it found (a directory it does not own).
    if (e instanceof SessionError && e.code === 'INVALID_OPTION')
      return fail(EXIT.store, 'refused', e.message);
    const cause = (e as { cause?: unknown }).cause;
    const detail = cause instanceof Error && cause.message ? ` (${cause.message})` : '';
    return fail(EXIT.store, 'store-failed', `the store failed: ${(e as Error).message}${detail}`);
  }
}

type Values = ReturnType<typeof parse>['values'];

async function execute(
  command: Command,
  values: Values,
  out: (line: string) => void,
  options: RunOptions,
): Promise<number> {
  const json = values.json === true;
  const now = options.now ?? Date.now;
  // Arguments first: a usage error never waits for a server.
  const user = values.user;
  const id = values.id;
  if (command === 'sessions' && user === undefined)
    throw new UsageError('sessions needs --user <user id>', command);
  if (command === 'revoke') {
    if ((user === undefined) === (id === undefined)) {
      throw new UsageError('revoke needs either --id <session id> or --user <user id>', command);
    }
    if (values.except !== undefined && user === undefined) {
      throw new UsageError('--except goes with --user', command);
    }
    if (id !== undefined && !isStorageKey(id)) {
      throw new UsageError(
        `${JSON.stringify(id)} is not a session id (session.id: 43 letters, digits, - and _)`,
        command,
      );
    }
    if (values.except !== undefined && !isStorageKey(values.except)) {
      throw new UsageError(`--except ${JSON.stringify(values.except)} is not a session id`, command);
    }
  }
  if (user !== undefined && user === '') throw new UsageError('--user needs a user id', command);
  const top = values.top === undefined ? 10 : positiveNumber(values.top, 'top', command, true);
  const timeoutMs =
    values.timeout === undefined
      ? 3000
      : Math.round(positiveNumber(values.timeout, 'timeout', command, false) * 1000);

  const selected = await storeFromUrl(values.store, {
    admin: true,
    readOnly: command === 'sessions' || command === 'stats',
    prefix: values.prefix,
    table: values.table,
    timeoutMs,
  });
  try {
    switch (command) {
      case 'gc':
        return await gc(selected, json, out, options, now());
      case 'sessions':
        return await sessions(selected, user!, json, out);
      case 'revoke':
        return id !== undefined
          ? await revokeId(selected, id, json, out)
          : await revokeUser(selected, user!, values.except, json, out);
      default:
        return await stats(selected, top, json, out, now());
    }
  } finally {
    await selected.store.close?.().catch(() => undefined);
    await selected.close().catch(() => undefined);
  }
}

function emit(
  json: boolean,
  out: (line: string) => void,
  data: Record<string, unknown>,
  text: string[],
): void {
  if (json) out(JSON.stringify(data));
  else for (const line of text) out(line);
}

const cannotList = (selected: SelectedStore) =>
  new Failure(
    EXIT.usage,
    'not-supported',
    `${selected.label} cannot list sessions (Memcached cannot enumerate its keys). To end a user's sessions there, use revoke --user.`,
  );

/** The user's live sessions; `readOnly` (the sessions command) never lets the store write. */
async function listOf(selected: SelectedStore, user: string, readOnly: boolean): Promise<SessionSummary[]> {
  const { store } = selected;
  if (selected.empty) return [];
  if (readOnly && selected.listUser) return selected.listUser(user, Date.now());
  if (!store.capabilities.listByUser || !store.sessionsOf) throw cannotList(selected);
  return store.sessionsOf(user);
}

async function gc(
  selected: SelectedStore,
  json: boolean,
  out: (line: string) => void,
  options: RunOptions,
  now: number,
): Promise<number> {
  const { store, label } = selected;
  if (!store.capabilities.gc || !store.gc) {
    emit(json, out, { command: 'gc', store: label, removed: 0, selfExpiring: true }, [
      `${label}: expires sessions by itself; nothing to collect`,
    ]);
    return EXIT.ok;
  }
  if (selected.empty) {
    emit(json, out, { command: 'gc', store: label, removed: 0 }, [`${label}: removed 0 expired session(s)`]);
    return EXIT.ok;
  }
  const started = Date.now();
  const tty = options.stdoutIsTTY ?? process.stdout.isTTY === true;
  const progress = !json && tty && selected.gcProgress ? await selected.gcProgress(now) : undefined;
  const running = store.gc(now);
  let finished = false;
  const settled = running.then(
    () => {
      finished = true;
    },
    () => {
      finished = true;
    },
  );
  const bar = progress ? await followGc(progress, settled, () => finished, options) : undefined;
  let removed: number;
  try {
    removed = await running;
  } finally {
    bar?.stop();
  }
  emit(json, out, { command: 'gc', store: label, removed, ms: Date.now() - started }, [
    `${label}: removed ${removed} expired session(s)`,
  ]);
  return EXIT.ok;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Draws a progress bar for a gc still running after `progressAfterMs`, until it ends; returns the
 * bar, which the caller stops.
 */
async function followGc(
  progress: GcProgress,
  settled: Promise<void>,
  finished: () => boolean,
  options: RunOptions,
): Promise<cliProgress.SingleBar | undefined> {
  await Promise.race([settled, sleep(options.progressAfterMs ?? 500)]);
  if (finished()) return undefined;
  const total = await progress.total();
  const bar = new cliProgress.SingleBar(
    {
      stream: options.progressStream ?? process.stderr,
      format: 'gc [{bar}] {percentage}% | {value}/{total} expired sessions | {duration_formatted}',
      hideCursor: true,
      fps: 10,
    },
    cliProgress.Presets.legacy,
  );
  bar.start(total, Math.min(total, await progress.done()));
  while (!finished()) {
    await Promise.race([settled, sleep(200)]);
    if (finished()) break;
    const done = await progress.done().catch(() => undefined);
    if (done !== undefined) bar.update(Math.min(total, done));
  }
  // The run is over: the bar ends on what it removed (a session renewed meanwhile is not).
  const done = await progress.done().catch(() => total);
  bar.setTotal(done);
  bar.update(done);
  return bar;
}

function sessionView(s: SessionSummary) {
  return {
    id: s.key,
    user: s.meta.userId ?? null,
    createdAt: iso(s.meta.createdAt),
    lastSeenAt: iso(s.meta.lastSeenAt),
    deadline: iso(s.meta.deadline),
    authAt: iso(s.meta.authAt),
  };
}

async function sessions(selected: SelectedStore, user: string, json: boolean, out: (line: string) => void) {
  const list = await listOf(selected, user, true);
  list.sort((a, b) => a.meta.createdAt - b.meta.createdAt);
  emit(
    json,
    out,
    { command: 'sessions', store: selected.label, user, count: list.length, sessions: list.map(sessionView) },
    [
      ...list.map((s) => {
        const v = sessionView(s);
        return `${v.id}  created ${v.createdAt}  last seen ${v.lastSeenAt}  ends by ${v.deadline}`;
      }),
      `${list.length} live session(s) for user ${user}`,
    ],
  );
  return list.length > 0 ? EXIT.ok : EXIT.nothingMatched;
}

async function revokeId(selected: SelectedStore, id: string, json: boolean, out: (line: string) => void) {
  const { store, label } = selected;
  // The record id is stable across ID changes: destroying it ends every cookie the session had.
  const record = selected.empty ? null : await store.load(id);
  if (!record) {
    emit(json, out, { command: 'revoke', store: label, id, revoked: false }, [
      `no live session with id ${id} in ${label}; nothing revoked`,
    ]);
    return EXIT.nothingMatched;
  }
  await store.destroy(id);
  emit(json, out, { command: 'revoke', store: label, id, user: record.meta.userId ?? null, revoked: true }, [
    `revoked ${id}${record.meta.userId !== undefined ? ` (user ${record.meta.userId})` : ''}`,
  ]);
  return EXIT.ok;
}

async function revokeUser(
  selected: SelectedStore,
  user: string,
  except: string | undefined,
  json: boolean,
  out: (line: string) => void,
) {
  const { store, label } = selected;
  if (!store.capabilities.listByUser || !store.sessionsOf) {
    if (!store.revokeUser) throw cannotList(selected);
    await store.revokeUser(user, except);
    emit(
      json,
      out,
      { command: 'revoke', store: label, user, except: except ?? null, revoked: null, countKnown: false },
      [
        `revoked every session of user ${user}${except ? ` except ${except}` : ''}; ${label} cannot list sessions, so how many were ended is unknown`,
      ],
    );
    return EXIT.ok;
  }
  const list = await listOf(selected, user, false);
  let revoked = 0;
  for (const s of list) {
    if (s.key === except) continue;
    await store.destroy(s.key);
    revoked++;
  }
  emit(
    json,
    out,
    { command: 'revoke', store: label, user, except: except ?? null, revoked, countKnown: true },
    [
      revoked > 0
        ? `revoked ${revoked} session(s) of user ${user}`
        : `no live session of user ${user}${except ? ` besides ${except}` : ''}; nothing revoked`,
    ],
  );
  return revoked > 0 ? EXIT.ok : EXIT.nothingMatched;
}

async function stats(
  selected: SelectedStore,
  top: number,
  json: boolean,
  out: (line: string) => void,
  now: number,
): Promise<number> {
  const { label } = selected;
  if (!selected.stats) {
    const items = selected.serverItems ? await selected.serverItems() : null;
    const reason = `${label} cannot enumerate its keys: session count, live vs expired, sizes, oldest and sessions by user are unknown.`;
    emit(
      json,
      out,
      {
        command: 'stats',
        store: label,
        enumerable: false,
        count: null,
        live: null,
        expired: null,
        corrupt: null,
        authenticated: null,
        anonymous: null,
        users: null,
        bytes: null,
        sizes: null,
        oldest: null,
        byUser: null,
        servers: items,
        notes: [reason],
      },
      [
        `store: ${label}`,
        `not available: ${reason}`,
        ...(items
          ? [
              `servers hold ${items.items} item(s), ${bytes(items.bytes)} in all (every key of every application: sessions, user revocation records and anything else)`,
            ]
          : []),
      ],
    );
    return EXIT.ok;
  }
  const s = selected.empty ? emptyStats() : await selected.stats(now, top);
  const oldest = s.oldest
    ? {
        id: s.oldest.id,
        createdAt: iso(s.oldest.createdAt),
        ageSeconds: Math.round((now - s.oldest.createdAt) / 1000),
      }
    : null;
  const text = [
    `store: ${label}`,
    `sessions: ${s.count} stored: ${s.live} live, ${s.expired === null ? 'expired n/a' : `${s.expired} expired (gc removes them)`}${s.corrupt ? `, ${s.corrupt} unreadable` : ''}`,
    `live: ${s.authenticated} authenticated (${s.users} user(s)), ${s.anonymous} anonymous; ${bytes(s.bytes)} in all`,
    ...(s.sizes.length > 0
      ? ['sizes (live):', ...s.sizes.map((b) => `  ${b.label.padEnd(16)} ${b.count}`)]
      : []),
    `oldest: ${oldest ? `${oldest.id}, created ${oldest.createdAt} (${age(now - s.oldest!.createdAt)} ago)` : 'none'}`,
    ...(s.byUser.length > 0
      ? [
          `top users (of ${s.users}):`,
          ...s.byUser.map((u) => `  ${String(u.sessions).padStart(6)}  ${u.user}`),
        ]
      : []),
    ...s.notes.map((note) => `not available: ${note}`),
  ];
  emit(json, out, { command: 'stats', store: label, enumerable: true, ...s, oldest }, text);
  return EXIT.ok;
}

/**
 * True when this module is the program being run: `node dist/cli/main.js`, the npm bin
 * (`node_modules/.bin/sessionflow`, a symlink), `npx sessionflow`, `tsx src/cli/main.ts`. Paths
 * are compared after resolving symlinks, since Node runs the symlink's target while
 * `process.argv[1]` keeps the link.
 */
export function isMainModule(moduleUrl: string, argv1: string | undefined): boolean {
  if (!argv1) return false;
  let self: string;
  try {
    self = realpathSync(fileURLToPath(moduleUrl));
  } catch {
    return false;
  }
  // Node also runs `node dist/cli/main` (no extension) as dist/cli/main.js.
  for (const candidate of [argv1, `${argv1}.js`, `${argv1}.ts`]) {
    try {
      if (realpathSync(candidate) === self) return true;
    } catch {
      // not this one
    }
  }
  return false;
}

if (isMainModule(import.meta.url, process.argv[1])) {
  run(
    process.argv.slice(2),
    (line) => process.stdout.write(`${line}\n`),
    (line) => process.stderr.write(`${line}\n`),
  ).then(
    (code) => {
      process.exitCode = code;
      // Drivers may keep sockets open a moment after close; the answer is final.
      setTimeout(() => process.exit(code), 50).unref();
    },
    (e: unknown) => {
      process.stderr.write(`sessionflow: ${(e as Error).message}\n`);
      process.exit(EXIT.store);
    },
  );
}
