import { createHash, randomBytes } from 'node:crypto';
import type { AuditEmitter } from '../core/audit-emitter.js';
import { SessionError, storeUnavailable } from '../errors.js';
import type { SessionStore, StoredSession } from '../stores/store.js';

/**
 * Failed-login throttling (seed 25.2; OWASP Authentication cheat sheet, NIST SP 800-63B 5.2.2):
 * per account and per client address, over a sliding window, with exponential back-off once a
 * limit is reached. State lives in a session store (the manager's by default), so every process
 * sharing the store throttles together; it is kept in ordinary store records written with the
 * store's guarded commit, so any store that passes the conformance suite can hold it.
 *
 * The account key is the submitted user name (normalised), whether or not the account exists:
 * an unknown account is throttled exactly like a known one, so the answers do not tell which
 * accounts exist.
 */
export interface LoginThrottleOptions {
  /** Failed logins for one account within `windowMs` before back-off starts. @default 5 */
  accountLimit?: number;
  /** Failed logins from one client address within `windowMs` before back-off starts. @default 20 */
  addressLimit?: number;
  /** The sliding window failures are counted in, in ms. @default 900_000 (15 minutes) */
  windowMs?: number;
  /** First lock once a limit is reached, doubled with every further failure, in ms. @default 1000 */
  baseDelayMs?: number;
  /** Longest lock, in ms. @default 900_000 (15 minutes) */
  maxDelayMs?: number;
  /** Where the counters live. @default the manager's store */
  store?: SessionStore;
}

/** What `check` answers: go ahead, or wait (answer 429 with `Retry-After`). */
export type ThrottleVerdict =
  | { allowed: true }
  | { allowed: false; retryAfterMs: number; reason: 'account' | 'address' };

/** What the throttle reports (the manager turns it into audit events). */
export interface ThrottleEvents {
  /** A limit was reached: the account or address is locked for `lockMs`. */
  limitReached(kind: 'account' | 'address', account: string, ip: string | undefined, lockMs: number): void;
  /** A login was refused because of a lock. */
  refused(kind: 'account' | 'address', account: string, ip: string | undefined): void;
}

interface Counter {
  /** Times of the failures still inside the window, oldest first (at most the limit + 64). */
  fails: number[];
  lockedUntil: number;
}

const FIELD = 'x:throttle';
const RETRIES = 64;

/** A random pause of up to `ms` between two tries of a contended counter. */
const pause = (ms: number) => new Promise((r) => setTimeout(r, Math.random() * ms));

function positive(value: unknown, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new SessionError(
      'INVALID_OPTION',
      `loginThrottle ${name} must be a positive number (got ${String(value)}).`,
    );
  }
  return value;
}

/** A storage key of its own per counter: a domain-separated hash, never a session's record id. */
function counterKey(kind: 'account' | 'address', id: string): string {
  return createHash('sha256').update(`sessionflow:login-throttle\0${kind}\0${id}`).digest('base64url');
}

/** User names differ in case and surrounding space only in typos: count them as one account. */
export function normaliseAccount(account: string): string {
  return account.trim().normalize('NFKC').toLowerCase();
}

/** The throttle's events as audit events: `authn_login_fail_max` and `authn_login_lock`. */
export function auditedThrottle(events: AuditEmitter): ThrottleEvents {
  const emit = (
    type: 'authn_login_fail_max' | 'authn_login_lock',
    reason: string,
    account: string,
    ip?: string,
  ) => events.emit({ type, userId: account, reason, client: { ip } });
  return {
    limitReached: (kind, account, ip, lockMs) =>
      emit('authn_login_fail_max', `${kind}; locked ${lockMs} ms`, account, ip),
    refused: (kind, account, ip) => emit('authn_login_lock', kind, account, ip),
  };
}

export class LoginThrottle {
  readonly #store: SessionStore;
  readonly #now: () => number;
  readonly #events: ThrottleEvents;
  readonly #accountLimit: number;
  readonly #addressLimit: number;
  readonly #window: number;
  readonly #base: number;
  readonly #max: number;

  /** @internal made by `SessionManager.loginThrottle()`. */
  constructor(
    store: SessionStore,
    now: () => number,
    events: ThrottleEvents,
    options: LoginThrottleOptions = {},
  ) {
    this.#store = options.store ?? store;
    this.#now = now;
    this.#events = events;
    this.#accountLimit = Math.floor(positive(options.accountLimit, 'accountLimit', 5));
    this.#addressLimit = Math.floor(positive(options.addressLimit, 'addressLimit', 20));
    this.#window = positive(options.windowMs, 'windowMs', 15 * 60_000);
    this.#base = positive(options.baseDelayMs, 'baseDelayMs', 1000);
    this.#max = positive(options.maxDelayMs, 'maxDelayMs', 15 * 60_000);
  }

