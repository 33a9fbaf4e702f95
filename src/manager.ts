import { AuditEmitter, type EventInput } from './core/audit-emitter.js';
import { type CommitOutcome, Committer } from './core/commit.js';
import { CookieCodec, type VerifiedCookie } from './core/cookie-codec.js';
import { type RecordCodec, recordCodec } from './core/record-codec.js';
import type { RequestInfo } from './core/request.js';
import { type SessionDriver, SessionState } from './core/state.js';
import { KeyRing } from './crypto/keyring.js';
import { SessionError, sessionLimitReached, storeUnavailable } from './errors.js';
import { type ClientInfo, cleanHeaderValue } from './features/audit.js';
import { auditedThrottle, LoginThrottle, type LoginThrottleOptions } from './features/login-throttle.js';
import { AddressGuard } from './features/throttle.js';
import { type ResolvedOptions, resolveOptions, type SessionManagerOptions } from './options.js';
import { bindingMismatch } from './policy/binding.js';
import { handleAccess } from './policy/renewal.js';
import { SessionLimiter } from './policy/session-limit.js';
import { expiryReason } from './policy/timeouts.js';
import { type DefaultSessionData, type Session, sessionFor, stateOf } from './session.js';
import { FileStore } from './stores/file.js';
import type { SessionMeta, SessionStore, SessionSummary, StoredSession } from './stores/store.js';

export type { CommitOutcome } from './core/commit.js';
export type { RequestInfo } from './core/request.js';

/** How a session ends: the one destroy path. */
interface EndOptions {
  /** Audit event to emit once the record is gone. */
  event?: EventInput;
  /** A failure is only a warning (the record is dead by its metadata anyway). */
  quiet?: boolean;
}

/**
 * Creates and commits sessions for requests. Construct one per application; options are
 * validated here, once, and key material is prepared once.
 *
 * Identity core: a session is one record under a stable id; the cookie carries that id and a
 * secret token whose hash (`meta.h`) the record holds. Every ID change (regenerateId, login,
 * reauthenticate, renewal) is one store `commit` guarded by the handle the request loaded, so it
 * is atomic with every other change of the record, and destroying the record ends every handle
 * it ever had (see docs/architecture.md).
 *
 * @example
 * const sessions = new SessionManager<{ user_id: number }>({ secret: process.env.SESSION_SECRET });
 */
export class SessionManager<D extends object = DefaultSessionData> {
  readonly options: ResolvedOptions;
  readonly store: SessionStore;
  readonly #cookies: CookieCodec;
  readonly #codec: RecordCodec;
  readonly #driver: SessionDriver;
  readonly #events: AuditEmitter;
  readonly #warn: (message: string) => void;
  readonly #addresses: AddressGuard;
  readonly #limiter: SessionLimiter | undefined;
  readonly #committer: Committer;
  readonly #warned = new Set<string>();

