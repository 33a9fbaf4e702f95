import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseCookies, serialize as serializeCookie } from 'cookie';
import { auditTag, isWellFormedToken, newToken, storageKey } from './crypto/ids.js';
import { KeyRing } from './crypto/keyring.js';
import { SessionError, storeUnavailable } from './errors.js';
import { type AuditEvent, type AuditEventType, type ClientInfo, cleanHeaderValue } from './features/audit.js';
import { GuessDetector } from './features/throttle.js';
import { type ResolvedOptions, resolveOptions, type SessionManagerOptions } from './options.js';
import { bindingMeta, bindingMismatch } from './policy/binding.js';
import { expiryReason, remainingTtl, shouldTouch, storeTtl } from './policy/timeouts.js';
import { Session, type SessionDriver } from './session.js';
import { FileStore } from './stores/file.js';
import type { SessionMeta, SessionStore, SessionSummary, StoredSession } from './stores/store.js';

/** What an integration tells the manager about a request. */
export interface RequestInfo {
  /** The raw `Cookie` header. */
  cookieHeader?: string | undefined;
  /** The request arrived over HTTPS (directly, or through a trusted proxy). */
  secure: boolean;
  /** Client address, already resolved through trusted proxies. */
  ip?: string | undefined;
  userAgent?: string | undefined;
}

/** What an integration must do to the response after a commit. */
export interface CommitOutcome {
  /** `Set-Cookie` header values to append. */
  setCookie: string[];
  /** The response carries or depends on session state: send `Cache-Control: no-store`. */
  noStore: boolean;
  /** Send `Clear-Site-Data` with this value (logout). */
  clearSiteData?: string;
  /** The session was destroyed by another request meanwhile; this request's writes were dropped. */
  gone: boolean;
}

const MAX_COOKIE_VALUE = 128;

/**
 * Creates and commits sessions for requests. Construct one per application; options are
 * validated here, once, and key material is prepared once.
 *
 * @example
 * const sessions = new SessionManager<{ user_id: number }>({ secret: process.env.SESSION_SECRET });
 */
export class SessionManager<D extends Record<string, unknown> = Record<string, unknown>> {
  readonly options: ResolvedOptions;
  readonly store: SessionStore;
  readonly #keys: KeyRing;
  readonly #driver: SessionDriver;
  readonly #audit: ((event: AuditEvent) => void) | undefined;
  readonly #warn: (message: string) => void;
  readonly #guesses: GuessDetector | undefined;
  #warnedInsecure = false;

