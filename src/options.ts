import proxyAddr from 'proxy-addr';
import { SessionError } from './errors.js';
import type { AuditEvent } from './features/audit.js';
import type { GuessDetectionSettings } from './features/throttle.js';
import type { SessionStore } from './stores/store.js';

/** Cookie settings. Secure by default; use `secure: 'auto'` for local HTTP development. */
export interface CookieOptions {
  /**
   * Cookie name. A generic name, so the framework is not fingerprinted.
   * @default '__Host-id' when `secure` is true or 'auto', otherwise 'id'
   */
  name?: string;
  /**
   * Send the cookie over HTTPS only.
   *
   * - `true`: always `Secure` (and the `__Host-` name); a session written on a plain-HTTP request
   *   gets no cookie, with a warning.
   * - `'auto'`: as `true`, except on a plain-HTTP request made directly to this machine
   *   (`http://localhost`, `127.0.0.1`, `[::1]`, from a loopback address, with no proxy
   *   headers) outside `NODE_ENV=production`: there the cookie is sent without `Secure` and
   *   without the `__Host-`/`__Secure-` prefix. The way to develop on `http://localhost`;
   *   applied by the bundled integrations (see docs/security.md).
   * - `false`: never `Secure`. Only for plain-HTTP deployments you accept as insecure.
   * @default true
   */
  secure?: boolean | 'auto';
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

/**
 * Which proxies to trust, as Express's `trust proxy` setting and the `proxy-addr` library take it.
 * @example 'loopback, 10.0.0.0/8'
 * @inline
 */
export type TrustProxy =
  | boolean
  | number
  | string
  | readonly string[]
  | ((address: string, hop: number) => boolean);

/** Options of {@link SessionManager}; validated once, at construction. */
export interface SessionManagerOptions {
  /**
   * Where sessions live. Pass one explicitly in production (a warning says so otherwise).
   * @default a FileStore in `$XDG_STATE_HOME/sessionflow` or `~/.local/state/sessionflow`
   */
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
   * Which proxies' `X-Forwarded-For`/`X-Forwarded-Proto` to believe, with Express's `trust proxy`
   * semantics (resolved by the `proxy-addr` library): `true` (every hop), `false`, a hop count
   * (`1`: the nearest proxy only), addresses or CIDR ranges, as an array or a comma-separated
   * string, with the names 'loopback', 'linklocal' and 'uniquelocal', or a function
   * `(address, hop) => boolean`. The Express and Fastify integrations follow the framework's own
   * setting (`app.set('trust proxy', …)`, `Fastify({ trustProxy })`) when the app has one.
   * @default false
   */
  trustProxy?: TrustProxy;
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
  cookie: Required<Pick<CookieOptions, 'name' | 'sameSite' | 'path' | 'partitioned'>> &
    Pick<CookieOptions, 'domain' | 'maxAge'> & {
      /** The cookie is Secure (`true` and `'auto'`); `'auto'` relaxes only `localHttp` requests. */
      secure: boolean;
      /**
       * `secure: 'auto'` outside `NODE_ENV=production`: a plain-HTTP request made directly to
       * this machine gets a cookie without `Secure` and without the name prefix.
       */
      localHttp: boolean;
    };
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
  /** The compiled trust function: is the hop at `address`, `hop` hops from us, a trusted proxy? */
  trustProxy: (address: string, hop: number) => boolean;
  /** `trustProxy` as given; undefined when the option was not set. */
  trustProxySetting: TrustProxy | undefined;
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
  const secureOption = c.secure ?? true;
  if (typeof secureOption !== 'boolean' && secureOption !== 'auto')
    fail("cookie.secure must be true, false or 'auto' (Secure everywhere but on http://localhost).");
  const secure = secureOption !== false;
  const localHttp = secureOption === 'auto' && process.env.NODE_ENV !== 'production';
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
  const trustProxy = compileTrust(options.trustProxy ?? false);
  const keep = options.keepOnLogin ?? [];
  if (!Array.isArray(keep)) fail('keepOnLogin must be an array of top-level key names.');
  const guessDetection = resolveGuessDetection(options.guessDetection ?? true);
  const renewal = resolveRenewal(options.renewal, idleTimeout);
  const maxSessionsPerUser = resolveSessionLimit(options.maxSessionsPerUser);
  const now = options.now ?? Date.now;
  if (typeof now !== 'function') fail('now must be a function returning milliseconds.');

