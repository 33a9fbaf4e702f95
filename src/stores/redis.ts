import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { SessionError } from '../errors.js';
import {
  asMeta,
  CorruptLog,
  checkDelta,
  checkRecord,
  checkStorageKey,
  flatHash,
  isStorageKey,
  list,
} from './kit.js';
import { Budget, ClientErrorLog, checkTimeout, DEFAULT_TIMEOUT_MS, withDeadline } from './sql-common.js';
import {
  type CommitGuard,
  type CommitResult,
  isLiveTtl,
  type SessionDelta,
  type SessionMeta,
  type SessionStore,
  type SessionSummary,
  type StoredSession,
} from './store.js';

/**
 * Per-command options of node-redis v5: a command still waiting to be written (offline queue,
 * reconnection) is dropped when `abortSignal` fires.
 */
export interface NodeRedisCommandOptions {
  abortSignal?: AbortSignal;
  /** node-redis v4's name for `abortSignal`. */
  signal?: AbortSignal;
}

/** The part of a node-redis v5 client (`createClient`, `createClientPool`) the store uses. */
export interface NodeRedisClientLike {
  sendCommand(args: string[], options?: NodeRedisCommandOptions): Promise<unknown>;
  /** The connection is up and commands are written as they come (node-redis `isReady`). */
  readonly isReady?: boolean;
}

/** The part of a node-redis v5 cluster (`createCluster`) the store uses. */
export interface NodeRedisClusterLike {
  sendCommand(
    firstKey: string,
    isReadonly: boolean,
    args: string[],
    options?: NodeRedisCommandOptions,
  ): Promise<unknown>;
  readonly masters: unknown;
}

/** The part of a node-redis v5 Sentinel client (`createSentinel`) the store uses. */
export interface NodeRedisSentinelLike {
  sendCommand(isReadonly: boolean, args: string[], options?: NodeRedisCommandOptions): Promise<unknown>;
  use<T>(
    fn: (client: {
      sendCommand(isReadonly: boolean, args: string[], options?: NodeRedisCommandOptions): Promise<unknown>;
    }) => Promise<T>,
  ): Promise<T>;
  getMasterNode(): unknown;
}

/** A pipeline of an ioredis v5 client or cluster. */
export interface IoRedisPipelineLike {
  call(command: string, ...args: (string | number)[]): IoRedisPipelineLike;
  exec(): Promise<[Error | null, unknown][] | null>;
}

/** The part of an ioredis v5 `Redis` (standalone or Sentinel) or `Cluster` the store uses. */
export interface IoRedisLike {
  readonly isCluster: boolean;
  /** The client's options; a Cluster's `scaleReads` says where read-only commands go. */
  readonly options?: object;
  call(command: string, ...args: (string | number)[]): Promise<unknown>;
  pipeline(): IoRedisPipelineLike;
}

/**
 * Any client RedisStore accepts: node-redis v5 or ioredis v5, standalone, Sentinel or Cluster, or a
 * node-redis v4 `createClient` (in legacy mode too) or `createCluster`.
 */
export type RedisClientLike =
  | NodeRedisClientLike
  | NodeRedisClusterLike
  | NodeRedisSentinelLike
  | IoRedisLike;

/** Ask Redis to confirm each write on replicas before the store answers (Redis `WAIT`). */
export interface RedisDurability {
  /** Replicas that must acknowledge each write; fewer within `timeoutMs` is an error. */
  replicas: number;
  /** How long one write may wait for its acknowledgements, in milliseconds (> 0). */
  timeoutMs: number;
}

/** Options of {@link RedisStore}. */
export interface RedisStoreOptions {
  /**
   * Your connected client: node-redis v5 or ioredis v5, standalone, Sentinel or Cluster, or a
   * node-redis v4 `createClient` (in legacy mode too) or `createCluster`.
   */
  client: RedisClientLike;
  /** Prepended to every key. Must not contain `{` or `}` (they would change the hash slot). @default 'sf:' */
  prefix?: string;
  /** Wait for replicas after each write (see docs/stores-redis.md). @default undefined (asynchronous replication) */
  durability?: RedisDurability;
  /**
   * Longest time one store operation may take, in milliseconds, including the client's own
   * queueing while it reconnects. Past it the operation fails with `SessionError`
   * `STORE_UNAVAILABLE` (the manager answers 503); with node-redis, its commands not yet sent
   * are dropped. With `durability`, it must be longer than `durability.timeoutMs`.
   * @default 1000, plus `durability.timeoutMs` when `durability` is set
   */
  timeoutMs?: number;
  /**
   * Called when a stored record cannot be parsed; the session is then treated as absent.
   * @default the manager's `warn` (see `setWarn`), else console.warn
   */
  onCorrupt?: (redisKey: string, error: Error) => void;
  /** Clock in milliseconds for the user index scores, for tests. @default Date.now */
  now?: () => number;
}

const STORE_NAME = 'RedisStore';
// Index entries are trimmed by their recorded expiry only once this much later, so clocks that
// disagree between app servers cannot drop a live session from the index.
const INDEX_SKEW_MS = 30_000;
// PEXPIRE rejects values whose deadline overflows; a session never needs more than decades.
const MAX_TTL_MS = 2 ** 40;
// Concurrent metadata reads in one `sessionsOf`, so a user with thousands of sessions does not
// flood the connection in one burst.
const META_BATCH = 256;
const META_FIELD = 'meta';
// Value fields carry this prefix so that no value name can collide with the meta field.
const VALUE_PREFIX = '.';

// ---- Lua ------------------------------------------------------------------------------------
// Every script but CREATE_INDEXED touches exactly one key (KEYS[1]), so it runs on the node that
// owns that key's slot and is atomic there, on Cluster as on a single server. CREATE_INDEXED
// touches a session and its user index, which lie in different slots: it is used only where one
// server holds every key (standalone, Sentinel, pool), never on Cluster.

