import { type BagHost, SessionBag } from './bag.js';
import { newToken, storageKey } from './crypto/ids.js';
import { SessionError } from './errors.js';
import type { AuditEventType, ClientInfo } from './features/audit.js';
import { Csrf } from './features/csrf.js';
import { Flash } from './features/flash.js';
import type { ResolvedOptions } from './options.js';
import { toJson } from './serialize.js';
import type { SessionMeta, StoredSession } from './stores/store.js';

/** What a Session needs from its manager; the only way a Session reaches I/O. */
export interface SessionDriver {
  readonly options: ResolvedOptions;
  /** Encodes (and with encryption on, seals) one value for `key`. */
  encode(key: string, field: string, json: string): string;
  /** Bytes `json` will take in the store once encoded (sealed, with encryption on). */
  encodedSize(json: string): number;
  /** Decodes one stored value; null if it cannot be opened (tampered, foreign key). */
  decode(key: string, field: string, stored: string): string | null;
  destroy(key: string): Promise<void>;
  /**
   * Throws SESSION_LIMIT before a login that `maxSessionsPerUser` with 'refuse' would turn down,
   * so the app can answer "too many sessions" from its handler. `current` is the session's own
   * record, which the login replaces and so does not count.
   */
  admitLogin(session: Session, userId: string, current: string | null): Promise<void>;
  audit(type: AuditEventType, session: Session, reason?: string): void;
}

/** Lifecycle state, after Phalcon's Manager::status(). */
export type SessionStatus = 'new' | 'active' | 'destroyed';

const USER = 'v:';
const INTERNAL = 's:';

/** Internal state handed from the manager at load and read back at commit. */
export interface SessionInit {
  token: string | null;
  key: string | null;
  record: StoredSession | null;
  client: ClientInfo;
  /** The cookie was signed with an older key, or must be re-sent for another reason. */
  reissueCookie: boolean;
  /** Why the request's previous session was dropped, if it was (e.g. 'idle', 'absolute'). */
  endedReason?: string;
  /** The request carried a session cookie (valid or not). */
  hadCookie: boolean;
}

/** Everything the manager needs to persist a session at the end of a request. */
export interface PendingWrite {
  token: string | null;
  key: string | null;
  record: StoredSession | null;
  changes: ReadonlyMap<string, string | undefined>;
  meta: Partial<SessionMeta>;
  regenerateFrom: { key: string; deleteOld: boolean } | null;
  reissueCookie: boolean;
  clearCookie: boolean;
  hadCookie: boolean;
}

/**
 * One request's view of a session, with Phalcon's API: get/set/has/remove, bags, flash, CSRF,
 * regenerateId and destroy. Reads come from the record loaded at the start of the request;
 * writes are collected and committed as one delta when the response goes out.
 *
 * @example
 * session.set('user_id', 42);
 * const cart = session.get('cart', []);
 */
export class Session<D extends Record<string, unknown> = Record<string, unknown>> {
  readonly #driver: SessionDriver;
  #token: string | null;
  #key: string | null;
  #record: StoredSession | null;
  /** The key the loaded values were encoded under (differs from #key after regenerateId). */
  #loadedKey: string | null;
  #changes = new Map<string, string | undefined>();
  #meta: Partial<SessionMeta> = {};
  #regenerateFrom: { key: string; deleteOld: boolean } | null = null;
  #reissueCookie: boolean;
  #clearCookie = false;
  #onFirstChange: (() => void) | undefined;
  #hadCookie: boolean;
  #destroyed = false;
  #flash?: Flash;
  #csrf?: Csrf;
  #bags = new Map<string, SessionBag>();
  readonly #client: ClientInfo;
  readonly #endedReason: string | undefined;

  /** @internal created by SessionManager.load */
  constructor(driver: SessionDriver, init: SessionInit) {
    this.#driver = driver;
    this.#token = init.token;
    this.#key = init.key;
    this.#record = init.record;
    this.#loadedKey = init.key;
    this.#client = init.client;
    this.#reissueCookie = init.reissueCookie;
    this.#hadCookie = init.hadCookie;
    this.#endedReason = init.endedReason;
  }

