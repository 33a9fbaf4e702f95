import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseCookies, serialize as serializeCookie } from 'cookie';
import { auditTag, isWellFormedToken, newToken, storageKey } from './crypto/ids.js';
import { KeyRing } from './crypto/keyring.js';
import { SessionError, sessionLimitReached, storeUnavailable } from './errors.js';
import { type AuditEvent, type AuditEventType, type ClientInfo, cleanHeaderValue } from './features/audit.js';
import { GuessDetector } from './features/throttle.js';
import { type ResolvedOptions, resolveOptions, type SessionManagerOptions } from './options.js';
import { bindingMeta, bindingMismatch } from './policy/binding.js';
import {
  isRenewedAway,
  type Renewal,
  renewalClaim,
  renewalClaimKey,
  renewalDue,
  renewedAwayDelta,
  withinGrace,
} from './policy/renewal.js';
import { sessionLimitVerdict } from './policy/session-limit.js';
import { expiryReason, remainingTtl, shouldTouch, storeTtl } from './policy/timeouts.js';
import { type PendingWrite, Session, type SessionDriver } from './session.js';
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
const VERIFIED_COOKIE_CACHE = 10_000;

/** A cookie value that passed the MAC and shape checks. */
interface VerifiedCookie {
  token: string;
  /** Index of the secret that verified it; 0 is the newest. */
  keyIndex: number;
  key: string;
}

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
  readonly #verifiedCookies = new Map<string, VerifiedCookie>();

  constructor(options: SessionManagerOptions) {
    this.options = resolveOptions(options);
    this.#keys = new KeyRing(this.options.secrets);
    this.store = options.store ?? new FileStore({ dir: join(tmpdir(), 'sessionflow') });
    this.#audit = options.audit;
    this.#warn = options.warn ?? ((m) => console.warn(`[sessionflow] ${m}`));
    const guessing = this.options.guessDetection;
    this.#guesses = guessing ? new GuessDetector(guessing, this.options.now) : undefined;
    const storeName = this.store.constructor.name;
    if (this.options.maxSessionsPerUser && !this.#listsByUser()) {
      throw new SessionError(
        'INVALID_OPTION',
        `maxSessionsPerUser needs a store that lists sessions by user (capabilities.listByUser), and ${storeName} cannot: use the memory, file, Redis or SQL store, or remove maxSessionsPerUser.`,
      );
    }
    if (this.options.renewal && this.options.renewal.onReuse === 'revoke-user' && !this.#listsByUser()) {
      this.#warn(
        `renewal.onReuse 'revoke-user' needs a store that lists sessions by user, and ${storeName} cannot: a renewed-away ID used after its grace window will only be logged.`,
      );
    }
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
          await this.#destroyFollowing(key);
        } catch (err) {
          throw storeUnavailable('destroy', err);
        }
      },
      admitLogin: (session, userId, current) => this.#admitLogin(session, userId, current),
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
    const verified = this.#verify(raw);
    if (!verified) {
      this.#emit('session_invalid_cookie', undefined, client);
      this.#countGuess(client);
      return this.#fresh(client, true);
    }
    const key = verified.key;
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
    // A renewed-away ID stands for its successor during the grace window: the request is served
    // from the successor, without a token (the renewing response carried the new cookie).
    let live: { key: string; token: string | null; record: StoredSession } = {
      key,
      token: verified.token,
      record,
    };
    if (isRenewedAway(record.meta)) {
      const successor = await this.#successorOf(key, record.meta, client);
      if (!('record' in successor)) return this.#fresh(client, true, successor.ended);
      live = { ...successor, token: null };
    }
    const meta = live.record.meta;
    const reason = expiryReason(o, meta, o.now());
    if (reason) {
      await this.#destroyQuietly(live.key);
      this.#emit('session_expired', undefined, client, reason, live.key, meta.userId);
      return this.#fresh(client, true, reason);
    }
    const mismatch = bindingMismatch(o.binding, meta, client);
    if (mismatch) {
      this.#emit('session_binding_mismatch', undefined, client, mismatch, live.key, meta.userId);
      if (o.binding.action === 'destroy') {
        await this.#destroyQuietly(live.key);
        return this.#fresh(client, true, `binding:${mismatch}`);
      }
    }
    return new Session<D>(this.#driver, {
      token: live.token,
      key: live.key,
      record: live.record,
      client,
      reissueCookie: live.token !== null && verified.keyIndex > 0,
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
          // login() on a session that had no record yet: the limit applies here too.
          if (p.meta.userId !== undefined) {
            try {
              await this.#enforceLimit(session, key, meta, undefined);
            } catch (err) {
              await this.#discard(key);
              throw err;
            }
          }
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

    if (p.regenerateFrom) {
      const move = { from: p.regenerateFrom.key, deleteOld: p.regenerateFrom.deleteOld, token: p.token! };
      return (await this.#regenerate(session, p, out, now, { ...move, base: p.record })) ?? out;
    }

    const key = p.key!;
    const meta: SessionMeta = { ...p.record.meta, ...p.meta, lastSeenAt: now };
    out.noStore = true;
    // The session died while this request ran (a slow handler crossed the deadline).
    if (remainingTtl(o, meta, now) <= 0) {
      await this.#destroyQuietly(key);
      out.gone = true;
      this.#clear(out);
      return out;
    }
    if (o.renewal && renewalDue(o.renewal, p.record.meta, now)) {
      const renewed = await this.#renew(session, p, p.record, out, now);
      if (renewed) return renewed;
    }
    const ttl = storeTtl(o, meta, now);
    let result: 'ok' | 'gone';
    let written = true;
    try {
      if (hasChanges) {
        const { set, unset } = this.#delta(key, p);
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
    // A session served through a renewed-away ID has no token to send: the renewal's cookie stands.
    if (p.token !== null && (p.reissueCookie || (written && o.cookie.maxAge !== undefined))) {
      out.setCookie.push(this.#cookie(p.token, written ? meta : p.record.meta, now));
    }
    return out;
  }

  // ---- administration ----------------------------------------------------------------------

  /**
   * Destroys one session by its storage key (`session.id`), e.g. from a "my devices" page. With
   * renewal on, a key that was renewed away takes the session it was renewed into with it.
   */
  async revoke(key: string): Promise<void> {
    await this.#revoke(key);
  }

  /** The live sessions of a user. Needs a store with `capabilities.listByUser`. */
  async sessionsOf(userId: string | number): Promise<SessionSummary[]> {
    return this.#liveSessionsOf(String(userId));
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
    // Checked like listByUser: a store says by its capability flag whether gc() does anything.
    if (!this.store.capabilities.gc || !this.store.gc) return 0;
    return this.store.gc(this.options.now());
  }

  /** Releases the store's resources (timers, handles). */
  async close(): Promise<void> {
    await this.store.close?.();
  }

  // ---- internals ---------------------------------------------------------------------------

  /**
   * Writes the session under a new ID: the one path for regenerateId(), login() and scheduled
   * renewal. Checks that the old record still exists, creates the new one, then retires the old
   * one: deleted, or, for a renewal, turned into a pointer to the new one (SM-24). Returns null
   * when a renewal lost the election to a concurrent request's renewal of the same ID.
   */
  async #regenerate(
    session: Session<D>,
    p: PendingWrite,
    out: CommitOutcome,
    now: number,
    move: { from: string; deleteOld: boolean; token: string; base: StoredSession; renewal?: Renewal },
  ): Promise<CommitOutcome | null> {
    const o = this.options;
    const key = storageKey(move.token);
    // login() ran in this request: a new identity, not one carried over from the old session.
    const loggedIn = p.meta.userId !== undefined;
    const meta: SessionMeta = {
      ...move.base.meta,
      // Login binds the session to the client that logged in, even a session created before
      // binding was turned on.
      ...(loggedIn ? bindingMeta(o.binding, session.client) : {}),
      ...p.meta,
      lastSeenAt: now,
      idAt: now,
    };
    const record: StoredSession = { meta, values: this.#valuesFor(move.from, move.base, p, key) };
    let created = false;
    let claim: string | undefined;
    try {
      // The new record carries the old one's data and identity forward, which is valid only
      // while the old one exists: a logout or revocation that landed while this request ran
      // must win (SM-35), even over a reauthentication. A login does not depend on the old
      // session, so a double-submitted login form still signs the user in. A renewal has just
      // read the old record itself.
      if (!loggedIn && !move.renewal) {
        const oldTtl = storeTtl(o, { ...move.base.meta, lastSeenAt: now }, now);
        if ((await this.store.touch(move.from, { lastSeenAt: now }, oldTtl)) === 'gone') {
          out.gone = true;
          return out;
        }
      }
      if (!(await this.store.create(key, record, storeTtl(o, meta, now)))) {
        throw new Error('regenerated key already exists');
      }
      created = true;
      if (move.renewal) {
        const grace = move.renewal.grace;
        const claimKey = renewalClaimKey(move.from);
        if (!(await this.store.create(claimKey, renewalClaim(key, now, grace), grace))) {
          await this.store.destroy(key);
          return null;
        }
        claim = claimKey;
      }
      if (loggedIn) await this.#enforceLimit(session, key, meta, move.from);
      if (move.renewal) {
        const retire = renewedAwayDelta(key, now, Object.keys(move.base.values));
        const stubTtl = move.renewal.grace + o.expiredRetention;
        if ((await this.store.commit(move.from, retire, stubTtl)) === 'gone') {
          // Destroyed between our read and now (logout, revoke): the successor must not outlive it.
          await this.store.destroy(key);
          out.gone = true;
          return out;
        }
      } else if (move.deleteOld) {
        await this.#destroyFollowing(move.from);
      }
    } catch (err) {
      // Nothing half-done may stay behind: an orphan successor, or a claim that would send the
      // next requests on this ID to a record nobody holds the cookie of.
      if (created) await this.#discard(key);
      if (claim !== undefined) await this.#discard(claim);
      throw storeUnavailable('regenerate', err);
    }
    if (move.renewal) session.assignToken(move.token);
    session.committed(record);
    if (move.renewal) this.#emit('session_renewed', session, session.client, 'interval');
    out.setCookie.push(this.#cookie(move.token, meta, now));
    out.noStore = true;
    return out;
  }

  /**
   * Scheduled renewal (SM-24), through the regenerate path, from a fresh read of the record so
   * that writes other requests made since this one loaded are carried over. Returns null when
   * another request's renewal cannot be followed: the caller then commits under the old ID.
   */
  async #renew(
    session: Session<D>,
    p: PendingWrite,
    loaded: StoredSession,
    out: CommitOutcome,
    now: number,
  ): Promise<CommitOutcome | null> {
    const renewal = this.options.renewal as Renewal;
    const from = p.key!;
    let current: StoredSession | null;
    try {
      current = await this.store.load(from);
    } catch (err) {
      throw storeUnavailable('renew', err);
    }
    if (current === null) {
      // Destroyed while this request ran: stay dead (SM-35).
      out.gone = true;
      return out;
    }
    if (isRenewedAway(current.meta)) return this.#forward(session, p, loaded, out, now, current.meta);
    const move = { from, deleteOld: false, token: newToken(), base: current, renewal };
    const renewed = await this.#regenerate(session, p, out, now, move);
    if (renewed) return renewed;
    let claim: StoredSession | null;
    try {
      claim = await this.store.load(renewalClaimKey(from));
    } catch (err) {
      throw storeUnavailable('renew', err);
    }
    return claim && isRenewedAway(claim.meta)
      ? this.#forward(session, p, loaded, out, now, claim.meta)
      : null;
  }

  /**
   * Lands the writes of a request still on a renewed-away ID on its successor, within the grace
   * window. After it the old ID is dead, and the writes are dropped as for a destroyed session.
   */
  async #forward(
    session: Session<D>,
    p: PendingWrite,
    loaded: StoredSession,
    out: CommitOutcome,
    now: number,
    pointer: SessionMeta & { renewedAt: number },
  ): Promise<CommitOutcome> {
    const o = this.options;
    const to = pointer.successor;
    if (!o.renewal || to === undefined || !withinGrace(o.renewal.grace, pointer, now)) {
      out.gone = true;
      return out;
    }
    // Nothing to land: the renewal has just refreshed the successor's idle timer.
    if (p.changes.size === 0) return out;
    const { set, unset } = this.#delta(to, p);
    const meta: SessionMeta = { ...loaded.meta, lastSeenAt: now };
    let result: 'ok' | 'gone';
    try {
      result = await this.store.commit(to, { set, unset, meta: { lastSeenAt: now } }, storeTtl(o, meta, now));
    } catch (err) {
      throw storeUnavailable('commit', err);
    }
    if (result === 'gone') {
      out.gone = true;
      return out;
    }
    const values = this.#valuesFor(p.key!, loaded, p, to);
    session.redirect(to);
    session.committed({ meta, values });
    return out;
  }

  /**
   * Resolves an ID that was renewed away (SM-24): within the grace window it stands for its
   * successor; after it the ID is dead, its use is reported, and with `onReuse: 'revoke-user'`
   * every session of its user is revoked (one of the two holders of the ID is not the user).
   */
  async #successorOf(
    key: string,
    meta: SessionMeta & { renewedAt: number },
    client: ClientInfo,
  ): Promise<{ key: string; record: StoredSession } | { ended?: string }> {
    const o = this.options;
    if (o.renewal && meta.successor !== undefined && withinGrace(o.renewal.grace, meta, o.now())) {
      let record: StoredSession | null;
      try {
        record = await this.store.load(meta.successor);
      } catch (err) {
        throw storeUnavailable('load', err);
      }
      // One hop only: grace < interval, so a successor is never renewed again within the grace.
      if (record && !isRenewedAway(record.meta)) return { key: meta.successor, record };
      return {};
    }
    this.#emit('session_use_after_expire', undefined, client, 'renewed', key, meta.userId);
    if (
      o.renewal &&
      o.renewal.onReuse === 'revoke-user' &&
      meta.userId !== undefined &&
      this.#listsByUser()
    ) {
      await this.revokeAll(meta.userId);
    }
    return { ended: 'renewed' };
  }

  /**
   * Deletes a session record. With renewal on, also what its ID was renewed into: read from the
   * record if it is already a pointer, else from the renewal claim, which a renewer creates before
   * it retires the old record, so a logout racing a renewal leaves nothing alive (SM-35).
   */
  async #destroyFollowing(key: string): Promise<void> {
    if (!this.options.renewal) {
      await this.store.destroy(key);
      return;
    }
    let next: string | undefined = key;
    // A chain longer than a few hops would need renewals within one grace window: not possible.
    for (let hop = 0; next !== undefined && hop < 4; hop++) {
      const current: string = next;
      const pointer = await this.store.load(current);
      await this.store.destroy(current);
      next =
        pointer && isRenewedAway(pointer.meta)
          ? pointer.meta.successor
          : (await this.store.load(renewalClaimKey(current)))?.meta.successor;
    }
  }

  /** This request's changes as a store delta, encoded for `key`. */
  #delta(key: string, p: PendingWrite): { set: Record<string, string>; unset: string[] } {
    const set: Record<string, string> = {};
    const unset: string[] = [];
    for (const [f, v] of p.changes) {
      if (v === undefined) unset.push(f);
      else set[f] = this.#driver.encode(key, f, v);
    }
    return { set, unset };
  }

  /** The session's values after this request's changes: `base` decoded as stored under `from`, encoded for `to`. */
  #valuesFor(from: string, base: StoredSession, p: PendingWrite, to: string): Record<string, string> {
    const json = new Map<string, string>();
    for (const [f, v] of Object.entries(base.values)) {
      const decoded = this.#driver.decode(from, f, v);
      if (decoded !== null) json.set(f, decoded);
    }
    for (const [f, v] of p.changes) {
      if (v === undefined) json.delete(f);
      else json.set(f, v);
    }
    const values: Record<string, string> = {};
    for (const [f, v] of json) values[f] = this.#driver.encode(to, f, v);
    return values;
  }

  /**
   * SM-38, at the commit of a login that created `key`: evicts the user's oldest other sessions
   * over the limit, or throws SESSION_LIMIT ('refuse'; the caller deletes the new record).
   * `replaced` is the pre-login record, about to be deleted, so it does not count.
   */
  async #enforceLimit(
    session: Session<D>,
    key: string,
    meta: SessionMeta,
    replaced: string | undefined,
  ): Promise<void> {
    const limit = this.options.maxSessionsPerUser;
    const userId = meta.userId;
    if (!limit || userId === undefined) return;
    let others: SessionSummary[];
    try {
      others = (await this.#liveSessionsOf(userId)).filter((s) => s.key !== key && s.key !== replaced);
    } catch (err) {
      // Refusing fails closed; evicting is housekeeping that must not cost the user the login.
      if (limit.onExceed === 'refuse') throw err;
      this.#warn(`could not enforce maxSessionsPerUser: ${(err as Error).message}`);
      return;
    }
    const verdict = sessionLimitVerdict(limit, others);
    if (verdict.refuse) throw this.#refuseLogin(session.client, userId, limit.limit, replaced);
    if (verdict.evict.length === 0) return;
    const reason = `evict-oldest: ${verdict.evict.length} over the limit of ${limit.limit}`;
    this.#emit('excess_sessions_exceeded', session, session.client, reason, key, userId);
    for (const s of verdict.evict) {
      try {
        await this.#revoke(s.key, 'session-limit', userId);
      } catch (err) {
        this.#warn(`could not evict a session over maxSessionsPerUser: ${(err as Error).message}`);
      }
    }
  }

  /** SM-38 before a login with 'refuse': the app gets SESSION_LIMIT from `session.login()` itself. */
  async #admitLogin(session: Session, userId: string, current: string | null): Promise<void> {
    const limit = this.options.maxSessionsPerUser;
    if (limit === false || limit.onExceed !== 'refuse') return;
    const others = (await this.#liveSessionsOf(userId)).filter((s) => s.key !== current);
    if (sessionLimitVerdict(limit, others).refuse) {
      throw this.#refuseLogin(session.client, userId, limit.limit, current ?? undefined);
    }
  }

  #refuseLogin(client: ClientInfo, userId: string, limit: number, key: string | undefined): SessionError {
    this.#emit('excess_sessions_exceeded', undefined, client, `refused: limit of ${limit}`, key, userId);
    return sessionLimitReached(limit);
  }

  async #revoke(key: string, reason?: string, userId?: string): Promise<void> {
    try {
      await this.#destroyFollowing(key);
    } catch (err) {
      throw storeUnavailable('revoke', err);
    }
    this.#emit('session_revoked', undefined, {}, reason, key, userId);
  }

  /** The user's sessions, without renewed-away records (pointers until they expire, not sessions). */
  async #liveSessionsOf(userId: string): Promise<SessionSummary[]> {
    const store = this.store;
    if (!store.capabilities.listByUser || !store.sessionsOf) {
      throw new SessionError(
        'NOT_SUPPORTED',
        `${store.constructor.name} cannot list sessions by user; use a store with capabilities.listByUser (Redis, SQL, file, memory).`,
      );
    }
    let list: SessionSummary[];
    try {
      list = await store.sessionsOf(userId);
    } catch (err) {
      throw storeUnavailable('sessionsOf', err);
    }
    return list.filter((s) => !isRenewedAway(s.meta));
  }

  #listsByUser(): boolean {
    return this.store.capabilities.listByUser && typeof this.store.sessionsOf === 'function';
  }

  /** Best-effort removal of a record this request created and then gave up on. */
  async #discard(key: string): Promise<void> {
    try {
      await this.store.destroy(key);
    } catch (err) {
      // Without its cookie ever sent, the record is unreachable; its TTL reaps it.
      this.#warn(`could not remove an abandoned session record: ${(err as Error).message}`);
    }
  }

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

  /**
   * Checks a cookie value's MAC and shape, and derives its storage key. A session's cookie comes
   * back on every request, so verified values are remembered (bounded, oldest out): a repeat
   * costs a map lookup instead of an HMAC and a hash. Only values that passed the check enter.
   */
  #verify(raw: string): VerifiedCookie | null {
    const cached = this.#verifiedCookies.get(raw);
    if (cached) return cached;
    if (raw.length > MAX_COOKIE_VALUE) return null;
    const verified = this.#keys.verify(this.options.cookie.name, raw);
    if (!verified || !isWellFormedToken(verified.value)) return null;
    const entry: VerifiedCookie = {
      token: verified.value,
      keyIndex: verified.keyIndex,
      key: storageKey(verified.value),
    };
    if (this.#verifiedCookies.size >= VERIFIED_COOKIE_CACHE) {
      this.#verifiedCookies.delete(this.#verifiedCookies.keys().next().value as string);
    }
    this.#verifiedCookies.set(raw, entry);
    return entry;
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