// Numbers go through string.format: tostring() and cjson keep only 14 significant digits.
const LUA_HELPERS = `
local function num(v)
  if v == math.floor(v) and v > -1e15 and v < 1e15 then return string.format('%d', v) end
  return string.format('%.17g', v)
end
local function encode(t)
  local out = {}
  for k, v in pairs(t) do
    local kind, s = type(v), nil
    if kind == 'number' then s = num(v)
    elseif kind == 'string' then s = cjson.encode(v)
    elseif kind == 'boolean' then s = tostring(v)
    elseif v == cjson.null then s = 'null'
    else s = cjson.encode(v) end
    out[#out + 1] = cjson.encode(tostring(k)) .. ':' .. s
  end
  return '{' .. table.concat(out, ',') .. '}'
end
local function tag(v)
  if type(v) == 'string' then return '=' .. v end
  if type(v) == 'number' then return '=' .. num(v) end
  return ''
end
local function decodeMeta(raw)
  if not raw then return nil end
  local ok, meta = pcall(cjson.decode, raw)
  if ok and type(meta) == 'table' then return meta end
  return nil
end
-- The same test as asMeta in kit.ts: what load would treat as corrupt, commit treats as absent.
local function liveMeta(raw)
  local meta = decodeMeta(raw)
  if meta and type(meta.createdAt) == 'number' and type(meta.lastSeenAt) == 'number'
    and type(meta.deadline) == 'number' then return meta end
  return nil
end
-- Whether the record at KEYS[1] is the one that a create with this meta JSON writes: same
-- handle, a fresh random value that only one create carries. Then that create ran already and
-- a client sent it again after losing the reply (see COMMIT).
local function createdBefore(metaJson)
  local ok, new = pcall(cjson.decode, metaJson)
  if not ok or type(new) ~= 'table' or type(new.h) ~= 'string' then return false end
  local old = decodeMeta(redis.call('HGET', KEYS[1], '${META_FIELD}'))
  return old ~= nil and old.h == new.h
end
-- Lua's unpack has a stack limit: large argument lists go in chunks of 1000.
local function each(cmd, first, last)
  for i = first, last, 1000 do
    redis.call(cmd, KEYS[1], unpack(ARGV, i, math.min(i + 999, last)))
  end
end
`;

interface Script {
  readonly source: string;
  readonly sha: string;
  /** A script that only reads: sent late it does no harm (see `#read`). */
  readonly read?: true;
  /**
   * The one command the script runs (it takes no arguments), for a client that sends that
   * command to the key's master anyway (see `Driver.run`): the same reply, without the script's
   * cost on the server.
   */
  readonly plain?: (key: string) => string[];
}

function script(body: string, helpers = false): Script {
  const source = helpers ? `${LUA_HELPERS}\n${body}` : body;
  return { source, sha: createHash('sha1').update(source).digest('hex') };
}

// Reads are scripts only where a plain read could be routed to a replica (ioredis Cluster with
// `scaleReads`): every other client sends the plain command to the key's master.
const LOAD: Script = {
  ...script(`return redis.call('HGETALL', KEYS[1])`),
  read: true,
  plain: (key) => ['HGETALL', key],
};

const META: Script = {
  ...script(`return redis.call('HGET', KEYS[1], '${META_FIELD}')`),
  read: true,
  plain: (key) => ['HGET', key, META_FIELD],
};

// ARGV: ttl, meta JSON, then field/value pairs.
const CREATE = script(
  `
if redis.call('EXISTS', KEYS[1]) == 1 then
  if createdBefore(ARGV[2]) then return 1 end
  return 0
end
if tonumber(ARGV[1]) <= 0 then return 1 end
redis.call('HSET', KEYS[1], '${META_FIELD}', ARGV[2])
each('HSET', 3, #ARGV)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
`,
  true,
);

// ARGV: ttl, meta patch ('' or [set, removed]), handle guard ('' none, '=' .. handle), user
// guard ('' none, '-' no user, '=' .. userId), count of unset fields, count of retained fields
// ('-1' without retain), the unset fields, the retained fields, the set pairs.
// Returns {0} gone, {3} gone because the metadata is unreadable, {2, userTag} conflict (nothing
// written), {0, userTag} deleted for a non-positive TTL, {1, previousUserTag, userTag, deadline}
// written (or found written by an earlier run of the same handle-moving commit, with the
// previous user then unknown: the current one stands for it). The previous user lets the caller
// fix the index of a user change.
const COMMIT = script(
  `
local raw = redis.call('HGET', KEYS[1], '${META_FIELD}')
local meta = liveMeta(raw)
if not meta then
  if raw then return {3} end
  return {0}
end
local before = tag(meta.userId)
local function deadlineOf(m)
  if type(m.deadline) == 'number' then return num(m.deadline) end
  return ''
end
local function refused()
  -- A commit that moves the handle (ID change, login) sets a new handle that only it can set
  -- (from a fresh random token). Found in place, it means this very commit ran already and a
  -- client sent it again after losing the reply (ioredis re-sends unanswered commands after a
  -- reconnect, node-redis Sentinel retries on the new master): it answers as the first run did.
  if ARGV[2] ~= '' and ARGV[3] ~= '' and type(meta.h) == 'string' then
    local moved = cjson.decode(ARGV[2])[1].h
    if moved == meta.h then return {1, before, before, deadlineOf(meta)} end
  end
  return {2, before}
end
if ARGV[3] ~= '' and (type(meta.h) ~= 'string' or '=' .. meta.h ~= ARGV[3]) then
  return refused()
end
if ARGV[4] == '-' then
  if meta.userId ~= nil and meta.userId ~= cjson.null then return refused() end
elseif ARGV[4] ~= '' then
  if type(meta.userId) ~= 'string' or '=' .. meta.userId ~= ARGV[4] then return refused() end
end
if tonumber(ARGV[1]) <= 0 then
  redis.call('UNLINK', KEYS[1])
  return {0, before}
end
local nunset = tonumber(ARGV[5])
local nretain = tonumber(ARGV[6])
local setFrom = 7 + nunset + math.max(nretain, 0)
if nretain >= 0 then
  local keep = {}
  for i = 7 + nunset, setFrom - 1 do keep[ARGV[i]] = true end
  for i = setFrom, #ARGV, 2 do keep[ARGV[i]] = true end
  local drop = {}
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 1) == '${VALUE_PREFIX}' and not keep[field] then drop[#drop + 1] = field end
  end
  for i = 1, #drop, 1000 do
    redis.call('HDEL', KEYS[1], unpack(drop, i, math.min(i + 999, #drop)))
  end
end
each('HDEL', 7, 6 + nunset)
each('HSET', setFrom, #ARGV)
if ARGV[2] ~= '' then
  local patch = cjson.decode(ARGV[2])
  for k, v in pairs(patch[1]) do meta[k] = v end
  for _, k in ipairs(patch[2]) do meta[k] = nil end
  redis.call('HSET', KEYS[1], '${META_FIELD}', encode(meta))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {1, before, tag(meta.userId), deadlineOf(meta)}
`,
  true,
);