  constructor(options: SessionManagerOptions) {
    this.options = resolveOptions(options);
    const keys = new KeyRing(this.options.secrets);
    this.store = options.store ?? new FileStore();
    this.#warn = options.warn ?? ((m) => console.warn(`[sessionflow] ${m}`));
    this.store.setWarn?.(this.#warn);
    this.#events = new AuditEmitter(options.audit, this.#warn, this.options.now);
    this.#cookies = new CookieCodec(keys, this.options);
    this.#codec = recordCodec(keys, this.options.encrypt);
    this.#addresses = new AddressGuard(
      this.options.guessDetection,
      this.options.sessionCreationLimit,
      this.options.now,
      (reason, ip) => this.#events.emit({ type: 'suspicious', client: { ip }, reason }),
    );
    this.#checkStore();
    this.#limiter = this.#makeLimiter();
    this.#driver = this.#makeDriver();
    this.#committer = new Committer({
      options: this.options,
      store: this.store,
      codec: this.#codec,
      cookies: this.#cookies,
      events: this.#events,
      limiter: this.#limiter,
      end: (sid, end) => this.#end(sid, end),
      admitCreation: (state) => this.#admitCreation(state.client),
      warnOnce: (message) => this.#warnOnce(message),
    });
  }

  // ---- request path ----------------------------------------------------------------------

  /**
   * Loads the request's session. No cookie, or a cookie that fails its signature or shape
   * check, costs no store access and yields a fresh session. An unknown ID is never adopted
   * (strict mode). Throws a 503 SessionError if the store fails.
   */
  load(req: RequestInfo): Promise<Session<D>> {
    const loading = this.#load(req);
    // A visitor's pre-session cookie (CSRF without a stored session) rides along, if any.
    const pre = this.#cookies.readPre(req.cookieHeader, req.connection);
    if (pre === undefined) return loading;
    return loading.then((session) => {
      stateOf(session).adoptPre(pre);
      return session;
    });
  }

  async #load(req: RequestInfo): Promise<Session<D>> {
    const o = this.options;
    const client: ClientInfo = { ip: req.ip, userAgent: cleanHeaderValue(req.userAgent) };
    const raw = this.#cookies.read(req.cookieHeader, req.connection);
    // A Secure cookie that arrives over plain HTTP was not set by us over HTTPS: ignore it.
    if (raw === undefined || (o.cookie.secure && !req.secure)) return this.#fresh(client, false);
    const cookie = this.#cookies.verify(raw, req.connection);
    if (!cookie) {
      this.#events.emit({ type: 'session_invalid_cookie', client });
      this.#countGuess(client);
      return this.#fresh(client, true);
    }
    let loaded: StoredSession | null;
    try {
      loaded = await this.store.load(cookie.sid);
    } catch (err) {
      throw storeUnavailable('load', err);
    }
    const record = this.#checkRecord(cookie.sid, loaded, client);
    if (record === null) return this.#fresh(client, true);
    return this.#open(cookie, record, client);
  }

  /**
   * Persists what the request changed, in one store call, and says which headers to send.
   * Writes nothing for a request that changed nothing (unless a throttled touch is due).
   * Throws a 503 SessionError if the store fails.
   */
  commit(session: Session<D> | Session, req: RequestInfo): Promise<CommitOutcome> {
    const s = stateOf(session);
    const out: CommitOutcome = { setCookie: [], noStore: false, gone: false };
    if (s.inFlight > 0) {
      this.#warnOnce(
        'a session was committed while login(), regenerateId() or destroy() was still running: await them before responding.',
      );
    }
    if (s.record === null) return this.#committer.commitNew(s, req, out);
    try {
      return Promise.resolve(this.#committer.commitExisting(s, out));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  // ---- administration ----------------------------------------------------------------------

  /**
   * Ends one session by its id (`session.id`), e.g. from a "my devices" page. Every cookie the
   * session ever had stops working, whatever ID changes it went through.
   */
  async revoke(sid: string): Promise<void> {
    await this.#end(sid, { event: { type: 'session_revoked', sid } });
  }

  /** The live sessions of a user. Needs a store with `capabilities.listByUser`. */
  async sessionsOf(userId: string | number): Promise<SessionSummary[]> {
    return this.#liveSessionsOf(String(userId));
  }

  /**
   * Ends every session of a user (password change, account disabled), except `except`. When the
   * promise resolves, no session of the user that existed when the call began is alive, nor can
   * any request bring one back. Returns how many were ended, or null on a store that revokes
   * without listing (Memcached), which cannot count them.
   */
  async revokeAll(userId: string | number, options: { except?: string } = {}): Promise<number | null> {
    const uid = String(userId);
    if (!this.#listsByUser() && this.store.revokeUser) {
      try {
        await this.store.revokeUser(uid, options.except);
      } catch (err) {
        throw storeUnavailable('revokeAll', err);
      }
      this.#events.emit({ type: 'session_revoked', userId: uid, reason: 'all sessions of the user' });
      return null;
    }
    const list = await this.#liveSessionsOf(uid);
    let count = 0;
    for (const s of list) {
      if (s.key === options.except) continue;
      await this.#end(s.key, { event: { type: 'session_revoked', sid: s.key, userId: uid } });
      count++;
    }
    return count;
  }

  /** Records a refused unsafe request (`malicious_csrf`); integrations call it, apps may too. */
  reportCsrfFailure(session: Session<D> | Session, reason: string): void {
    const s = stateOf(session);
    this.#events.emit({
      type: 'malicious_csrf',
      sid: s.record ? s.sid : null,
      userId: s.userId,
      client: s.client,
      reason,
    });
  }

  /** Records a failed login attempt (`authn_login_fail`) for the user id that was tried. */
  reportLoginFailure(session: Session<D> | Session, userId?: string | number, reason?: string): void {
    const s = stateOf(session);
    const tried = userId === undefined ? undefined : String(userId);
    this.#events.emit({
      type: 'authn_login_fail',
      sid: s.record ? s.sid : null,
      userId: tried,
      client: s.client,
      reason,
    });
  }

  /**
   * Failed-login throttling kept in this manager's store (or `options.store`), shared by every
   * process using it, with audit events through this manager (see {@link LoginThrottle}).
   */
  loginThrottle(options: LoginThrottleOptions = {}): LoginThrottle {
    return new LoginThrottle(this.store, this.options.now, auditedThrottle(this.#events), options);
  }

  /** Deletes expired sessions (Phalcon's garbage collection). Returns how many were removed. */
  async gc(): Promise<number> {
    if (!this.store.capabilities.gc || !this.store.gc) return 0;
    return this.store.gc(this.options.now());
  }

  /** Releases the store's resources (timers, handles). */
  async close(): Promise<void> {
    await this.store.close?.();
  }

  /** The record a verified cookie names, or null (unknown, or failing its metadata check). */
  #checkRecord(sid: string, loaded: StoredSession | null, client: ClientInfo): StoredSession | null {
    let record = loaded;
    if (record !== null && !this.#codec.metaIntact(sid, record.meta)) {
      this.#events.emit({ type: 'store_corrupt', sid, client, reason: 'metadata does not verify' });
      this.#warnOnce(
        'a session record failed its metadata check (tampered, or written without encryption); treated as absent.',
      );
      record = null;
    }
    if (record === null) {
      this.#events.emit({ type: 'session_unknown_id', sid, client });
      this.#countGuess(client);
    }
    return record;
  }

  /** The session of a loaded record, once the cookie's handle, the timeouts and the binding pass. */
  #open(cookie: VerifiedCookie, record: StoredSession, client: ClientInfo): Session<D> | Promise<Session<D>> {
    const o = this.options;
    const sid = cookie.sid;
    const meta = record.meta;
    const now = o.now();
    const access = handleAccess(meta, cookie.handle, now);
    if (access === 'foreign') {
      this.#events.emit({ type: 'session_unknown_id', sid, client, reason: 'retired handle' });
      this.#countGuess(client);
      return this.#fresh(client, true);
    }
    if (access === 'replaced') return this.#reused(sid, meta, client);
    const reason = expiryReason(o, meta, now);
    if (reason) {
      const event = { type: 'session_expired', sid, client, reason, userId: meta.userId } as const;
      return this.#end(sid, { event, quiet: true }).then(() => this.#fresh(client, true, reason));
    }
    const mismatch = bindingMismatch(o.binding, meta, client);
    if (mismatch) {
      const userId = meta.userId;
      this.#events.emit({ type: 'session_binding_mismatch', sid, client, reason: mismatch, userId });
      if (o.binding.action === 'destroy') {
        return this.#end(sid, { quiet: true }).then(() => this.#fresh(client, true, `binding:${mismatch}`));
      }
    }
    // Within a renewal's grace the request is served without a token: the renewing response
    // carried the new cookie, and this one must not overwrite it.
    const token = access === 'current' ? cookie.token : null;
    const reissueCookie = token !== null && cookie.keyIndex > 0;
    const init = { sid, token, handle: cookie.handle, record, client, reissueCookie, hadCookie: true };
    return sessionFor<D>(new SessionState(this.#driver, init));
  }

  /** Option combinations the store cannot serve: an error, or a warning where it degrades. */
  #checkStore(): void {
    const storeName = this.store.constructor.name;
    if (this.options.maxSessionsPerUser && !this.#listsByUser()) {
      throw new SessionError(
        'INVALID_OPTION',
        `maxSessionsPerUser needs a store that lists sessions by user (capabilities.listByUser), and ${storeName} cannot: use the memory, file, Redis or SQL store, or remove maxSessionsPerUser.`,
      );
    }
    if (this.options.renewal && this.options.renewal.onReuse === 'revoke-user' && !this.#revokesByUser()) {
      this.#warn(
        `renewal.onReuse 'revoke-user' needs a store that lists or revokes sessions by user, and ${storeName} cannot: a renewed-away ID used after its grace window will only be logged.`,
      );
    }
  }

  #makeLimiter(): SessionLimiter | undefined {
    const limit = this.options.maxSessionsPerUser;
    if (!limit) return undefined;
    return new SessionLimiter(limit, {
      list: (userId) => this.#liveSessionsOf(userId),
      revoke: (sid, reason, userId) =>
        this.#end(sid, { event: { type: 'session_revoked', sid, reason, userId } }),
      report: (sid, userId, reason) =>
        this.#events.emit({ type: 'excess_sessions_exceeded', sid, userId, reason }),
      warn: this.#warn,
    });
  }

  /** What a session's state may ask of the manager. */
  #makeDriver(): SessionDriver {
    return {
      options: this.options,
      encode: this.#codec.encode,
      encodedSize: this.#codec.encodedSize,
      decode: (sid, field, stored) => {
        const json = this.#codec.decode(sid, field, stored);
        if (json === null) this.#events.emit({ type: 'store_corrupt', sid, reason: 'undecryptable value' });
        return json;
      },
      destroy: (sid) => this.#end(sid, {}),
      admitLogin: async (state, userId) => {
        if (await this.#limiter?.refuses(userId, state.record ? state.sid : null)) {
          throw sessionLimitReached((this.options.maxSessionsPerUser as { limit: number }).limit);
        }
      },
      audit: (type, state, reason) =>
        this.#events.emit({ type, sid: state.id(), userId: state.userId, client: state.client, reason }),
      warn: (message) => this.#warnOnce(message),
      preToken: (nonce) => this.#cookies.preToken(nonce),
      preCookie: (nonce) => this.#cookies.issuePre(nonce),
      verifyPreToken: (nonce, submitted) => this.#cookies.verifyPreToken(nonce, submitted),
    };
  }

  // ---- ending sessions -------------------------------------------------------------------------

  /** The one destroy path: deletes the record (every handle it had dies with it). */
  async #end(sid: string, options: EndOptions): Promise<void> {
    try {
      await this.store.destroy(sid);
    } catch (err) {
      if (!options.quiet) throw storeUnavailable('destroy', err);
      // The record is dead by its metadata whatever happens here; the store's TTL/GC will reap it.
      this.#warn(`could not delete an ended session: ${(err as Error).message}`);
    }
    if (options.event) this.#events.emit(options.event);
  }

  /**
   * A cookie whose handle an ID change retired (SM-24): reported, and with renewal's
   * `onReuse: 'revoke-user'`, every session of its user is revoked (one of the two holders of
   * the old cookie is not the user).
   */
  async #reused(sid: string, meta: SessionMeta, client: ClientInfo): Promise<Session<D>> {
    const renewed = meta.phUntil !== undefined;
    const reason = renewed ? 'renewed' : 'regenerated';
    this.#events.emit({ type: 'session_use_after_expire', sid, client, reason, userId: meta.userId });
    const o = this.options;
    if (
      renewed &&
      o.renewal &&
      o.renewal.onReuse === 'revoke-user' &&
      meta.userId !== undefined &&
      this.#revokesByUser()
    ) {
      await this.revokeAll(meta.userId);
    }
    return this.#fresh(client, true, reason);
  }

  /** The user's sessions. */
  async #liveSessionsOf(userId: string): Promise<SessionSummary[]> {
    const store = this.store;
    if (!this.#listsByUser()) {
      throw new SessionError(
        'NOT_SUPPORTED',
        `${store.constructor.name} cannot list sessions by user; use a store with capabilities.listByUser (Redis, SQL, file, memory).`,
      );
    }
    try {
      return await store.sessionsOf!(userId);
    } catch (err) {
      throw storeUnavailable('sessionsOf', err);
    }
  }

  /** The store can end all sessions of a user: by listing them, or natively (`revokeUser`). */
  #revokesByUser(): boolean {
    return this.#listsByUser() || typeof this.store.revokeUser === 'function';
  }

  #listsByUser(): boolean {
    return this.store.capabilities.listByUser && typeof this.store.sessionsOf === 'function';
  }

  #fresh(client: ClientInfo, hadCookie: boolean, endedReason?: string): Session<D> {
    const init = {
      sid: null,
      token: null,
      handle: null,
      record: null,
      client,
      reissueCookie: false,
      hadCookie,
    };
    return sessionFor<D>(
      new SessionState(this.#driver, endedReason === undefined ? init : { ...init, endedReason }),
    );
  }

  /** `sessionCreationLimit`: one more stored session for this address, or a 429. */
  #admitCreation(client: ClientInfo): void {
    if (this.#addresses.admitCreation(client.ip)) return;
    throw new SessionError(
      'TOO_MANY_SESSIONS',
      'Too many new sessions from your address; wait a minute and try again.',
    );
  }

  /** An invalid or unknown session cookie: one more guess from this address (SM-42). */
  #countGuess(client: ClientInfo): void {
    this.#addresses.guess(client.ip);
  }

  #warnOnce(message: string): void {
    if (this.#warned.has(message)) return;
    this.#warned.add(message);
    this.#warn(message);
  }
}
