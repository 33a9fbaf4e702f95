import { SessionError } from './errors.js';
import type { AuditEvent } from './features/audit.js';
import type { GuessDetectionSettings } from './features/throttle.js';
import type { SessionStore } from './stores/store.js';

/** Cookie settings. Secure by default; relax only for local HTTP development. */
export interface CookieOptions {
  /**
   * Cookie name. A generic name, so the framework is not fingerprinted.
   * @default '__Host-id' when `secure` is true, otherwise 'id'
   */
  name?: string;
  /**
   * Send the cookie over HTTPS only. Turn off only for local HTTP development.
   * @default true
   */
  secure?: boolean;
  /** @default 'lax' */
  sameSite?: 'lax' | 'strict' | 'none';
  /** Must stay '/' with a `__Host-` name. @default '/' */
  path?: string;
  /** Not allowed with a `__Host-` name. @default undefined (host-only cookie) */
  domain?: string;
  /**
   * Lifetime of a persistent cookie in milliseconds; capped by `absoluteTimeout`. Expiry is always
   * enforced on the server; this only decides whether the browser keeps the cookie after closing.
   * @default undefined (a browser-session cookie)
   */
  maxAge?: number;
  /** CHIPS partitioned cookie. @default false */
  partitioned?: boolean;
}

/** Binding of a session to the client that created it (seed section 14). */
export interface BindingOptions {
  /** Compare a hash of the User-Agent header on every request. @default false */
  userAgent?: boolean;
  /**
   * Compare the client address, reduced to a network prefix so mobile users moving inside
   * their carrier's network stay logged in. `true` means /24 for IPv4 and /64 for IPv6.
   * @default false
   */
  ip?: boolean | { v4Prefix?: number; v6Prefix?: number };
  /** What a mismatch does: destroy the session (default) or only report it. @default 'destroy' */
  action?: 'destroy' | 'log';
}

/** Scheduled session-ID renewal (SM-24). All durations in milliseconds. */
export interface RenewalOptions {
  /** Age of an ID after which the next request that reaches commit gets a new one. */
  interval: number;
  /**
   * How long a renewed-away ID still serves requests already in flight (as an alias of the new
   * record, whose cookie the renewing response carries). Shorter than `interval` and `idleTimeout`.
   */
  grace: number;
  /**
   * What a renewed-away ID presented after its grace window does besides the
   * `session_use_after_expire` event: nothing more ('log'), or revoke every session of its user
   * ('revoke-user'; needs a store with `capabilities.listByUser`, otherwise it only logs).
   * @default 'log'
   */
  onReuse?: 'log' | 'revoke-user';
}

/** Concurrent-session limit per user, enforced at `session.login()` (SM-38). */
export interface SessionLimitOptions {
  /** Most live sessions one user may hold at once. */
  limit: number;
  /**
   * What a login beyond the limit does: end the user's oldest sessions ('evict-oldest'), or fail
   * with a 409 SessionError of code SESSION_LIMIT and create nothing ('refuse').
   * @default 'evict-oldest'
   */
  onExceed?: 'evict-oldest' | 'refuse';
}