// Returns the user tag of the deleted record so the caller can drop it from that user's index.
const DESTROY = script(
  `
local meta = decodeMeta(redis.call('HGET', KEYS[1], '${META_FIELD}'))
redis.call('UNLINK', KEYS[1])
if meta then return tag(meta.userId) end
return ''
`,
  true,
);

// User index (a sorted set, member = session key, score = an upper bound of its expiry).
// A score ending in .5 marks an entry written before its session was changed or, on Cluster,
// together with its creation ("pending"); the integer score, written once the change is done
// ("settled"), also re-adds the entry if it is missing. A reader never prunes a pending entry,
// whatever its record shows: the record may be on its way, or the change that will make it the
// user's may be running. A reader that finds the record its user's settles the entry itself.
// Readers prune settled entries only, and only if the score is unchanged since they read it; a
// pending score never equals a settled one. The integer part (the expiry bound) never
// decreases.
const LUA_INDEX_ADD = `
local function indexAdd(index, member, boundArg, state, trim, skew)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. trim)
  local bound = tonumber(boundArg)
  local current = redis.call('ZSCORE', index, member)
  if current then
    local base = math.floor(tonumber(current))
    if base > bound then bound = base end
  end
  local score = num(bound)
  if state == 'pending' then score = score .. '.5' end
  redis.call('ZADD', index, score, member)
  local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', index, num(math.ceil(tonumber(top[2])) + tonumber(skew)))
end
`;

// ARGV: member, bound (integer ms), 'pending' | 'settled', trim-before (ms), skew (ms).
const INDEX_ADD = script(
  `${LUA_INDEX_ADD}
indexAdd(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
`,
  true,
);

// A signed-in create in one atomic step, where one server holds both keys. KEYS: the session,
// its user's index. ARGV: ttl, meta JSON, member (storage key), bound, trim-before, skew, then
// field/value pairs. The index entry is written first: a script that failed half-way would leave
// a stale entry (pruned by readers), never a live session missing from its user's index.
const CREATE_INDEXED = script(
  `${LUA_INDEX_ADD}
if redis.call('EXISTS', KEYS[1]) == 1 then
  if createdBefore(ARGV[2]) then return 1 end
  return 0
end
if tonumber(ARGV[1]) <= 0 then return 1 end
indexAdd(KEYS[2], ARGV[3], ARGV[4], 'settled', ARGV[5], ARGV[6])
redis.call('HSET', KEYS[1], '${META_FIELD}', ARGV[2])
each('HSET', 7, #ARGV)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
`,
  true,
);