  const resolved: ResolvedOptions = {
    secrets,
    cookie: {
      name,
      secure,
      localHttp,
      sameSite,
      path,
      domain: c.domain,
      maxAge,
      partitioned: c.partitioned ?? false,
    },
    idleTimeout,
    anonymousIdleTimeout,
    absoluteTimeout,
    expiredRetention,
    touchInterval,
    binding: { userAgent: b.userAgent ?? false, ip, action },
    encrypt: options.encrypt ?? false,
    maxSize,
    trustProxy,
    trustProxySetting: options.trustProxy,
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
  warnAboutOptions(options, secureOption);
  return resolved;
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

/**
 * Compiles `trustProxy` the way Express compiles its `trust proxy` setting, with `proxy-addr`:
 * a function as is, `true` every hop, a number the nearest `n` hops, addresses and ranges
 * (array or comma-separated string) through `proxyAddr.compile`.
 */
function compileTrust(value: unknown): (address: string, hop: number) => boolean {
  if (typeof value === 'function') return value as (address: string, hop: number) => boolean;
  if (value === true) return () => true;
  if (value === false) return () => false;
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 0)
      fail(`trustProxy as a hop count must be a whole number, 0 or more (got ${value}).`);
    return (_address, hop) => hop < value;
  }
  const list =
    typeof value === 'string'
      ? value.split(',').map((v) => v.trim())
      : Array.isArray(value) && value.every((v) => typeof v === 'string')
        ? (value as string[])
        : undefined;
  if (list === undefined) {
    fail(
      "trustProxy must be true, false, a hop count, addresses or CIDR ranges ('loopback, 10.0.0.0/8' or an array), or a function (address, hop) => boolean.",
    );
  }
  if (list.length === 0 || list.every((v) => v === '')) return () => false;
  try {
    return proxyAddr.compile(list);
  } catch (err) {
    return fail(
      `trustProxy: ${(err as Error).message}; give IP addresses, CIDR ranges or 'loopback', 'linklocal', 'uniquelocal'.`,
    );
  }
}

// ---- warnings about options that are valid but probably not what was meant -------------------

/**
 * Every option this version knows, checked by the compiler against the interface, so a new
 * option cannot be reported as unknown.
 */
const KNOWN_OPTIONS: Record<keyof SessionManagerOptions, true> = {
  store: true,
  secret: true,
  secrets: true,
  cookie: true,
  idleTimeout: true,
  anonymousIdleTimeout: true,
  absoluteTimeout: true,
  expiredRetention: true,
  touchInterval: true,
  binding: true,
  encrypt: true,
  maxSize: true,
  trustProxy: true,
  keepOnLogin: true,
  audit: true,
  warn: true,
  csrf: true,
  clearSiteData: true,
  guessDetection: true,
  sessionCreationLimit: true,
  renewal: true,
  maxSessionsPerUser: true,
  now: true,
};

const KNOWN_COOKIE_OPTIONS: Record<keyof CookieOptions, true> = {
  name: true,
  secure: true,
  sameSite: true,
  path: true,
  domain: true,
  maxAge: true,
  partitioned: true,
};

/** Options of express-session and other session libraries, with what to do instead. */
const FOREIGN_OPTIONS: Record<string, { nearest: string; advice: string }> = {
  resave: {
    nearest: 'touchInterval',
    advice: 'sessionflow writes only what a request changed, so there is nothing to re-save; remove it',
  },
  saveUninitialized: {
    nearest: 'anonymousIdleTimeout',
    advice: 'a session is stored only once something is written to it; remove it',
  },
  rolling: {
    nearest: 'idleTimeout',
    advice:
      'the idle timeout already restarts on activity (touchInterval limits how often that is written); remove it',
  },
  name: { nearest: 'cookie.name', advice: 'set the cookie name as cookie.name' },
  genid: { nearest: 'secret', advice: 'session IDs are always 256 random bits; remove it' },
  proxy: { nearest: 'trustProxy', advice: 'use trustProxy (or your framework’s trust proxy setting)' },
  unset: { nearest: 'keepOnLogin', advice: 'session.destroy() deletes the record; remove it' },
  ttl: { nearest: 'idleTimeout', advice: 'use idleTimeout and absoluteTimeout, in milliseconds' },
  maxAge: {
    nearest: 'cookie.maxAge',
    advice:
      'the browser cookie lifetime is cookie.maxAge, the server-side limits are idleTimeout and absoluteTimeout (all in milliseconds)',
  },
  cookieName: { nearest: 'cookie.name', advice: 'set the cookie name as cookie.name' },
  cookieOptions: { nearest: 'cookie', advice: 'cookie attributes go in cookie' },
  password: { nearest: 'secret', advice: 'the signing secret is secret (or secrets, to rotate)' },
};

const FOREIGN_COOKIE_OPTIONS: Record<string, { nearest: string; advice: string }> = {
  httpOnly: { nearest: 'cookie.secure', advice: 'the session cookie is always HttpOnly; remove it' },
  expires: {
    nearest: 'cookie.maxAge',
    advice: 'use cookie.maxAge (milliseconds), capped by absoluteTimeout',
  },
  signed: { nearest: 'cookie.name', advice: 'the session cookie is always signed; remove it' },
  encode: { nearest: 'cookie.name', advice: 'the cookie value is always base64url; remove it' },
  priority: { nearest: 'cookie.sameSite', advice: 'not supported; remove it' },
};

/** Levenshtein distance, for "did you mean" (option names are short). */
function distance(a: string, b: string): number {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  let previous = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const current = [i];
    for (let j = 1; j <= y.length; j++) {
      const cost = x[i - 1] === y[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + cost);
    }
    previous = current;
  }
  return previous[y.length]!;
}