/** Options of {@link SessionManager}; validated once, at construction. */
export interface SessionManagerOptions {
  /** Where sessions live. @default a FileStore in `<os.tmpdir()>/sessionflow` */
  store?: SessionStore;
  /** The signing secret (at least 32 bytes). Use `secrets` to rotate. */
  secret?: string;
  /** A key ring: the first secret signs and encrypts, every secret verifies and decrypts. */
  secrets?: readonly string[];
  cookie?: CookieOptions;
  /**
   * Idle timeout in milliseconds: a session not used for this long is dead.
   * @default 1_800_000 (30 minutes; NIST SP 800-63B AAL2 allows at most 1 hour)
   */
  idleTimeout?: number;
  /**
   * Idle timeout of a session that no user has logged in to (a visitor's cart, a flash message
   * after a failed login). Anonymous visitors are the cheap way to fill a store, so their
   * sessions are kept shorter. At most `idleTimeout`.
   * @default the smaller of idleTimeout and 900_000 (15 minutes)
   */
  anonymousIdleTimeout?: number;
  /**
   * Absolute timeout in milliseconds, counted from login (or creation), whatever the activity.
   * @default 43_200_000 (12 hours; AAL2 allows at most 24 hours)
   */
  absoluteTimeout?: number;
  /**
   * How long the store keeps a session's record after the session expired. The record is refused
   * from the moment of expiry; keeping it is what lets a returning client be told why its session
   * ended (`session_expired` with reason 'idle' or 'absolute', `session.endedReason`). With 0,
   * records vanish exactly at expiry and a client returning later is just an unknown ID.
   * @default 300_000 (5 minutes, the margin Spring Session keeps for its expiry events)
   */
  expiredRetention?: number;
  /**
   * Minimum time between two idle-timer refreshes of a session that changed nothing, so a
   * read-only request does not write on every hit.
   * @default idleTimeout / 10
   */
  touchInterval?: number;
  binding?: BindingOptions;
  /** Encrypt every value at rest with AES-256-GCM under the key ring. @default false */
  encrypt?: boolean;
  /** Largest encoded size of one session's values, in bytes. @default 65536 */
  maxSize?: number;
  /**
   * Trust `X-Forwarded-For`/`X-Forwarded-Proto` from the direct peer: `true`, or a function
   * deciding per peer address. @default false
   */
  trustProxy?: boolean | ((address: string) => boolean);
  /** Keys (top-level) carried into the new session at `login()`; flash messages always are. @default [] */
  keepOnLogin?: readonly string[];
  /** Receives security and lifecycle events (see docs/security.md). @default no-op */
  audit?: (event: AuditEvent) => void;
  /** Receives operational warnings (corrupt records, insecure transport). @default console.warn */
  warn?: (message: string) => void;
  /** The form field and header names the CSRF check reads. @default { field: '_csrf', header: 'x-csrf-token' } */
  csrf?: { field?: string; header?: string };
  /** `Clear-Site-Data` value sent on logout; `false` to omit. @default '"cache"' */
  clearSiteData?: string | false;
  /**
   * Report session-ID guessing: an address sending `limit` invalid or unknown session cookies
   * within `windowMs` yields one `suspicious` audit event per window. The address is the one
   * resolved through `trustProxy`. `false` turns it off.
   * @default { limit: 100, windowMs: 10_000, maxAddresses: 10_000 }
   */
  guessDetection?: boolean | { limit?: number; windowMs?: number; maxAddresses?: number };
  /**
   * Most new sessions one client address may have stored per window (counted in this process):
   * beyond it, a write that would store a new session is refused with 429 `TOO_MANY_SESSIONS`
   * and reported (`suspicious`). Signed-in users' sessions are created by login and count too.
   * @default off
   */
  sessionCreationLimit?: false | { perClient: number; windowMs?: number; maxAddresses?: number };
  /**
   * Give a session a new ID once its ID is `interval` old, keeping its data (SM-24). The old ID
   * serves requests in flight for `grace`, then is dead; presenting it while its tombstone is kept
   * (`expiredRetention`) is reported as `session_use_after_expire`.
   * @default off
   */
  renewal?: RenewalOptions | false;
  /**
   * Limit the live sessions of one user (SM-38). Needs a store with `capabilities.listByUser`.
   * @default off
   */
  maxSessionsPerUser?: SessionLimitOptions | false;
  /** Clock in milliseconds, for tests. @default Date.now */
  now?: () => number;
}

export interface ResolvedOptions {
  secrets: readonly string[];
  cookie: Required<Pick<CookieOptions, 'name' | 'secure' | 'sameSite' | 'path' | 'partitioned'>> &
    Pick<CookieOptions, 'domain' | 'maxAge'>;
  idleTimeout: number;
  anonymousIdleTimeout: number;
  absoluteTimeout: number;
  expiredRetention: number;
  touchInterval: number;
  binding: {
    userAgent: boolean;
    ip: false | { v4Prefix: number; v6Prefix: number };
    action: 'destroy' | 'log';
  };
  encrypt: boolean;
  maxSize: number;
  trustProxy: (address: string) => boolean;
  keepOnLogin: ReadonlySet<string>;
  csrf: { field: string; header: string };
  clearSiteData: string | false;
  guessDetection: GuessDetectionSettings | false;
  sessionCreationLimit: GuessDetectionSettings | false;
  renewal: false | Required<RenewalOptions>;
  maxSessionsPerUser: false | Required<SessionLimitOptions>;
  now: () => number;
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
export const DEFAULT_IDLE_TIMEOUT = 30 * MINUTE;
export const DEFAULT_ABSOLUTE_TIMEOUT = 12 * HOUR;
export const DEFAULT_EXPIRED_RETENTION = 5 * MINUTE;
export const DEFAULT_ANONYMOUS_IDLE_TIMEOUT = 15 * MINUTE;

function fail(message: string): never {
  throw new SessionError('INVALID_OPTION', message);
}

/** A positive, finite number, or an INVALID_OPTION error that says how to fix it. */
function positive(value: unknown, label: string, unit: string, hint: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    fail(`${label} must be a positive, finite number of ${unit} (got ${String(value)}); ${hint}`);
  }
  return value;
}