// ARGV: trim-before (ms). Returns member, score, member, score...
const INDEX_READ = script(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
`);

// ARGV: member, score as read, 'prune' | 'settle' triples. Acts on an entry only if its score is
// unchanged since it was read: 'prune' removes it, 'settle' turns a pending score into the
// settled one (its integer part, the same expiry bound).
const INDEX_TIDY = script(
  `
local changed = 0
for i = 1, #ARGV, 3 do
  local current = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if current and tonumber(current) == tonumber(ARGV[i + 1]) then
    if ARGV[i + 2] == 'prune' then
      changed = changed + redis.call('ZREM', KEYS[1], ARGV[i])
    else
      redis.call('ZADD', KEYS[1], 'XX', num(math.floor(tonumber(current))), ARGV[i])
      changed = changed + 1
    end
  end
end
return changed
`,
  true,
);

// ---- client adapter -------------------------------------------------------------------------

/**
 * What the store needs from a client: run a script or a command on the master owning `key`.
 * With `signal`, a command is not sent once it has fired (the operation has run out of time).
 */
interface Driver {
  /**
   * EVALSHA (EVAL on NOSCRIPT); with `wait`, then WAIT on the same connection. `key` is the
   * script's one key, or its keys (routed by the first: only where `oneServer`). A script with a
   * `plain` form is sent as that command instead, on a client that routes it to the master too
   * (all node-redis clients, which send every command as a write; ioredis unless a Cluster
   * reading from replicas).
   */
  run(
    s: Script,
    key: string | readonly string[],
    args: string[],
    wait?: RedisDurability,
    signal?: AbortSignal,
  ): Promise<unknown>;
  /** A single-key write command. */
  write(key: string, args: string[], signal?: AbortSignal): Promise<unknown>;
  /** One server holds every key (not a Cluster): a script may touch keys of different slots. */
  readonly oneServer: boolean;
  /**
   * True when a command sent now cannot wait in a queue past its operation's deadline: the
   * connection is up, so the client writes it on the next turn of the event loop (node-redis), or
   * the client never takes a queued command back anyway (ioredis). A read sent then needs no
   * `signal`. A node-redis Cluster: while every master's connection is up. False when unknown
   * (a pool, which then decides per connection; Sentinel).
   */
  sendsAtOnce(): boolean;
}

const keysOf = (key: string | readonly string[]): readonly string[] =>
  typeof key === 'string' ? [key] : key;

type Send = (args: string[], signal?: AbortSignal) => Promise<unknown>;

/**
 * A command's abort signal, under both names: node-redis v5 reads `abortSignal`, v4 `signal`. A
 * command that waits in the offline queue past its operation's deadline is then dropped, not
 * sent after the reconnect.
 */
const commandOptions = (signal: AbortSignal | undefined): NodeRedisCommandOptions | undefined =>
  signal && { abortSignal: signal, signal };

function isNoScript(err: unknown): boolean {
  return err instanceof Error && err.message.startsWith('NOSCRIPT');
}

function checkAcks(acked: unknown, wait: RedisDurability): void {
  const count = Number(acked);
  if (!(count >= wait.replicas)) {
    throw new SessionError(
      'STORE_UNAVAILABLE',
      `Redis WAIT: the write reached ${Number.isFinite(count) ? count : 0} of ${wait.replicas} required replicas within ${wait.timeoutMs} ms. It is on the master but may be lost on failover; check the replicas or lower durability.replicas.`,
    );
  }
}

async function evalOn(
  send: Send,
  s: Script,
  key: string | readonly string[],
  args: string[],
  signal?: AbortSignal,
): Promise<unknown> {
  const keys = keysOf(key);
  try {
    return await send(['EVALSHA', s.sha, String(keys.length), ...keys, ...args], signal);
  } catch (err) {
    // Script caches are per node and empty after a restart or failover: send the source once.
    if (!isNoScript(err)) throw err;
    return send(['EVAL', s.source, String(keys.length), ...keys, ...args], signal);
  }
}

/**
 * node-redis: `route(key)` sends to the master owning the key; `pinned(key, fn)` runs `fn` on a
 * single connection, since WAIT only counts the writes of the connection it is sent on. `reads`,
 * if given, sends the read-only scripts instead of `route` (a pool: see `driverFor`).
 */
function nodeRedisDriver(
  route: (key: string) => Send,
  pinned: <T>(key: string, fn: (send: Send) => Promise<T>) => Promise<T>,
  oneServer: boolean,
  { sendsAtOnce = () => false, reads }: { sendsAtOnce?: () => boolean; reads?: Send } = {},
): Driver {
  return {
    oneServer,
    sendsAtOnce,
    run(s, key, args, wait, signal) {
      const first = keysOf(key)[0]!;
      if (!wait) {
        const send = s.read && reads ? reads : route(first);
        return s.plain ? send(s.plain(first), signal) : evalOn(send, s, key, args, signal);
      }
      return pinned(first, async (send) => {
        const reply = await evalOn(send, s, key, args, signal);
        // No signal: once the script is sent, its WAIT must follow on the same connection.
        checkAcks(await send(['WAIT', String(wait.replicas), String(wait.timeoutMs)]), wait);
        return reply;
      });
    },
    write: (key, args, signal) => route(key)(args, signal),
  };
}

/** The error of a command the store did not send because its operation ran out of time. */
function notSent(): Error {
  return new Error('not sent: the operation ran out of time (timeoutMs)');
}

function ioRedisDriver(client: IoRedisLike): Driver {
  // A Cluster client sends read-only commands to replicas unless `scaleReads` is 'master' (its
  // default); a script it always sends to the master.
  const scaleReads = client.isCluster
    ? (client.options as { scaleReads?: unknown } | undefined)?.scaleReads
    : undefined;
  const plainReads = scaleReads === undefined || scaleReads === 'master';
  // ioredis cannot take back a queued command: the store only stops sending new ones.
  const send: Send = ([command, ...args], signal) =>
    signal?.aborted ? Promise.reject(notSent()) : client.call(command!, ...args);
  // A pipeline goes to one node as one batch: on Cluster, the node owning the script's key,
  // which is where WAIT must run. A keyless WAIT sent alone would go to a random node.
  const pipelined = async (
    command: string,
    body: string,
    key: string | readonly string[],
    args: string[],
    wait: RedisDurability,
  ) => {
    const keys = keysOf(key);
    const results = await client
      .pipeline()
      .call(command, body, String(keys.length), ...keys, ...args)
      .call('WAIT', wait.replicas, wait.timeoutMs)
      .exec();
    if (results?.length !== 2) throw new Error('ioredis returned no pipeline results');
    const [[scriptError, reply], [waitError, acked]] = results as [
      [Error | null, unknown],
      [Error | null, unknown],
    ];
    if (scriptError) throw scriptError;
    if (waitError) throw waitError;
    checkAcks(acked, wait);
    return reply;
  };
  return {
    oneServer: !client.isCluster,
    sendsAtOnce: () => true,
    async run(s, key, args, wait, signal) {
      if (!wait) {
        if (s.plain && plainReads) return send(s.plain(keysOf(key)[0]!), signal);
        return evalOn(send, s, key, args, signal);
      }
      if (signal?.aborted) throw notSent();
      try {
        return await pipelined('EVALSHA', s.sha, key, args, wait);
      } catch (err) {
        if (!isNoScript(err)) throw err;
        return pipelined('EVAL', s.source, key, args, wait);
      }
    },
    write: (_key, args, signal) => send(args, signal),
  };
}

function has(target: object, name: string, kind: 'function' | 'any' = 'function'): boolean {
  if (!(name in target)) return false;
  return kind === 'any' || typeof (target as Record<string, unknown>)[name] === 'function';
}

/**
 * Whether the connection to every master of a node-redis Cluster is up (`isReady`), so that a
 * command routed now is written at once, whichever master owns its key. False while the Cluster
 * has no masters yet, and whenever one of them is down or reconnecting.
 */
function mastersReady(cluster: NodeRedisClusterLike): boolean {
  const masters = cluster.masters;
  if (!Array.isArray(masters) || masters.length === 0) return false;
  for (const master of masters as readonly { client?: { isReady?: unknown } }[]) {
    if (master?.client?.isReady !== true) return false;
  }
  return true;
}

function driverFor(client: RedisClientLike): Driver {
  if (typeof client !== 'object' || client === null) {
    throw new SessionError(
      'INVALID_OPTION',
      'RedisStore needs a `client`: a node-redis (v5 or v4) or ioredis v5 client.',
    );
  }
  // ioredis also has a `sendCommand`, so it is recognised first, by its `call` and `pipeline`.
  if (has(client, 'call') && has(client, 'pipeline') && has(client, 'isCluster', 'any')) {
    return ioRedisDriver(client as IoRedisLike);
  }
  // node-redis v4 in legacy mode (connect-redis 6 asked for it): callbacks on the client, the
  // promise API on `client.v4`, over the same connection.
  const legacy = client as {
    options?: { legacyMode?: unknown };
    v4?: NodeRedisClientLike;
    isReady?: boolean;
  };
  if (legacy.options?.legacyMode === true && typeof legacy.v4?.sendCommand === 'function') {
    const v4 = legacy.v4;
    const send: Send = (args, signal) => v4.sendCommand(args, commandOptions(signal));
    return nodeRedisDriver(
      () => send,
      (_key, fn) => fn(send),
      true,
      { sendsAtOnce: () => legacy.isReady === true },
    );
  }
  // node-redis v5's callback wrapper (`client.legacy()`) keeps the client to itself.
  if (Object.getPrototypeOf(client)?.constructor?.name === 'RedisLegacyClient') {
    throw new SessionError(
      'INVALID_OPTION',
      'RedisStore got the callback wrapper of a node-redis client (client.legacy()): pass the client itself.',
    );
  }
  if (has(client, 'sendCommand')) {
    if (has(client, 'masters', 'any') && has(client, 'nodeByAddress', 'any')) {
      const cluster = client as NodeRedisClusterLike;
      // Both commands routed by the same key reach the same master's single connection.
      const route =
        (key: string): Send =>
        (args, signal) =>
          cluster.sendCommand(key, false, args, commandOptions(signal));
      return nodeRedisDriver(route, (key, fn) => fn(route(key)), false, {
        sendsAtOnce: () => mastersReady(cluster),
      });
    }
    if (has(client, 'getMasterNode') && has(client, 'use')) {
      const sentinel = client as NodeRedisSentinelLike;
      const send: Send = (args, signal) => sentinel.sendCommand(false, args, commandOptions(signal));
      return nodeRedisDriver(
        () => send,
        (_key, fn) =>
          sentinel.use((leased) =>
            fn((args, signal) => leased.sendCommand(false, args, commandOptions(signal))),
          ),
        true,
      );
    }
    if (has(client, 'execute') && has(client, 'totalClients', 'any')) {
      const pool = client as NodeRedisClientLike & {
        execute<T>(fn: (c: NodeRedisClientLike) => Promise<T>): Promise<T>;
      };
      const send: Send = (args, signal) => pool.sendCommand(args, commandOptions(signal));
      // A read keeps its signal only where it matters: on a connection that is not up (its
      // offline queue would send the read after the reconnect), or once it has fired (the read
      // waited for a free connection past its deadline). A connected client writes it on the
      // next turn of the event loop, and the listener node-redis would add to the signal was
      // about a seventh of a load's CPU on a pool.
      const reads: Send = (args, signal) =>
        pool.execute((leased) =>
          leased.sendCommand(
            args,
            leased.isReady === true && signal?.aborted !== true ? undefined : commandOptions(signal),
          ),
        );
      return nodeRedisDriver(
        () => send,
        (_key, fn) =>
          pool.execute((leased) => fn((args, signal) => leased.sendCommand(args, commandOptions(signal)))),
        true,
        { reads },
      );
    }
    const single = client as NodeRedisClientLike;
    const send: Send = (args, signal) => single.sendCommand(args, commandOptions(signal));
    return nodeRedisDriver(
      () => send,
      (_key, fn) => fn(send),
      true,
      { sendsAtOnce: () => single.isReady === true },
    );
  }
  throw new SessionError(
    'INVALID_OPTION',
    'RedisStore did not recognise its `client`: pass a node-redis v5 client (createClient, createCluster, createSentinel, createClientPool), a node-redis v4 createClient or createCluster, or an ioredis v5 Redis or Cluster.',
  );
}

// ---- replies --------------------------------------------------------------------------------

/** A bulk string as text, whatever the client's type mapping (string, Buffer). */
function text(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  return String(value);
}

function untag(value: unknown): string | undefined {
  const s = text(value);
  return s?.startsWith('=') ? s.slice(1) : undefined;
}

/**
 * The `[set, removed]` patch the COMMIT script merges into the stored metadata. A field present
 * with the value `undefined` is removed (JSON would otherwise drop it silently and keep the old value).
 */
function metaPatch(meta: Partial<SessionMeta> | undefined): string {
  if (!meta) return '';
  const set: Record<string, unknown> = {};
  const removed: string[] = [];
  for (const [k, v] of Object.entries(meta)) {
    if (v === undefined) removed.push(k);
    else set[k] = v;
  }
  return JSON.stringify([set, removed]);
}

/** The guard as two COMMIT arguments: '' checks nothing, '=' + value must equal, '-' must be absent. */
function guardArgs(guard: CommitGuard | undefined): [string, string] {
  const handle = guard?.handle === undefined ? '' : `=${guard.handle}`;
  const userId = guard?.userId;
  return [handle, userId === undefined ? '' : userId === null ? '-' : `=${userId}`];
}

function ttlArg(ttlMs: number): string {
  return isLiveTtl(ttlMs) ? String(Math.min(Math.ceil(ttlMs), MAX_TTL_MS)) : '0';
}

/**
 * Sessions in Redis (standalone, Sentinel or Cluster) through your own node-redis v5 or ioredis
 * v5 client. One hash per session, changed only by Lua scripts on that one key, so every
 * contract guarantee is one atomic step in Redis; a per-user sorted set serves `sessionsOf`.
 * Layout, index consistency and failover behaviour: docs/stores-redis.md.
 *
 * Every operation is bounded by `timeoutMs` (1 s by default): when the server is down, stalled or
 * failing over, the request gets a 503 within it instead of waiting on the client's queue. The
 * store also listens for the client's `'error'` event, which would otherwise end the process
 * when the connection drops.
 *
 * @example
 * const client = await createClient({ url: 'redis://127.0.0.1:6379' }).connect();
 * const sessions = new SessionManager({ store: new RedisStore({ client }), secret });
 */
export class RedisStore implements SessionStore {
  // Redis expires records itself and the index trims itself on use, so there is no gc().
  readonly capabilities = { listByUser: true, gc: false, nativeTtl: true } as const;
  /** The key prefix in use (`sf:` unless configured). */
  readonly prefix: string;
  readonly #driver: Driver;
  readonly #durability: RedisDurability | undefined;
  readonly #corrupt: CorruptLog;
  readonly #clientErrors = new ClientErrorLog(STORE_NAME);
  readonly #now: () => number;
  /** The bound of one operation, in milliseconds. */
  readonly timeoutMs: number;

  constructor(options: RedisStoreOptions) {
    if (!options || typeof options !== 'object') {
      throw new SessionError('INVALID_OPTION', 'RedisStore needs options: { client, prefix?, durability? }.');
    }
    this.#driver = driverFor(options.client);
    const prefix = options.prefix ?? 'sf:';
    if (typeof prefix !== 'string' || /[{}]/.test(prefix)) {
      throw new SessionError(
        'INVALID_OPTION',
        'RedisStore `prefix` must be a string without `{` or `}`: braces select the Cluster hash slot, which the store sets itself.',
      );
    }
    this.prefix = prefix;
    const d = options.durability;
    if (d !== undefined) {
      if (
        !(
          Number.isInteger(d.replicas) &&
          d.replicas >= 1 &&
          Number.isInteger(d.timeoutMs) &&
          d.timeoutMs >= 1
        )
      ) {
        throw new SessionError(
          'INVALID_OPTION',
          'RedisStore `durability` needs integers `replicas` >= 1 and `timeoutMs` >= 1 (WAIT with 0 would block forever).',
        );
      }
      this.#durability = { replicas: d.replicas, timeoutMs: d.timeoutMs };
    }
    const waitMs = this.#durability?.timeoutMs ?? 0;
    this.timeoutMs = checkTimeout(STORE_NAME, options.timeoutMs, DEFAULT_TIMEOUT_MS + waitMs);
    if (this.timeoutMs <= waitMs) {
      throw new SessionError(
        'INVALID_OPTION',
        `RedisStore \`timeoutMs\` (${this.timeoutMs}) must be longer than \`durability.timeoutMs\` (${waitMs}): every write waits up to that long for its replicas.`,
      );
    }
    this.#clientErrors.watch(options.client);
    const onCorrupt = options.onCorrupt;
    this.#corrupt = new CorruptLog(
      onCorrupt ? (redisKey, reason) => onCorrupt(redisKey, new Error(reason)) : undefined,
    );
    this.#now = options.now ?? Date.now;
  }

  /** Corrupt records (unless `onCorrupt` is set) and client errors are reported here; the manager calls this. */
  setWarn(warn: (message: string) => void): void {
    this.#corrupt.attach(warn);
    this.#clientErrors.attach(warn);
  }

  /**
   * Runs one operation within `timeoutMs`. At the deadline the caller gets STORE_UNAVAILABLE and
   * `signal` fires: the steps up to the operation's main write carry it, so none of them is sent
   * late. What follows a main write that was sent (keeping the user index right) goes on.
   */
  #within<T>(operation: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const abort = new AbortController();
    return this.#bounded(
      operation,
      () => fn(abort.signal),
      () => abort.abort(),
    );
  }

  /**
   * A read within `timeoutMs`, like `#within`. A read sent late does no harm, so the signal only
   * keeps it from piling up in the client's offline queue during an outage: when the driver
   * `sendsAtOnce()`, the read goes without one. This is the load path of every request: an
   * AbortController, and the listener node-redis registers on its signal per command, cost about
   * half of a load's CPU in node-redis (14.4 -> 6.8 µs per load, bench/redis-load.ts; see
   * docs/stores-redis.md).
   */
  #read<T>(operation: string, fn: (signal: AbortSignal | undefined) => Promise<T>): Promise<T> {
    if (!this.#driver.sendsAtOnce()) return this.#within(operation, fn);
    return this.#bounded(operation, () => fn(undefined));
  }

  /** `start()`'s work within `timeoutMs`; at the deadline `expire` runs and the caller gets a 503. */
  #bounded<T>(operation: string, start: () => Promise<T>, expire?: () => void): Promise<T> {
    let work: Promise<T>;
    try {
      work = start();
    } catch (err) {
      return Promise.reject(err);
    }
    const ms = this.timeoutMs;
    return withDeadline(work, ms, () => {
      expire?.();
      return new Budget(STORE_NAME, operation, ms).error();
    });
  }

  /**
   * The Redis key of a session: the storage key as hash tag, so all of it lives in one slot.
   * A key that is not base64url never reaches Redis, which also rules out `{`/`}` changing the slot.
   */
  #hashKey(key: string): string {
    checkStorageKey(STORE_NAME, key);
    return `${this.prefix}{${key}}`;
  }

  /** The Redis key of a user's index: hashed, so a user id never appears in key names. */
  #indexKey(userId: string): string {
    return `${this.prefix}u:{${createHash('sha256').update(userId).digest('base64url')}}`;
  }

  #bound(ttl: string, deadline: unknown): number {
    const expires = this.#now() + Number(ttl);
    return Math.ceil(typeof deadline === 'number' && deadline > expires ? deadline : expires);
  }

  async #indexAdd(
    userId: string,
    key: string,
    bound: number,
    state: 'pending' | 'settled',
    signal?: AbortSignal,
  ): Promise<void> {
    const trim = this.#now() - INDEX_SKEW_MS;
    await this.#driver.run(
      INDEX_ADD,
      this.#indexKey(userId),
      [key, String(bound), state, String(trim), String(INDEX_SKEW_MS)],
      this.#durability,
      signal,
    );
  }

  async #indexRemove(userId: string, key: string): Promise<void> {
    const index = this.#indexKey(userId);
    await this.#driver.write(index, ['ZREM', index, key]);
  }

  /** The session, or null if absent, expired or unreadable (one `HGETALL`; see `LOAD`). */
  async load(key: string): Promise<StoredSession | null> {
    const redisKey = this.#hashKey(key);
    const reply = flatHash(
      await this.#read('load', (signal) => this.#driver.run(LOAD, redisKey, [], undefined, signal)),
    );
    if (reply.length === 0) return null;
    const values: Record<string, string> = Object.create(null);
    let rawMeta: string | null = null;
    for (let i = 0; i + 1 < reply.length; i += 2) {
      const field = text(reply[i]) ?? '';
      const value = text(reply[i + 1]) ?? '';
      if (field === META_FIELD) rawMeta = value;
      else if (field.startsWith(VALUE_PREFIX)) values[field.slice(VALUE_PREFIX.length)] = value;
    }
    const meta = this.#parseMeta(redisKey, rawMeta);
    return meta ? { meta, values } : null;
  }

  /** The metadata, or null after reporting it corrupt (never thrown at the request). */
  #parseMeta(redisKey: string, raw: string | null): SessionMeta | null {
    if (raw === null) {
      this.#corrupt.report(STORE_NAME, redisKey, 'no metadata field');
      return null;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      this.#corrupt.report(STORE_NAME, redisKey, 'metadata is not JSON');
      return null;
    }
    const meta = asMeta(parsed);
    if (!meta) this.#corrupt.report(STORE_NAME, redisKey, 'metadata is not a session record');
    return meta;
  }

  /**
   * Creates the session unless the key exists (false then). With a user, one round trip: where
   * one server holds every key, one script writes the record and its user index entry; on
   * Cluster, where they lie in different slots, the record and a pending index entry go to
   * their two masters at once.
   */
  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    const redisKey = this.#hashKey(key);
    checkRecord(STORE_NAME, record);
    const ttl = ttlArg(ttlMs);
    const userId = record.meta.userId;
    const indexed = userId !== undefined && ttl !== '0';
    const oneScript = indexed && this.#driver.oneServer;
    const bound = indexed ? this.#bound(ttl, record.meta.deadline) : 0;
    const args = [ttl, JSON.stringify(record.meta)];
    if (oneScript) {
      args.push(key, String(bound), String(this.#now() - INDEX_SKEW_MS), String(INDEX_SKEW_MS));
    }
    for (const [field, value] of Object.entries(record.values)) args.push(VALUE_PREFIX + field, value);
    if (oneScript) {
      const keys = [redisKey, this.#indexKey(userId)];
      return this.#within(
        'create',
        async (signal) =>
          Number(await this.#driver.run(CREATE_INDEXED, keys, args, this.#durability, signal)) === 1,
      );
    }
    if (indexed) {
      return this.#within('create', (signal) =>
        this.#createAcross(key, redisKey, userId, bound, args, signal),
      );
    }
    return this.#within(
      'create',
      async (signal) =>
        Number(await this.#driver.run(CREATE, redisKey, args, this.#durability, signal)) === 1,
    );
  }

  /**
   * A signed-in create on Cluster: the record and its user's index entry, in two slots, sent at
   * once. The entry is pending, and readers never prune a pending entry, so it may land before
   * the record. Until create returns, no cookie carries this session: what a failure leaves
   * behind needs no revoking. If the index write fails, the record is deleted and the create
   * throws; if the record's write fails, the pending entry stays, unlisted, until its expiry
   * bound has passed. Once both are written the entry is settled without waiting for it, so
   * that readers may prune it after the session has expired.
   */
  async #createAcross(
    key: string,
    redisKey: string,
    userId: string,
    bound: number,
    args: string[],
    signal: AbortSignal,
  ): Promise<boolean> {
    const [entry, record] = await Promise.allSettled([
      this.#indexAdd(userId, key, bound, 'pending', signal),
      this.#driver.run(CREATE, redisKey, args, this.#durability, signal),
    ]);
    if (record.status === 'rejected') throw record.reason;
    // The key is another session's (a 256-bit collision): nothing of this create was written but
    // the entry, which stays pending, unlisted, until its bound has passed.
    if (Number(record.value) !== 1) return false;
    if (entry.status === 'rejected') {
      await this.#driver.run(DESTROY, redisKey, []).catch(() => undefined);
      throw entry.reason;
    }
    // Not awaited: a pending entry is already safe from readers. If this write is lost, the
    // entry stays pending until its bound has passed or a reader that finds the record settles it.
    this.#indexAdd(userId, key, bound, 'settled').catch(() => undefined);
    return true;
  }

  /**
   * Checks the guard and merges the delta (retain, unset, set, meta patch, TTL) in one script:
   * 'gone' if the session is not there, 'conflict' if the guard does not hold, nothing written
   * in either case.
   */
  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    const redisKey = this.#hashKey(key);
    checkDelta(STORE_NAME, delta);
    const ttl = ttlArg(ttlMs);
    const retain = delta.retain;
    const args = [
      ttl,
      metaPatch(delta.meta),
      ...guardArgs(guard),
      String(delta.unset.length),
      retain ? String(retain.length) : '-1',
    ];
    for (const field of delta.unset) args.push(VALUE_PREFIX + field);
    if (retain) for (const field of retain) args.push(VALUE_PREFIX + field);
    for (const [field, value] of Object.entries(delta.set)) args.push(VALUE_PREFIX + field, value);
    return this.#within('commit', (signal) => this.#commit(key, redisKey, delta, ttl, args, signal));
  }

  async #commit(
    key: string,
    redisKey: string,
    delta: SessionDelta,
    ttl: string,
    args: string[],
    signal: AbortSignal,
  ): Promise<CommitResult> {
    const live = ttl !== '0';
    const nextUser = delta.meta?.userId;
    // A live session must always be in its user's index: add it before it becomes that user's.
    if (live && nextUser !== undefined) {
      await this.#indexAdd(nextUser, key, this.#bound(ttl, delta.meta?.deadline), 'pending', signal);
    }

    const reply = list(await this.#driver.run(COMMIT, redisKey, args, this.#durability, signal));
    const status = Number(reply[0]);
    // Nothing was written. The pending entry is left as it is: the record may belong to
    // `nextUser` already (a concurrent login that won, whose settled write settles it); if not,
    // it stays pending, unlisted, until its bound has passed.
    if (status === 2) return 'conflict';
    const previous = untag(reply[1]);
    if (status !== 1) {
      if (status === 3) this.#corrupt.report(STORE_NAME, redisKey, 'metadata is not a session record');
      if (previous !== undefined) await this.#indexRemove(previous, key);
      if (live && nextUser !== undefined) await this.#indexRemove(nextUser, key);
      return 'gone';
    }
    const user = untag(reply[2]);
    if (user !== undefined) {
      const stored = text(reply[3]);
      const deadline = stored ? Number(stored) : undefined;
      // The score must stay >= the record's expiry. The manager's TTL never outlives the
      // deadline, so its ordinary commits and touches cost no index write at all.
      const outlivesDeadline = deadline === undefined || this.#now() + Number(ttl) > deadline;
      if (
        nextUser !== undefined ||
        user !== previous ||
        outlivesDeadline ||
        delta.meta?.deadline !== undefined
      ) {
        await this.#indexAdd(user, key, this.#bound(ttl, deadline), 'settled');
      }
    }
    if (previous !== undefined && previous !== user) await this.#indexRemove(previous, key);
    return 'ok';
  }

  /** Updates metadata and TTL only, with the same 'gone' rule as commit (no guard, no conflict). */
  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'> {
    return (await this.commit(key, { set: {}, unset: [], meta }, ttlMs)) === 'ok' ? 'ok' : 'gone';
  }

  /** Deletes the session (idempotent), then its user index entry. */
  async destroy(key: string): Promise<void> {
    const redisKey = this.#hashKey(key);
    await this.#within('destroy', async (signal) => {
      const previous = untag(await this.#driver.run(DESTROY, redisKey, [], this.#durability, signal));
      // Removed after the record is gone: a crash in between leaves a stale entry, which the
      // next sessionsOf prunes, never a live session missing from the index.
      if (previous !== undefined) await this.#indexRemove(previous, key);
    });
  }

  /** The user's live sessions; prunes index entries that no longer match a live session. */
  async sessionsOf(userId: string): Promise<SessionSummary[]> {
    return this.#within('sessionsOf', (signal) => this.#sessionsOf(userId, signal));
  }

  async #sessionsOf(userId: string, signal: AbortSignal): Promise<SessionSummary[]> {
    const index = this.#indexKey(userId);
    // Up to META_BATCH reads carry this one signal, and node-redis listens on it per command.
    setMaxListeners(META_BATCH + 1, signal);
    const entries = list(
      await this.#driver.run(INDEX_READ, index, [String(this.#now() - INDEX_SKEW_MS)], undefined, signal),
    );
    const out: SessionSummary[] = [];
    const tidy: string[] = [];
    for (let start = 0; start < entries.length; start += META_BATCH * 2) {
      const batch: Promise<void>[] = [];
      for (let i = start; i + 1 < entries.length && i < start + META_BATCH * 2; i += 2) {
        const key = text(entries[i]) ?? '';
        const score = text(entries[i + 1]) ?? '';
        if (!isStorageKey(key)) {
          tidy.push(key, score, 'prune');
          continue;
        }
        batch.push(
          this.#driver.run(META, this.#hashKey(key), [], undefined, signal).then((raw) => {
            const rawMeta = text(raw);
            const meta = rawMeta === null ? null : this.#parseMeta(this.#hashKey(key), rawMeta);
            const pending = !Number.isInteger(Number(score));
            if (meta && meta.userId === userId) {
              out.push({ key, meta });
              if (pending) tidy.push(key, score, 'settle');
            } else if (!pending) {
              tidy.push(key, score, 'prune');
            }
            // A pending entry that does not match is kept: its record may be on its way (a
            // signed-in create on Cluster), or a login may be about to make it this user's. It
            // goes when its writer settles or removes it, or once its bound has passed.
          }),
        );
      }
      await Promise.all(batch);
    }
    if (tidy.length > 0) await this.#driver.run(INDEX_TIDY, index, tidy, undefined, signal);
    return out;
  }
}