  // ---- identity -------------------------------------------------------------------------

  /**
   * The session's storage key: a hash of the cookie token, safe to log and to pass to
   * `manager.revoke()`, useless as a cookie. A new session gets its key on first access.
   */
  get id(): string {
    if (this.#key === null) {
      this.#token = newToken();
      this.#key = storageKey(this.#token);
    }
    return this.#key;
  }

  /** True until the session has been stored (a visitor who never writes stays new). */
  get isNew(): boolean {
    return this.#record === null;
  }

  get status(): SessionStatus {
    if (this.#destroyed && this.#record === null && this.#changes.size === 0) return 'destroyed';
    return this.#record === null ? 'new' : 'active';
  }

  /** Why the previous session of this client ended at the start of this request, e.g. 'idle'. */
  get endedReason(): string | undefined {
    return this.#endedReason;
  }

  /** The authenticated user's id, set by {@link login}. */
  get userId(): string | undefined {
    return 'userId' in this.#meta ? this.#meta.userId : this.#record?.meta.userId;
  }

  /** When the user authenticated on this session (ms since epoch). */
  get authenticatedAt(): number | undefined {
    return 'authAt' in this.#meta ? this.#meta.authAt : this.#record?.meta.authAt;
  }

  /**
   * True if the user proved who they are (login or reauthenticate) at most `maxAgeMs` ago.
   * Gate sensitive changes (email, password, MFA) on it (ASVS 7.5.1, SM-39).
   */
  isRecentlyAuthenticated(maxAgeMs: number): boolean {
    const at = this.authenticatedAt;
    return at !== undefined && this.#driver.options.now() - at <= maxAgeMs;
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
    return this.#client;
  }

  // ---- values ---------------------------------------------------------------------------

  /** The value of `key`, or `fallback` (Phalcon: `$session->get('key', 'default')`). */
  get<K extends keyof D & string>(key: K): D[K] | undefined;
  get<K extends keyof D & string>(key: K, fallback: D[K]): D[K];
  get(key: string, fallback?: unknown): unknown {
    const value = this.getField(USER + key);
    return value === undefined ? fallback : value;
  }

  /** Stores a JSON-serialisable value; anything else is a NOT_SERIALIZABLE error right here. */
  set<K extends keyof D & string>(key: K, value: D[K]): this {
    this.setField(USER + key, value);
    return this;
  }

  has(key: keyof D & string): boolean {
    return this.hasField(USER + key);
  }

  remove(key: keyof D & string): void {
    this.removeField(USER + key);
  }

  /** Every top-level key (bags and internal data excluded). */
  keys(): string[] {
    return this.fieldsWithPrefix(USER).map((f) => f.slice(USER.length));
  }

  /** A scoped group of keys (Phalcon's Session\Bag). */
  bag<T extends Record<string, unknown> = Record<string, unknown>>(name: string): SessionBag<T> {
    let bag = this.#bags.get(name);
    if (!bag) {
      bag = new SessionBag(this as BagHost, name);
      this.#bags.set(name, bag);
    }
    return bag as SessionBag<T>;
  }

  /** Flash messages: set now, shown on the next page, then gone. */
  get flash(): Flash {
    this.#flash ??= new Flash(this);
    return this.#flash;
  }

  /** The session's CSRF synchronizer token. */
  get csrf(): Csrf {
    this.#csrf ??= new Csrf(this, this.#driver.options.csrf.field);
    return this.#csrf;
  }

  // ---- field level (used by bags, flash and csrf) ----------------------------------------

  /** @internal */
  getField(field: string): unknown {
    const json = this.#json(field);
    return json === undefined ? undefined : JSON.parse(json);
  }

  /** @internal */
  setField(field: string, value: unknown): void {
    const json = toJson(value, field.startsWith(USER) ? field.slice(USER.length) : field);
    if (this.#json(field) === json) return;
    // Checked before the write: a refused value must not be committed anyway at the end of the request.
    this.#checkSize(field, json);
    this.#changes.set(field, json);
    this.#changed();
  }

  /** @internal */
  hasField(field: string): boolean {
    return this.#json(field) !== undefined;
  }

  /** @internal */
  removeField(field: string): void {
    if (this.#changes.has(field)) {
      if (this.#record && field in this.#record.values) this.#changes.set(field, undefined);
      else this.#changes.delete(field);
    } else if (this.#record && field in this.#record.values) {
      this.#changes.set(field, undefined);
    }
  }

  /** @internal */
  fieldsWithPrefix(prefix: string): string[] {
    const out = new Set<string>();
    if (this.#record) for (const f of Object.keys(this.#record.values)) if (f.startsWith(prefix)) out.add(f);
    for (const [f, v] of this.#changes) {
      if (!f.startsWith(prefix)) continue;
      if (v === undefined) out.delete(f);
      else out.add(f);
    }
    return [...out];
  }

  /** @internal flash and CSRF data live under their own prefix, out of reach of app keys. */
  readInternal(name: string): unknown {
    return this.getField(INTERNAL + name);
  }

  /** @internal */
  writeInternal(name: string, value: unknown): void {
    if (value === undefined) this.removeField(INTERNAL + name);
    else this.setField(INTERNAL + name, value);
  }

  #json(field: string): string | undefined {
    if (this.#changes.has(field)) return this.#changes.get(field);
    const stored = this.#record?.values[field];
    if (stored === undefined || !Object.hasOwn(this.#record!.values, field)) return undefined;
    const json = this.#driver.decode(this.#loadedKey!, field, stored);
    return json ?? undefined;
  }

  /**
   * Throws VALUE_TOO_LARGE if setting `field` to `json` would take the stored session over
   * maxSize. Counted as stored (sealed, in bytes) on both sides, so whatever one request was
   * allowed to write never blocks the writes of the next.
   */
  #checkSize(field: string, json: string): void {
    const d = this.#driver;
    let total = Buffer.byteLength(field) + d.encodedSize(json);
    if (this.#record)
      for (const [f, v] of Object.entries(this.#record.values))
        if (f !== field && !this.#changes.has(f)) total += Buffer.byteLength(f) + Buffer.byteLength(v);
    for (const [f, v] of this.#changes)
      if (f !== field && v !== undefined) total += Buffer.byteLength(f) + d.encodedSize(v);
    if (total > d.options.maxSize) {
      throw new SessionError(
        'VALUE_TOO_LARGE',
        `session data would be ${total} bytes, over the ${d.options.maxSize}-byte limit; keep sessions small (store ids, not objects) or raise maxSize.`,
      );
    }
  }

  // ---- lifecycle -------------------------------------------------------------------------

  /**
   * Gives the session a new ID, keeping its data (Phalcon's `regenerateId(true)`); the old ID
   * stops working when the request commits. Call it after login and on every privilege change.
   * The CSRF token is rotated with it.
   */
  async regenerateId(deleteOld = true): Promise<void> {
    if (this.#record !== null && this.#regenerateFrom === null && this.#loadedKey !== null) {
      this.#regenerateFrom = { key: this.#loadedKey, deleteOld };
    } else if (this.#regenerateFrom) {
      this.#regenerateFrom.deleteOld ||= deleteOld;
    }
    this.#token = newToken();
    this.#key = storageKey(this.#token);
    if (this.hasField(`${INTERNAL}csrf`)) {
      this.#changes.delete(`${INTERNAL}csrf`);
      this.writeInternal('csrf', undefined);
      this.csrf.token();
    }
    if (this.#record !== null) this.#driver.audit('session_renewed', this);
  }

  /**
   * Authenticates the session as `userId` (seed 27.1): regenerates the ID, drops pre-login data
   * except flash messages and `keepOnLogin` keys, restarts both timeouts, records the user.
   * With `maxSessionsPerUser` set to 'refuse', throws a 409 SessionError (SESSION_LIMIT) when the
   * user already holds the most sessions allowed; the session is then left unchanged.
   */
  async login(userId: string | number): Promise<void> {
    // Before anything changes: a refused login leaves the session exactly as it was.
    await this.#driver.admitLogin(this, String(userId), this.#loadedKey);
    const keep = this.#driver.options.keepOnLogin;
    for (const field of this.fieldsWithPrefix('')) {
      const isKept =
        field === `${INTERNAL}flash` || (field.startsWith(USER) && keep.has(field.slice(USER.length)));
      if (!isKept) this.removeField(field);
    }
    await this.regenerateId(true);
    const now = this.#driver.options.now();
    this.#meta.userId = String(userId);
    this.#meta.authAt = now;
    this.#meta.createdAt = now;
    this.#meta.deadline = now + this.#driver.options.absoluteTimeout;
    this.#changed();
    this.#driver.audit('authn_login_success', this);
  }

  /**
   * Marks a successful re-authentication: new ID, both timers restart (NIST 63B §5.2).
   */
  async reauthenticate(): Promise<void> {
    await this.regenerateId(true);
    const now = this.#driver.options.now();
    this.#meta.authAt = now;
    this.#meta.deadline = now + this.#driver.options.absoluteTimeout;
    this.#changed();
  }

  /** Logs out: records the event, then destroys the session (see {@link destroy}). */
  async logout(): Promise<void> {
    if (this.#record !== null) this.#driver.audit('session_logout', this);
    await this.destroy();
  }

  /**
   * Deletes the session from the store now and expires the cookie when the response goes out
   * (Phalcon's `destroy()`). A request still in flight on the same session cannot bring it back.
   * The object can be used afterwards as a brand-new, empty session.
   */
  async destroy(): Promise<void> {
    const keys = new Set<string>();
    if (this.#regenerateFrom) keys.add(this.#regenerateFrom.key);
    if (this.#record !== null && this.#loadedKey) keys.add(this.#loadedKey);
    for (const key of keys) await this.#driver.destroy(key);
    this.#record = null;
    this.#token = null;
    this.#key = null;
    this.#loadedKey = null;
    this.#changes.clear();
    this.#meta = {};
    this.#regenerateFrom = null;
    this.#reissueCookie = false;
    this.#destroyed = true;
    this.#clearCookie = this.#hadCookie || keys.size > 0;
    if (this.#clearCookie) this.#changed();
  }

  /**
   * @internal An integration that holds the response for new sessions only once they change
   * registers here: a visitor who never writes then costs no hold and no commit.
   */
  onFirstChange(listener: () => void): void {
    this.#onFirstChange = listener;
  }

  #changed(): void {
    const listener = this.#onFirstChange;
    if (listener) {
      this.#onFirstChange = undefined;
      listener();
    }
  }

  /** @internal read by the manager at commit. */
  pending(): PendingWrite {
    return {
      token: this.#token,
      key: this.#key,
      record: this.#record,
      changes: this.#changes,
      meta: this.#meta,
      regenerateFrom: this.#regenerateFrom,
      reissueCookie: this.#reissueCookie,
      clearCookie: this.#clearCookie,
      hadCookie: this.#hadCookie,
    };
  }

  /** @internal the manager assigns the token of a session it is about to create. */
  assignToken(token: string): void {
    this.#token = token;
    this.#key = storageKey(token);
  }

  /**
   * @internal the request's writes landed on the record its ID was renewed into (SM-24): the
   * session is that record now, known by key only (its token is in the renewing response's cookie).
   */
  redirect(key: string): void {
    this.#token = null;
    this.#key = key;
  }

  /** @internal after a successful commit: the written state becomes the loaded state. */
  committed(record: StoredSession | null): void {
    this.#record = record;
    this.#loadedKey = this.#key;
    this.#changes.clear();
    this.#meta = {};
    this.#regenerateFrom = null;
    this.#reissueCookie = false;
    this.#clearCookie = false;
  }
}