function duration(options: object, name: string, fallback: number): number {
  // Present-but-undefined is refused too: it is how "no limit" usually sneaks in from config.
  if (!(name in options)) return fallback;
  return positive(
    (options as Record<string, unknown>)[name],
    name,
    'milliseconds',
    `sessions without a limit are not supported. Omit it to use the default of ${fallback} ms.`,
  );
}

// RFC 6265 cookie-name token: no separators, no controls (the CVE-2024-47764 lesson).
const COOKIE_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const COOKIE_PATH = /^[\u0020-\u003A\u003C-\u007E]*$/;
const COOKIE_DOMAIN = /^\.?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

/** Validates options once and fills in defaults; every message says what to change. */
export function resolveOptions(options: SessionManagerOptions): ResolvedOptions {
  if (options === null || typeof options !== 'object') fail('SessionManager needs an options object.');
  let secrets: readonly string[];
  if (options.secrets !== undefined) {
    if (!Array.isArray(options.secrets) || options.secrets.some((s) => typeof s !== 'string')) {
      fail('secrets must be an array of strings, newest first.');
    }
    secrets = options.secrets;
  } else if (typeof options.secret === 'string') {
    secrets = [options.secret];
  } else {
    throw new SessionError(
      'WEAK_SECRET',
      'a secret is required to sign session cookies: pass `secret` (at least 32 random bytes) or `secrets` for rotation.',
    );
  }

  const c = options.cookie ?? {};
  const secure = c.secure ?? true;
  if (typeof secure !== 'boolean') fail('cookie.secure must be a boolean.');
  const name = c.name ?? (secure ? '__Host-id' : 'id');
  if (!COOKIE_NAME.test(name)) {
    fail(
      `cookie.name ${JSON.stringify(name)} contains characters not allowed in a cookie name (RFC 6265 token).`,
    );
  }
  const path = c.path ?? '/';
  if (!path.startsWith('/') || !COOKIE_PATH.test(path))
    fail('cookie.path must start with "/" and contain no ";" or control characters.');
  if (c.domain !== undefined && !COOKIE_DOMAIN.test(c.domain))
    fail(`cookie.domain ${JSON.stringify(c.domain)} is not a valid domain.`);
  const sameSite = c.sameSite ?? 'lax';
  if (!['lax', 'strict', 'none'].includes(sameSite))
    fail("cookie.sameSite must be 'lax', 'strict' or 'none'.");
  if (sameSite === 'none' && !secure)
    fail("cookie.sameSite 'none' requires cookie.secure true; browsers reject it otherwise.");
  if (name.startsWith('__Host-')) {
    if (!secure)
      fail(
        'a __Host- cookie must be Secure: set cookie.secure to true, or choose a name without the __Host- prefix for local HTTP.',
      );
    if (c.domain !== undefined)
      fail(
        'a __Host- cookie cannot carry a Domain: remove cookie.domain, or use a __Secure- name to share with subdomains.',
      );
    if (path !== '/') fail('a __Host- cookie must have Path=/: remove cookie.path.');
  }
  if (name.startsWith('__Secure-') && !secure)
    fail('a __Secure- cookie must be Secure: set cookie.secure to true.');
  if (c.domain !== undefined && !name.startsWith('__Secure-') && secure) {
    fail('a cookie shared with subdomains (cookie.domain) must use the __Secure- name prefix.');
  }

  const idleTimeout = duration(options, 'idleTimeout', DEFAULT_IDLE_TIMEOUT);
  const absoluteTimeout = duration(options, 'absoluteTimeout', DEFAULT_ABSOLUTE_TIMEOUT);
  if (idleTimeout > absoluteTimeout) fail('idleTimeout cannot be longer than absoluteTimeout.');
  const touchInterval = duration(options, 'touchInterval', Math.max(1, Math.floor(idleTimeout / 10)));
  if (touchInterval >= idleTimeout)
    fail('touchInterval must be shorter than idleTimeout, or sessions would expire while in use.');
  const anonymousIdleTimeout = duration(
    options,
    'anonymousIdleTimeout',
    Math.min(idleTimeout, DEFAULT_ANONYMOUS_IDLE_TIMEOUT),
  );
  if (anonymousIdleTimeout > idleTimeout)
    fail('anonymousIdleTimeout cannot be longer than idleTimeout: a visitor would outlive a signed-in user.');
  if (touchInterval >= anonymousIdleTimeout)
    fail(
      "touchInterval must be shorter than anonymousIdleTimeout, or visitors' sessions would expire while in use.",
    );
  const expiredRetention = options.expiredRetention ?? DEFAULT_EXPIRED_RETENTION;
  if (typeof expiredRetention !== 'number' || !Number.isFinite(expiredRetention) || expiredRetention < 0) {
    fail(
      `expiredRetention must be a finite number of milliseconds, 0 or more (got ${String(expiredRetention)}); omit it for ${DEFAULT_EXPIRED_RETENTION}.`,
    );
  }
  if (c.maxAge !== undefined)
    positive(
      c.maxAge,
      'cookie.maxAge',
      'milliseconds',
      'omit it for a cookie that ends with the browser session.',
    );
  const maxAge = c.maxAge === undefined ? undefined : Math.min(c.maxAge, absoluteTimeout);

  const b = options.binding ?? {};
  let ip: ResolvedOptions['binding']['ip'] = false;
  if (b.ip) {
    const p = b.ip === true ? {} : b.ip;
    ip = { v4Prefix: p.v4Prefix ?? 24, v6Prefix: p.v6Prefix ?? 64 };
    if (!(ip.v4Prefix >= 0 && ip.v4Prefix <= 32) || !(ip.v6Prefix >= 0 && ip.v6Prefix <= 128)) {
      fail('binding.ip prefixes must be 0-32 (IPv4) and 0-128 (IPv6).');
    }
  }
  const action = b.action ?? 'destroy';
  if (action !== 'destroy' && action !== 'log') fail("binding.action must be 'destroy' or 'log'.");

  const maxSize =
    options.maxSize === undefined
      ? 65_536
      : positive(options.maxSize, 'maxSize', 'bytes', 'omit it to use the default of 65536 bytes.');
  const tp = options.trustProxy ?? false;
  if (typeof tp !== 'boolean' && typeof tp !== 'function') {
    fail(
      "trustProxy must be true, false or a function (address) => boolean, e.g. (a) => a === '127.0.0.1'; Express-style strings such as 'loopback' are not supported.",
    );
  }
  const trustProxy = typeof tp === 'function' ? tp : () => tp === true;
  const keep = options.keepOnLogin ?? [];
  if (!Array.isArray(keep)) fail('keepOnLogin must be an array of top-level key names.');
  const guessDetection = resolveGuessDetection(options.guessDetection ?? true);
  const renewal = resolveRenewal(options.renewal, idleTimeout);
  const maxSessionsPerUser = resolveSessionLimit(options.maxSessionsPerUser);
  const now = options.now ?? Date.now;
  if (typeof now !== 'function') fail('now must be a function returning milliseconds.');

  return {
    secrets,
    cookie: { name, secure, sameSite, path, domain: c.domain, maxAge, partitioned: c.partitioned ?? false },
    idleTimeout,
    anonymousIdleTimeout,
    absoluteTimeout,
    expiredRetention,
    touchInterval,
    binding: { userAgent: b.userAgent ?? false, ip, action },
    encrypt: options.encrypt ?? false,
    maxSize,
    trustProxy,
    keepOnLogin: new Set(keep),
    csrf: {
      field: options.csrf?.field ?? '_csrf',
      header: (options.csrf?.header ?? 'x-csrf-token').toLowerCase(),
    },
    clearSiteData: options.clearSiteData ?? '"cache"',
    guessDetection,
    sessionCreationLimit: resolveCreationLimit(options.sessionCreationLimit),
    renewal,
    maxSessionsPerUser,
    now,
  };
}

