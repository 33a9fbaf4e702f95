import { SessionBag } from './bag.js';
import { CSRF_FIELD, FLASH_FIELD, type SessionState, USER } from './core/state.js';
import { SessionError } from './errors.js';
import type { ClientInfo } from './features/audit.js';
import { Csrf } from './features/csrf.js';
import { Flash } from './features/flash.js';
import { checkKeyName } from './serialize.js';
import type { DefaultSessionData } from './session-data.js';

export type { DefaultSessionData, MountableSessionData, SessionData } from './session-data.js';

/** Lifecycle state, after Phalcon's Manager::status(). */
export type SessionStatus = 'new' | 'active' | 'destroyed';

// Set once by Session's static block: the only ways to reach a session's private state.
let readState: (session: Session) => SessionState;
let makeSession: (state: SessionState) => Session;

/** @internal The state behind a session, for the manager and the integrations only. */
export function stateOf(session: object): SessionState {
  return readState(session as Session);
}

/** @internal Wraps a state into the public session object. */
export function sessionFor<D extends object>(state: SessionState): Session<D> {
  return makeSession(state) as unknown as Session<D>;
}

/** Counts an identity operation in flight, so a commit can tell that it was not awaited. */
async function tracked<T>(state: SessionState, run: () => Promise<T>): Promise<T> {
  state.inFlight++;
  try {
    return await run();
  } finally {
    state.inFlight--;
  }
}

/** The most user key names {@link userField} remembers (a set of dynamic names is cleared, not grown). */
const USER_FIELDS_MAX = 1024;
const userFields = new Map<string, string>();

/**
 * The stored field of a user key (`v:` + key), its name checked. Remembered per key name: the
 * names an app uses are few and come back on every request, and the same field string, hashed
 * and internalized by V8 at its first use, spares each `get` a concatenation, a name check and
 * two string hashes.
 */
function userField(key: string): string {
  let field = userFields.get(key);
  if (field === undefined) {
    checkKeyName(key);
    field = USER + key;
    if (userFields.size >= USER_FIELDS_MAX) userFields.clear();
    userFields.set(key, field);
  }
  return field;
}

/**
 * One request's view of a session, with Phalcon's API: get/set/has/remove, bags, flash, CSRF,
 * regenerateId, login, logout and destroy. Reads come from the record loaded at the start of the
 * request; writes are collected and committed as one change set when the response goes out.
 * Sessions are made by `SessionManager.load()` (through an integration), never constructed.
 * `D` is the session's data type: the app's `SessionData` unless given.
 *
 * @example
 * session.set('user_id', 42);
 * const cart = session.get('cart', []);
 */
export class Session<D extends object = DefaultSessionData> {
  readonly #state: SessionState;
  // Views made on first use, kept on the session itself: a WeakMap entry per request would cost
  // more (its ephemeron is traced at every young-generation GC) than these three fields.
  #bags: Map<string, SessionBag> | undefined;
  #flash: Flash | undefined;
  #csrf: Csrf | undefined;