  constructor(options: SessionManagerOptions) {
    this.options = resolveOptions(options);
    this.#keys = new KeyRing(this.options.secrets);
    this.store = options.store ?? new FileStore({ dir: join(tmpdir(), 'sessionflow') });
    this.#audit = options.audit;
    this.#warn = options.warn ?? ((m) => console.warn(`[sessionflow] ${m}`));
    const guessing = this.options.guessDetection;
    this.#guesses = guessing ? new GuessDetector(guessing, this.options.now) : undefined;
    const keys = this.#keys;
    const encrypt = this.options.encrypt;
    this.#driver = {
      options: this.options,
      encode: encrypt ? (key, field, json) => keys.seal(json, `${key}\0${field}`) : (_k, _f, json) => json,
      encodedSize: encrypt
        ? (json) => keys.sealedLength(Buffer.byteLength(json))
        : (json) => Buffer.byteLength(json),
      decode: encrypt
        ? (key, field, stored) => {
            const json = keys.open(stored, `${key}\0${field}`);
            if (json === null) this.#emit('store_corrupt', undefined, {}, 'undecryptable value', key);
            return json;
          }
        : (_k, _f, stored) => stored,
      destroy: async (key) => {
        try {
          await this.store.destroy(key);
        } catch (err) {
          throw storeUnavailable('destroy', err);
        }
      },
      audit: (type, session, reason) => this.#emit(type, session, session.client, reason),
    };
  }

  // ---- request path ----------------------------------------------------------------------

  /**
   * Loads the request's session. No cookie, or a cookie that fails its signature or shape
   * check, costs no store access and yields a fresh session. An unknown ID is never adopted
   * (strict mode). Throws a 503 SessionError if the store fails.
   */
  async load(req: RequestInfo): Promise<Session<D>> {
    const o = this.options;
    const client: ClientInfo = { ip: req.ip, userAgent: cleanHeaderValue(req.userAgent) };
    const raw = this.#readCookie(req.cookieHeader);
    if (raw === undefined) return this.#fresh(client, false);
    // A Secure cookie that arrives over plain HTTP was not set by us over HTTPS: ignore it.
    if (o.cookie.secure && !req.secure) return this.#fresh(client, false);
    const verified = raw.length <= MAX_COOKIE_VALUE ? this.#keys.verify(o.cookie.name, raw) : null;
    if (!verified || !isWellFormedToken(verified.value)) {
      this.#emit('session_invalid_cookie', undefined, client);
      this.#countGuess(client);
      return this.#fresh(client, true);
    }
    const key = storageKey(verified.value);
    let record: StoredSession | null;
    try {
      record = await this.store.load(key);
    } catch (err) {
      throw storeUnavailable('load', err);
    }
    if (record === null) {
      this.#emit('session_unknown_id', undefined, client, undefined, key);
      this.#countGuess(client);
      return this.#fresh(client, true);
    }
    const reason = expiryReason(o, record.meta, o.now());
    if (reason) {
      await this.#destroyQuietly(key);
      this.#emit('session_expired', undefined, client, reason, key, record.meta.userId);
      return this.#fresh(client, true, reason);
    }
    const mismatch = bindingMismatch(o.binding, record.meta, client);
    if (mismatch) {
      this.#emit('session_binding_mismatch', undefined, client, mismatch, key, record.meta.userId);
      if (o.binding.action === 'destroy') {
        await this.#destroyQuietly(key);
        return this.#fresh(client, true, `binding:${mismatch}`);
      }
    }
    return new Session<D>(this.#driver, {
      token: verified.value,
      key,
      record,
      client,
      reissueCookie: verified.keyIndex > 0,
      hadCookie: true,
    });
  }

  /**
   * Persists what the request changed, in one store call where possible, and says which
   * headers to send. Writes nothing for a request that changed nothing (unless a throttled
   * touch is due). Throws a 503 SessionError if the store fails.
   */
  async commit(session: Session<D>, req: RequestInfo): Promise<CommitOutcome> {
    const o = this.options;
    const p = session.pending();
    const now = o.now();
    const out: CommitOutcome = { setCookie: [], noStore: false, gone: false };
    const hasChanges = p.changes.size > 0 || Object.keys(p.meta).length > 0;

    if (p.record === null) {
      if (!hasChanges) {
        if (p.clearCookie) this.#clear(out);
        return out;
      }
      if (o.cookie.secure && !req.secure) {
        if (!this.#warnedInsecure) {
          this.#warnedInsecure = true;
          this.#warn(
            'a session was written on a plain-HTTP request while cookie.secure is on, so no cookie can be sent; serve over HTTPS, set trustProxy behind a TLS proxy, or set cookie.secure: false for local development.',
          );
        }
        return out;
      }
      const meta: SessionMeta = {
        createdAt: now,
        lastSeenAt: now,
        deadline: now + o.absoluteTimeout,
        ...bindingMeta(o.binding, session.client),
        ...p.meta,
      };
      meta.lastSeenAt = now;
      for (let attempt = 0; ; attempt++) {
        const token = attempt === 0 && p.token ? p.token : newToken();
        session.assignToken(token);
        const key = storageKey(token);
        const values: Record<string, string> = {};
        for (const [f, json] of p.changes)
          if (json !== undefined) values[f] = this.#driver.encode(key, f, json);
        const record: StoredSession = { meta, values };
        let created: boolean;
        try {
          created = await this.store.create(key, record, storeTtl(o, meta, now));
        } catch (err) {
          throw storeUnavailable('create', err);
        }
        if (created) {
          this.#emit('session_created', session, session.client);
          session.committed(record);
          out.setCookie.push(this.#cookie(token, meta, now));
          out.noStore = true;
          return out;
        }
        // 256-bit collisions do not happen; a false here means the store is misbehaving.
        if (attempt >= 2) throw storeUnavailable('create', new Error('store refused three fresh keys'));
      }
    }

    const key = p.key!;
    if (p.regenerateFrom) {
      const json = session.loadedJson();
      for (const [f, v] of p.changes) {
        if (v === undefined) json.delete(f);
        else json.set(f, v);
      }
      const values: Record<string, string> = {};
      for (const [f, v] of json) values[f] = this.#driver.encode(key, f, v);
      // login() ran in this request: a new identity, not one carried over from the old session.
      const loggedIn = p.meta.userId !== undefined;
      const meta: SessionMeta = {
        ...p.record.meta,
        // Login binds the session to the client that logged in, even a session created before
        // binding was turned on.
        ...(loggedIn ? bindingMeta(o.binding, session.client) : {}),
        ...p.meta,
        lastSeenAt: now,
      };
      const record: StoredSession = { meta, values };
      const ttl = storeTtl(o, meta, now);
      const from = p.regenerateFrom;
      try {
        // The new record carries the old one's data and identity forward, which is valid only
        // while the old one exists: a logout or revocation that landed while this request ran
        // must win (SM-35), even over a reauthentication. A login does not depend on the old
        // session, so a double-submitted login form still signs the user in.
        if (!loggedIn) {
          const oldTtl = storeTtl(o, { ...p.record.meta, lastSeenAt: now }, now);
          if ((await this.store.touch(from.key, { lastSeenAt: now }, oldTtl)) === 'gone') {
            out.gone = true;
            return out;
          }
        }
        if (!(await this.store.create(key, record, ttl))) throw new Error('regenerated key already exists');
        if (from.deleteOld) await this.store.destroy(from.key);
      } catch (err) {
        throw storeUnavailable('regenerate', err);
      }
      session.committed(record);
      out.setCookie.push(this.#cookie(p.token!, meta, now));
      out.noStore = true;
      return out;
    }

    const meta: SessionMeta = { ...p.record.meta, ...p.meta, lastSeenAt: now };
    out.noStore = true;
    // The session died while this request ran (a slow handler crossed the deadline).
    if (remainingTtl(o, meta, now) <= 0) {
      await this.#destroyQuietly(key);
      out.gone = true;
      this.#clear(out);
      return out;
    }
    const ttl = storeTtl(o, meta, now);
    let result: 'ok' | 'gone';
    let written = true;
    try {
      if (hasChanges) {
        const set: Record<string, string> = {};
        const unset: string[] = [];
        for (const [f, v] of p.changes) {
          if (v === undefined) unset.push(f);
          else set[f] = this.#driver.encode(key, f, v);
        }
        result = await this.store.commit(key, { set, unset, meta: { ...p.meta, lastSeenAt: now } }, ttl);
        if (result === 'ok') {
          const values = { ...p.record.values };
          for (const f of unset) delete values[f];
          Object.assign(values, set);
          session.committed({ meta, values });
        }
      } else if (shouldTouch(o, p.record.meta, now)) {
        result = await this.store.touch(key, { lastSeenAt: now }, ttl);
        if (result === 'ok') session.committed({ meta, values: p.record.values });
      } else {
        result = 'ok';
        written = false;
      }
    } catch (err) {
      throw storeUnavailable(hasChanges ? 'commit' : 'touch', err);
    }
    if (result === 'gone') {
      // Destroyed by a concurrent request (logout, revoke): stay dead, send nothing.
      out.gone = true;
      return out;
    }
    if (p.reissueCookie || (written && o.cookie.maxAge !== undefined)) {
      out.setCookie.push(this.#cookie(p.token!, written ? meta : p.record.meta, now));
    }
    return out;
  }

  // ---- administration ----------------------------------------------------------------------

  /** Destroys one session by its storage key (`session.id`), e.g. from a "my devices" page. */
  async revoke(key: string): Promise<void> {
    try {
      await this.store.destroy(key);
    } catch (err) {
      throw storeUnavailable('revoke', err);
    }
    this.#emit('session_revoked', undefined, {}, undefined, key);
  }

  /** The live sessions of a user. Needs a store with `capabilities.listByUser`. */
  async sessionsOf(userId: string | number): Promise<SessionSummary[]> {
    const store = this.store;
    if (!store.capabilities.listByUser || !store.sessionsOf) {
      throw new SessionError(
        'NOT_SUPPORTED',
        `${store.constructor.name} cannot list sessions by user; use a store with capabilities.listByUser (Redis, SQL, file, memory).`,
      );
    }
    try {
      return await store.sessionsOf(String(userId));
    } catch (err) {
      throw storeUnavailable('sessionsOf', err);
    }
  }

  /** Destroys every session of a user (password change, account disabled), except `except`. */
  async revokeAll(userId: string | number, options: { except?: string } = {}): Promise<number> {
    const list = await this.sessionsOf(userId);
    let count = 0;
    for (const s of list) {
      if (s.key === options.except) continue;
      await this.revoke(s.key);
      count++;
    }
    return count;
  }

  /** Records a refused unsafe request (`malicious_csrf`); integrations call it, apps may too. */
  reportCsrfFailure(session: Session<D> | Session, reason: string): void {
    this.#emit('malicious_csrf', session.isNew ? undefined : session, session.client, reason);
  }

  /** Records a failed login attempt (`authn_login_fail`) for the user id that was tried. */
  reportLoginFailure(session: Session<D> | Session, userId?: string | number, reason?: string): void {
    const tried = userId === undefined ? undefined : String(userId);
    this.#emit(
      'authn_login_fail',
      session.isNew ? undefined : session,
      session.client,
      reason,
      undefined,
      tried,
    );
  }

  /** Deletes expired sessions (Phalcon's garbage collection). Returns how many were removed. */
  async gc(): Promise<number> {
    if (!this.store.gc) return 0;
    return this.store.gc(this.options.now());
  }

  /** Releases the store's resources (timers, handles). */
  async close(): Promise<void> {
    await this.store.close?.();
  }

  // ---- internals ---------------------------------------------------------------------------

  #fresh(client: ClientInfo, hadCookie: boolean, endedReason?: string): Session<D> {
    return new Session<D>(this.#driver, {
      token: null,
      key: null,
      record: null,
      client,
      reissueCookie: false,
      hadCookie,
      ...(endedReason === undefined ? {} : { endedReason }),
    });
  }

  #readCookie(header: string | undefined): string | undefined {
    // Fast path: most requests of a site that never wrote a session carry no such cookie.
    if (!header?.includes(this.options.cookie.name)) return undefined;
    // `cookie.parse` keeps the first of duplicated names and uses a null-prototype object.
    return parseCookies(header)[this.options.cookie.name];
  }

  #cookie(token: string, meta: SessionMeta, now: number): string {
    const c = this.options.cookie;
    const maxAge =
      c.maxAge === undefined ? undefined : Math.floor(Math.min(c.maxAge, meta.deadline - now) / 1000);
    return serializeCookie(c.name, this.#keys.sign(c.name, token), {
      httpOnly: true,
      secure: c.secure,
      sameSite: c.sameSite,
      path: c.path,
      ...(c.domain === undefined ? {} : { domain: c.domain }),
      ...(maxAge === undefined ? {} : { maxAge }),
      ...(c.partitioned ? { partitioned: true } : {}),
    });
  }

  #clear(out: CommitOutcome): void {
    const c = this.options.cookie;
    out.setCookie.push(
      serializeCookie(c.name, '', {
        httpOnly: true,
        secure: c.secure,
        sameSite: c.sameSite,
        path: c.path,
        ...(c.domain === undefined ? {} : { domain: c.domain }),
        maxAge: 0,
        expires: new Date(0),
      }),
    );
    out.noStore = true;
    if (this.options.clearSiteData) out.clearSiteData = this.options.clearSiteData;
  }

  /** An invalid or unknown session cookie: one more guess from this address (SM-42). */
  #countGuess(client: ClientInfo): void {
    if (this.#guesses && client.ip && this.#guesses.record(client.ip)) {
      this.#emit('suspicious', undefined, client, 'invalid-session-cookies');
    }
  }

  async #destroyQuietly(key: string): Promise<void> {
    try {
      await this.store.destroy(key);
    } catch (err) {
      // The record is dead by its metadata whatever happens here; the store's TTL/GC will reap it.
      this.#warn(`could not delete an expired session: ${(err as Error).message}`);
    }
  }

  #emit(
    type: AuditEventType,
    session: Session<D> | Session | undefined,
    client: ClientInfo,
    reason?: string,
    key?: string,
    userId?: string,
  ): void {
    const sink = this.#audit;
    if (!sink) return;
    const sessionKey = key ?? session?.id;
    const event: AuditEvent = { type, time: new Date(this.options.now()).toISOString() };
    if (sessionKey) event.sid = auditTag(sessionKey);
    const uid = userId ?? session?.userId;
    if (uid !== undefined) event.userId = uid;
    if (client.ip) event.ip = client.ip;
    if (client.userAgent) event.userAgent = client.userAgent;
    if (reason) event.reason = reason;
    try {
      sink(event);
    } catch (err) {
      this.#warn(`audit sink threw: ${(err as Error).message}`);
    }
  }
}