function resolveRenewal(option: unknown, idleTimeout: number): ResolvedOptions['renewal'] {
  if (option === undefined || option === false) return false;
  if (typeof option !== 'object' || option === null) {
    fail(
      'renewal must be { interval, grace } in milliseconds, e.g. { interval: 900000, grace: 30000 }; omit it to keep IDs until login or regenerateId().',
    );
  }
  const r = option as Record<string, unknown>;
  const interval = positive(
    r.interval,
    'renewal.interval',
    'milliseconds',
    'it is the age at which a session ID is replaced, e.g. 900000 for 15 minutes.',
  );
  const grace = positive(
    r.grace,
    'renewal.grace',
    'milliseconds',
    'it is how long a replaced ID still serves requests already in flight, e.g. 30000.',
  );
  if (grace >= interval) {
    fail(
      `renewal.grace (${grace} ms) must be shorter than renewal.interval (${interval} ms), or an old ID would outlive the next renewal; a few seconds of grace covers requests in flight.`,
    );
  }
  if (grace >= idleTimeout) {
    fail(
      `renewal.grace (${grace} ms) must be shorter than idleTimeout (${idleTimeout} ms): a replaced ID must not stay usable longer than an idle session would.`,
    );
  }
  const onReuse = r.onReuse ?? 'log';
  if (onReuse !== 'log' && onReuse !== 'revoke-user') {
    fail(
      `renewal.onReuse must be 'log' or 'revoke-user' (got ${JSON.stringify(onReuse)}); omit it for 'log'.`,
    );
  }
  return { interval, grace, onReuse };
}