  static {
    readState = (session) => {
      if (!(#state in session)) throw new TypeError('not a session created by SessionManager.load()');
      return session.#state;
    };
    makeSession = (state) => new Session(state);
  }

  /** Sessions come from `SessionManager.load()`. */
  private constructor(state: SessionState) {
    this.#state = state;
  }

  // ---- identity -------------------------------------------------------------------------

  /**
   * The session's record id: stable for the life of the session (ID changes replace the secret
   * token in the cookie, not this), safe to log and to pass to `manager.revoke()`, useless as a
   * cookie. A new session gets its id on first access.
   */
  get id(): string {
    return this.#state.id();
  }

  /** True until the session has been stored (a visitor who never writes stays new). */
  get isNew(): boolean {
    return this.#state.record === null;
  }

  get status(): SessionStatus {
    const s = this.#state;
    if (s.destroyed && s.record === null && s.changes.size === 0) return 'destroyed';
    return s.record === null ? 'new' : 'active';
  }

  /** Why the previous session of this client ended at the start of this request, e.g. 'idle'. */
  get endedReason(): string | undefined {
    return this.#state.endedReason;
  }

  /** The authenticated user's id, set by {@link login}. */
  get userId(): string | undefined {
    return this.#state.userId;
  }

  /** When the user authenticated on this session (ms since epoch). */
  get authenticatedAt(): number | undefined {
    return this.#state.authAt;
  }

  /**
   * True if the user proved who they are (login or reauthenticate) at most `maxAgeMs` ago.
   * Gate sensitive changes (email, password, MFA) on it (ASVS 7.5.1, SM-39).
   */
  isRecentlyAuthenticated(maxAgeMs: number): boolean {
    const s = this.#state;
    const at = s.authAt;
    return at !== undefined && s.driver.options.now() - at <= maxAgeMs;
  }

  /** Throws a 401 SessionError `REAUTH_REQUIRED` unless {@link isRecentlyAuthenticated}. */
  requireRecentAuth(maxAgeMs: number): void {
    if (!this.isRecentlyAuthenticated(maxAgeMs)) {
      throw new SessionError(
        'REAUTH_REQUIRED',
        'This change needs you to confirm your password again: re-authenticate, then retry.',
      );
    }
  }

  /** Client facts (IP, user agent) as seen by the integration. */
  get client(): ClientInfo {
    return this.#state.client;
  }

  // ---- values ---------------------------------------------------------------------------

  /** The value of `key`, or `fallback` (Phalcon: `$session->get('key', 'default')`). */
  get<K extends keyof D & string>(key: K): D[K] | undefined;
  get<K extends keyof D & string>(key: K, fallback: D[K]): D[K];
  get(key: string, fallback?: unknown): unknown {
    const value = this.#state.getField(userField(key));
    return value === undefined ? fallback : value;
  }

  /**
   * Stores a JSON-serialisable value. Anything else, and a key name no store can hold (empty,
   * NUL, a lone surrogate), is an error right here, not at the end of the request.
   */
  set<K extends keyof D & string>(key: K, value: D[K]): this {
    this.#state.setField(userField(key), value);
    return this;
  }

  has(key: keyof D & string): boolean {
    return this.#state.hasField(userField(key));
  }

  remove(key: keyof D & string): void {
    this.#state.removeField(userField(key));
  }

  /** Every top-level key (bags and internal data excluded). */
  keys(): string[] {
    return this.#state.fieldsWithPrefix(USER).map((f) => f.slice(USER.length));
  }

  /** A scoped group of keys (Phalcon's Session\Bag). */
  bag<T extends Record<string, unknown> = Record<string, unknown>>(name: string): SessionBag<T> {
    this.#bags ??= new Map<string, SessionBag>();
    const bags = this.#bags;
    let bag = bags.get(name);
    if (!bag) {
      bag = new SessionBag(this.#state, name);
      bags.set(name, bag);
    }
    return bag as unknown as SessionBag<T>;
  }

  /** Flash messages: set now, shown on the next page, then gone. */
  get flash(): Flash {
    this.#flash ??= new Flash(this.#state);
    return this.#flash;
  }

  /** The session's CSRF synchronizer token. */
  get csrf(): Csrf {
    const s = this.#state;
    this.#csrf ??= new Csrf(s, s.driver.options.csrf.field);
    return this.#csrf;
  }

  // ---- lifecycle -------------------------------------------------------------------------

  /**
   * Gives the session a new ID, keeping its data (Phalcon's `regenerateId(true)`): the cookie's
   * secret is replaced when the request commits, and the old cookie stops working then. Call it
   * on every privilege change. The CSRF token is rotated with it.
   */
  async regenerateId(): Promise<void> {
    const s = this.#state;
    s.rotate('regenerate');
    rotateCsrf(this, s);
  }

  /**
   * Authenticates the session as `userId` (seed 27.1): new ID, pre-login data dropped except
   * flash messages and `keepOnLogin` keys, both timeouts restarted, the user recorded.
   * With `maxSessionsPerUser` set to 'refuse', throws a 409 SessionError (SESSION_LIMIT) when the
   * user already holds the most sessions allowed; the session is then left unchanged.
   */
  async login(userId: string | number): Promise<void> {
    const s = this.#state;
    await tracked(s, async () => {
      // Before anything changes: a refused login leaves the session exactly as it was.
      await s.driver.admitLogin(s, String(userId));
      const keep = s.driver.options.keepOnLogin;
      const retain: string[] = [];
      for (const field of s.fieldsWithPrefix('')) {
        const isKept =
          field === FLASH_FIELD || (field.startsWith(USER) && keep.has(field.slice(USER.length)));
        if (isKept) retain.push(field);
        else s.removeField(field);
      }
      s.rotate('login', retain);
      rotateCsrf(this, s);
      const now = s.driver.options.now();
      s.meta.userId = String(userId);
      s.meta.authAt = now;
      s.meta.createdAt = now;
      s.meta.deadline = now + s.driver.options.absoluteTimeout;
      s.changed();
      s.driver.audit('authn_login_success', s);
    });
  }

  /** Marks a successful re-authentication: new ID, both timers restart (NIST 63B §5.2). */
  async reauthenticate(): Promise<void> {
    const s = this.#state;
    s.rotate('reauthenticate');
    rotateCsrf(this, s);
    const now = s.driver.options.now();
    s.meta.authAt = now;
    s.meta.deadline = now + s.driver.options.absoluteTimeout;
    s.changed();
  }

  /**
   * "Remember me": makes this session's cookie persistent (Max-Age) for `ms` milliseconds from
   * now, so it survives a browser restart; `false` makes it a browser-session cookie again (or
   * whatever `cookie.maxAge` says). The lifetime never reaches past the absolute deadline, and
   * the idle timeout still applies on the server. It is kept in the record's metadata: every
   * later cookie of the session (ID changes, renewals, key rotation) carries what is left of it.
   * Call it with `login()`; on a stored session outside a login it changes the ID like
   * {@link regenerateId}, whose guarded commit is what carries the new lifetime and cookie.
   *
   * @example
   * await req.session.login(user.id);
   * if (req.body.remember === 'on') req.session.rememberFor(30 * 24 * 3600_000);
   */
  rememberFor(ms: number | false): void {
    if (ms !== false && !(typeof ms === 'number' && Number.isFinite(ms) && ms > 0)) {
      throw new SessionError(
        'INVALID_OPTION',
        `rememberFor() takes a positive, finite number of milliseconds or false (got ${String(ms)}).`,
      );
    }
    const s = this.#state;
    const until = ms === false ? undefined : s.driver.options.now() + ms;
    if (until === s.persistUntil) return;
    s.meta.persistUntil = until;
    s.changed();
    if (s.record !== null && s.rotation === null) {
      s.rotate('regenerate');
      rotateCsrf(this, s);
    }
  }

  /** Logs out: records the event, then destroys the session (see {@link destroy}). */
  async logout(): Promise<void> {
    const s = this.#state;
    if (s.record !== null) s.driver.audit('session_logout', s);
    await this.destroy();
  }

  /**
   * Deletes the session from the store now and expires the cookie when the response goes out
   * (Phalcon's `destroy()`). No request still in flight on the same session, and no ID change
   * of it, can bring it back. The object can be used afterwards as a brand-new, empty session.
   */
  async destroy(): Promise<void> {
    const s = this.#state;
    await tracked(s, async () => {
      const sid = s.record !== null ? s.sid : null;
      if (sid !== null) await s.driver.destroy(sid);
      s.reset(sid !== null);
      this.#bags = undefined;
    });
  }
}

/** A new ID gets a new CSRF token, if the session had one. */
function rotateCsrf(session: object, s: SessionState): void {
  if (!s.hasField(CSRF_FIELD)) return;
  s.changes.delete(CSRF_FIELD);
  s.writeInternal('csrf', undefined);
  (session as Session).csrf.token();
}