  /** Before checking a password: may this account, from this address, try now? */
  async check(account: string, ip?: string): Promise<ThrottleVerdict> {
    const name = normaliseAccount(account);
    const now = this.#now();
    const checks: ['account' | 'address', string][] = [['account', name]];
    if (ip) checks.push(['address', ip]);
    for (const [kind, id] of checks) {
      const counter = await this.#read(counterKey(kind, id));
      if (counter && counter.lockedUntil > now) {
        this.#events.refused(kind, name, ip);
        return { allowed: false, retryAfterMs: counter.lockedUntil - now, reason: kind };
      }
    }
    return { allowed: true };
  }

  /** After a wrong password (or an unknown account): counts against both. */
  async failed(account: string, ip?: string): Promise<void> {
    const name = normaliseAccount(account);
    await this.#count('account', name, this.#accountLimit, name, ip);
    if (ip) await this.#count('address', ip, this.#addressLimit, name, ip);
  }

  /** After a successful login: the account's failures are forgotten (the address's are not). */
  async succeeded(account: string): Promise<void> {
    try {
      await this.#store.destroy(counterKey('account', normaliseAccount(account)));
    } catch (err) {
      throw storeUnavailable('loginThrottle', err);
    }
  }

  async #read(key: string): Promise<Counter | null> {
    let record: StoredSession | null;
    try {
      record = await this.#store.load(key);
    } catch (err) {
      throw storeUnavailable('loginThrottle', err);
    }
    return record ? parse(record) : null;
  }

  /** One more failure, by a guarded read-modify-write: concurrent failures are all counted. */
  async #count(kind: 'account' | 'address', id: string, limit: number, account: string, ip?: string) {
    const key = counterKey(kind, id);
    try {
      for (let attempt = 0; attempt < RETRIES; attempt++) {
        const now = this.#now();
        const record = await this.#store.load(key);
        const before: Counter = (record && parse(record)) ?? { fails: [], lockedUntil: 0 };
        const fails = [...before.fails.filter((t) => t > now - this.#window), now].slice(-(limit + 64));
        let lockedUntil = before.lockedUntil;
        const over = fails.length - limit;
        const lockMs = over >= 0 ? Math.min(this.#max, this.#base * 2 ** Math.min(over, 40)) : 0;
        if (over >= 0) lockedUntil = Math.max(lockedUntil, now + lockMs);
        const done = () => {
          if (over === 0) this.#events.limitReached(kind, account, ip, lockMs);
        };
        const ttl = Math.max(this.#window, lockedUntil - now) + 1000;
        const version = randomBytes(12).toString('base64url');
        const value = JSON.stringify({ fails, lockedUntil } satisfies Counter);
        const meta = { createdAt: now, lastSeenAt: now, deadline: now + ttl, h: version };
        if (!record) {
          if (await this.#store.create(key, { meta, values: { [FIELD]: value } }, ttl)) return done();
          await pause(2 + attempt);
          continue;
        }
        const guard = { handle: record.meta.h ?? '' };
        const delta = {
          set: { [FIELD]: value },
          unset: [],
          meta: { lastSeenAt: now, deadline: now + ttl, h: version },
        };
        if ((await this.#store.commit(key, delta, ttl, guard)) === 'ok') return done();
        await pause(2 + attempt);
      }
    } catch (err) {
      throw storeUnavailable('loginThrottle', err);
    }
    // Contention this high means an attack on one key: count it as locked rather than lose it.
    throw new SessionError(
      'STORE_UNAVAILABLE',
      'Too many concurrent login attempts on one account; try again shortly.',
    );
  }
}

function parse(record: StoredSession): Counter | null {
  const raw = record.values[FIELD];
  if (typeof raw !== 'string') return null;
  try {
    const value = JSON.parse(raw) as Partial<Counter>;
    const fails = Array.isArray(value.fails)
      ? value.fails.filter((t): t is number => typeof t === 'number')
      : [];
    return { fails, lockedUntil: typeof value.lockedUntil === 'number' ? value.lockedUntil : 0 };
  } catch {
    return null;
  }
}