function resolveSessionLimit(option: unknown): ResolvedOptions['maxSessionsPerUser'] {
  if (option === undefined || option === false) return false;
  if (typeof option !== 'object' || option === null) {
    fail('maxSessionsPerUser must be { limit, onExceed? }, e.g. { limit: 3 }; omit it for no limit.');
  }
  const m = option as Record<string, unknown>;
  const limit = m.limit;
  if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1) {
    fail(
      `maxSessionsPerUser.limit must be a positive integer (got ${String(limit)}): how many sessions one user may hold at once, e.g. 3.`,
    );
  }
  const onExceed = m.onExceed ?? 'evict-oldest';
  if (onExceed !== 'evict-oldest' && onExceed !== 'refuse') {
    fail(
      `maxSessionsPerUser.onExceed must be 'evict-oldest' or 'refuse' (got ${JSON.stringify(onExceed)}); omit it for 'evict-oldest'.`,
    );
  }
  return { limit, onExceed };
}

function resolveGuessDetection(
  option: NonNullable<SessionManagerOptions['guessDetection']>,
): GuessDetectionSettings | false {
  if (option === false) return false;
  const o = option === true ? {} : option;
  if (typeof o !== 'object' || o === null)
    fail('guessDetection must be true, false or { limit, windowMs, maxAddresses }.');
  const count = (name: 'limit' | 'maxAddresses', fallback: number) => {
    const value = o[name] ?? fallback;
    if (!Number.isInteger(value) || value < 1)
      fail(
        `guessDetection.${name} must be a positive integer (got ${String(value)}); omit it for ${fallback}.`,
      );
    return value;
  };
  return {
    limit: count('limit', 100),
    windowMs:
      o.windowMs === undefined
        ? 10_000
        : positive(o.windowMs, 'guessDetection.windowMs', 'milliseconds', 'omit it for 10000.'),
    maxAddresses: count('maxAddresses', 10_000),
  };
}

function resolveCreationLimit(
  option: SessionManagerOptions['sessionCreationLimit'],
): GuessDetectionSettings | false {
  if (option === undefined || option === false) return false;
  const integer = (value: unknown, name: string, fallback?: number): number => {
    if (value === undefined && fallback !== undefined) return fallback;
    if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
      fail(`sessionCreationLimit.${name} must be a positive integer (got ${String(value)}).`);
    }
    return value as number;
  };
  if (typeof option !== 'object' || option === null)
    fail('sessionCreationLimit must be false or { perClient, windowMs? }.');
  return {
    limit: integer(option.perClient, 'perClient'),
    windowMs: integer(option.windowMs, 'windowMs', 60_000),
    maxAddresses: integer(option.maxAddresses, 'maxAddresses', 10_000),
  };
}