function nearest(name: string, known: readonly string[]): string {
  let best = known[0]!;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of known) {
    const d = distance(name, candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

function unknownOptions(
  given: object,
  known: Record<string, true>,
  foreign: Record<string, { nearest: string; advice: string }>,
  prefix: string,
): string[] {
  const messages: string[] = [];
  const names = Object.keys(known);
  for (const key of Object.keys(given)) {
    if (Object.hasOwn(known, key)) continue;
    const hint = Object.hasOwn(foreign, key) ? foreign[key] : undefined;
    const nearestKnown = hint ? hint.nearest : `${prefix}${nearest(key, names)}`;
    const advice = hint ? `: ${hint.advice}.` : '.';
    messages.push(
      `unknown option ${prefix}${key} is ignored; the nearest known option is ${nearestKnown}${advice}`,
    );
  }
  return messages;
}

/** A duration under a minute was most likely written in seconds. */
const PLAUSIBLE_MS = 60_000;

function implausibleDuration(name: string, value: unknown): string | undefined {
  if (typeof value !== 'number' || value >= PLAUSIBLE_MS) return undefined;
  return `${name} is ${value} ms (${value / 1000} s), which is probably not meant: durations are in milliseconds; if you meant ${value} seconds, write ${value * 1000}.`;
}

/**
 * Warnings about valid options that are probably mistakes: names of other libraries or typos
 * (ignored), durations that look like seconds, and a production app on the default store.
 * They go to `options.warn`, the function the manager warns through, once per manager.
 */
function warnAboutOptions(options: SessionManagerOptions, secure: boolean | 'auto'): void {
  const warn =
    typeof options.warn === 'function' ? options.warn : (m: string) => console.warn(`[sessionflow] ${m}`);
  const messages = unknownOptions(options, KNOWN_OPTIONS, FOREIGN_OPTIONS, '');
  if (options.cookie && typeof options.cookie === 'object') {
    messages.push(...unknownOptions(options.cookie, KNOWN_COOKIE_OPTIONS, FOREIGN_COOKIE_OPTIONS, 'cookie.'));
  }
  for (const name of ['idleTimeout', 'anonymousIdleTimeout', 'absoluteTimeout'] as const) {
    const message = implausibleDuration(name, options[name]);
    if (message) messages.push(message);
  }
  const maxAge = implausibleDuration('cookie.maxAge', options.cookie?.maxAge);
  if (maxAge) messages.push(maxAge);
  if (process.env.NODE_ENV === 'production') {
    if (options.store === undefined) {
      messages.push(
        'no store was given, so sessions go to the default FileStore ($XDG_STATE_HOME/sessionflow or ~/.local/state/sessionflow): local to this machine, not shared between servers, and lost with a container. Pass a store explicitly (a FileStore with a dir you manage for one server, Redis or SQL for several).',
      );
    }
    if (secure === false) {
      messages.push(
        "cookie.secure is false under NODE_ENV=production: the session cookie can be sent over plain HTTP and stolen there. Use true behind HTTPS (with trustProxy behind a TLS proxy), or 'auto'.",
      );
    }
  }
  for (const message of new Set(messages)) warn(message);
}
