import { newToken, storageKey } from '../crypto/ids.js';
import { sessionLimitReached, storeUnavailable } from '../errors.js';
import type { ResolvedOptions } from '../options.js';
import { bindingMeta } from '../policy/binding.js';
import { renewalDue, rotatedMeta } from '../policy/renewal.js';
import type { SessionLimiter } from '../policy/session-limit.js';
import { remainingTtl, shouldTouch, storeTtl } from '../policy/timeouts.js';
import type {
  CommitGuard,
  CommitResult,
  SessionDelta,
  SessionMeta,
  SessionStore,
  StoredSession,
} from '../stores/store.js';
import type { AuditEmitter } from './audit-emitter.js';
import { type CookieCodec, rememberedMaxAge } from './cookie-codec.js';
import type { RecordCodec } from './record-codec.js';
import type { SessionState } from './state.js';

/** What an integration must do to the response after a commit. */
export interface CommitOutcome {
  /** `Set-Cookie` header values to append. */
  setCookie: string[];
  /** The response carries or depends on session state: send `Cache-Control: no-store`. */
  noStore: boolean;
  /** Send `Clear-Site-Data` with this value (logout). */
  clearSiteData?: string;
  /**
   * The session ended while this request ran (logout or revocation elsewhere, or an ID change
   * by a concurrent request won): its writes were dropped and its cookie is cleared.
   */
  gone: boolean;
}

/** What the commit path needs from its manager. */
export interface CommitDeps {
  options: ResolvedOptions;
  store: SessionStore;
  codec: RecordCodec;
  cookies: CookieCodec;
  events: AuditEmitter;
  limiter: SessionLimiter | undefined;
  /** Throws TOO_MANY_SESSIONS when the client is over `sessionCreationLimit`. */
  admitCreation(s: SessionState): void;
  /** The manager's one destroy path; `quiet` turns a failure into a warning. */
  end(sid: string, options: { quiet?: boolean }): Promise<void>;
  warnOnce(message: string): void;
}

/** What the request told the manager about its transport. */
export interface CommitRequest {
  secure: boolean;
}

/**
 * The commit half of the manager: what a request changed becomes one store call. A new session
 * is one `create`; a stored one is one `commit` (an ID change, a change set) or a `touch`. Every
 * write to a stored record carries a guard, so a request whose session ended or whose ID was
 * changed by another request meanwhile fails closed: nothing written, cookie cleared.
 */
export class Committer {
  readonly #deps: CommitDeps;

  constructor(deps: CommitDeps) {
    this.#deps = deps;
  }

  /** A session with no record yet: one `create` if it was written, nothing otherwise. */
  async commitNew(s: SessionState, req: CommitRequest, out: CommitOutcome): Promise<CommitOutcome> {
    const o = this.#deps.options;
    const insecure = o.cookie.secure && !req.secure;
    if (s.changes.size === 0 && Object.keys(s.meta).length === 0)
      return this.#nothingStored(s, out, insecure);
    if (insecure) {
      this.#warnInsecure();
      return out;
    }
    this.#deps.admitCreation(s);
    const now = o.now();
    for (let attempt = 0; attempt < 3; attempt++) {
      const sid = attempt === 0 ? s.id() : newToken();
      const token = attempt === 0 && s.token ? s.token : newToken();
      if (await this.#create(s, out, sid, token, now)) return out;
    }
    // 256-bit collisions do not happen; three refusals mean the store is misbehaving.
    throw storeUnavailable('create', new Error('store refused three fresh keys'));
  }

  /** A session not stored and not written: only the cookies a visitor's form or logout needs. */
  #nothingStored(s: SessionState, out: CommitOutcome, insecure: boolean): CommitOutcome {
    if (s.clearCookie) this.clear(out, true);
    if (s.preUsed) out.noStore = true;
    // A visitor was shown a form: its CSRF token lives in a pre-session cookie, not the store.
    if (s.issuePre === null && s.hadPre && s.pre === null) {
      out.setCookie.push(this.#deps.cookies.clearPre()); // rotated by regenerateId()
    } else if (s.issuePre !== null && !insecure) {
      out.setCookie.push(this.#deps.cookies.issuePre(s.issuePre));
      out.noStore = true;
    } else if (s.issuePre !== null) this.#warnInsecure();
    return out;
  }

  /** One `create` of the new record under `sid`; false if the store already holds that key. */
  async #create(
    s: SessionState,
    out: CommitOutcome,
    sid: string,
    token: string,
    now: number,
  ): Promise<boolean> {
    const o = this.#deps.options;
    const meta: SessionMeta = {
      createdAt: now,
      deadline: now + o.absoluteTimeout,
      ...bindingMeta(o.binding, s.client),
      ...s.meta,
      lastSeenAt: now,
      h: storageKey(token),
      idAt: now,
    };
    this.#seal(sid, meta);
    const values: Record<string, string> = {};
    for (const [f, json] of s.changes)
      if (json !== undefined) values[f] = this.#deps.codec.encode(sid, f, json);
    const record: StoredSession = { meta, values };
    let created: boolean;
    try {
      created = await this.#deps.store.create(sid, record, storeTtl(o, meta, now));
    } catch (err) {
      throw storeUnavailable('create', err);
    }
    if (!created) return false;
    s.sid = sid;
    s.token = token;
    if (meta.userId !== undefined) await this.#afterLogin(sid, meta.userId);
    this.#deps.events.emit({ type: 'session_created', sid, userId: meta.userId, client: s.client });
    s.committed(record, meta.h!);
    out.setCookie.push(this.#deps.cookies.issue(sid, token, meta.deadline, now, rememberedMaxAge(meta, now)));
    this.#settlePre(s, out, s.pre === null);
    out.noStore = true;
    return true;
  }

  /** A stored session: an ID change, a change set, a throttled touch, or nothing. */
  commitExisting(s: SessionState, out: CommitOutcome): CommitOutcome | Promise<CommitOutcome> {
    const o = this.#deps.options;
    const now = o.now();
    const sid = s.sid!;
    const loaded = s.record!;
    const meta: SessionMeta = { ...loaded.meta, ...s.meta, lastSeenAt: now };
    out.noStore = true;
    // The session died while this request ran (a slow handler crossed the deadline).
    if (remainingTtl(o, meta, now) <= 0) {
      return this.#deps.end(sid, { quiet: true }).then(() => this.#failClosed(s, out));
    }
    const renewal = o.renewal;
    if (s.rotation === null && renewal && s.token !== null && renewalDue(renewal, loaded.meta, now)) {
      return this.#renew(s, out, now, meta, renewal.grace);
    }
    if (s.rotation !== null) return this.#changeIdOrFail(s, out, now);
    // The common read: nothing changed, no touch due, no cookie to re-send: no store call.
    if (s.changes.size === 0 && !s.reissueCookie && !shouldTouch(o, loaded.meta, now)) return out;
    return this.#commitChanges(s, out, now, meta);
  }

  /** Scheduled renewal (SM-24): the guarded ID change with a grace window; a loser commits as usual. */
  async #renew(s: SessionState, out: CommitOutcome, now: number, meta: SessionMeta, grace: number) {
    const result = await this.#changeId(s, out, now, newToken(), grace);
    if (result !== 'conflict') return out;
    return this.#commitChanges(s, out, now, meta);
  }

  /** regenerateId / login / reauthenticate: the guarded ID change; losing it fails closed. */
  async #changeIdOrFail(s: SessionState, out: CommitOutcome, now: number): Promise<CommitOutcome> {
    const result = await this.#changeId(s, out, now, s.token ?? newToken(), 0);
    if (result === 'conflict') {
      const reason = 'lost an ID change race';
      this.#deps.events.emit({ type: 'session_unknown_id', sid: s.sid, client: s.client, reason });
      return this.#failClosed(s, out);
    }
    return out;
  }

  /**
   * The ID change: one commit that swaps the handle only if it is still the one this request
   * loaded. 'gone' (destroyed meanwhile) fails closed here; 'conflict' is left to the caller.
   */
  async #changeId(
    s: SessionState,
    out: CommitOutcome,
    now: number,
    token: string,
    grace: number,
  ): Promise<CommitResult> {
    const o = this.#deps.options;
    const sid = s.sid!;
    const loaded = s.record!;
    const login = s.rotation?.kind === 'login';
    const patch: Partial<SessionMeta> = {
      ...(login ? bindingMeta(o.binding, s.client) : {}),
      ...s.meta,
      lastSeenAt: now,
      ...rotatedMeta(storageKey(token), s.handle, now, grace),
    };
    const meta: SessionMeta = { ...loaded.meta, ...patch };
    for (const [k, v] of Object.entries(patch))
      if (v === undefined) delete (meta as unknown as Record<string, unknown>)[k];
    const mac = this.#seal(sid, meta);
    if (mac !== undefined) patch.mac = mac;
    const delta: SessionDelta = { ...this.#delta(sid, s), meta: patch };
    if (s.rotation?.retain) delta.retain = s.rotation.retain;
    const result = await this.#write(sid, delta, storeTtl(o, meta, now), { handle: s.handle ?? '' });
    if (result === 'gone') {
      this.#failClosed(s, out);
      return result;
    }
    if (result === 'conflict') return result;
    if (login && meta.userId !== undefined) await this.#afterLogin(sid, meta.userId);
    this.#settlePre(s, out, true);
    s.token = token;
    s.committed({ meta, values: this.#valuesAfter(s, delta) }, meta.h!);
    if (grace > 0)
      this.#deps.events.emit({
        type: 'session_renewed',
        sid,
        userId: meta.userId,
        client: s.client,
        reason: 'interval',
      });
    out.setCookie.push(this.#deps.cookies.issue(sid, token, meta.deadline, now, rememberedMaxAge(meta, now)));
    return result;
  }

  /** A change set (or a touch) under the loaded handle, guarded by the user it was loaded as. */
  async #commitChanges(
    s: SessionState,
    out: CommitOutcome,
    now: number,
    meta: SessionMeta,
  ): Promise<CommitOutcome> {
    const o = this.#deps.options;
    const sid = s.sid!;
    const loaded = s.record!;
    const ttl = storeTtl(o, meta, now);
    const hasChanges = s.changes.size > 0;
    // Re-sending the cookie is right only while this request's handle is still the current one.
    let sendCookie = s.token !== null && (s.reissueCookie || (hasChanges && o.cookie.maxAge !== undefined));
    const userId = loaded.meta.userId ?? null;
    const guard: CommitGuard = { userId };
    const { set, unset } = this.#delta(sid, s);
    const delta: SessionDelta = { set, unset, meta: { lastSeenAt: now } };
    let result: CommitResult | 'skipped' = 'skipped';
    if (hasChanges) {
      result = await this.#write(sid, delta, ttl, sendCookie ? { userId, handle: s.handle ?? '' } : guard);
      if (result === 'conflict' && sendCookie) {
        sendCookie = false;
        result = await this.#write(sid, delta, ttl, guard);
      }
    } else if (shouldTouch(o, loaded.meta, now)) {
      try {
        result = this.#deps.store.touch
          ? await this.#deps.store.touch(sid, { lastSeenAt: now }, ttl)
          : await this.#deps.store.commit(sid, { set: {}, unset: [], meta: { lastSeenAt: now } }, ttl);
      } catch (err) {
        throw storeUnavailable('touch', err);
      }
    }
    if (result === 'gone' || result === 'conflict') return this.#failClosed(s, out);
    if (result === 'ok') s.committed({ meta, values: this.#valuesAfter(s, delta) }, s.handle);
    if (sendCookie)
      out.setCookie.push(
        this.#deps.cookies.issue(sid, s.token!, meta.deadline, now, rememberedMaxAge(meta, now)),
      );
    return out;
  }

  async #write(sid: string, delta: SessionDelta, ttl: number, guard: CommitGuard): Promise<CommitResult> {
    try {
      return await this.#deps.store.commit(sid, delta, ttl, guard);
    } catch (err) {
      throw storeUnavailable('commit', err);
    }
  }

  /** After a login committed: the session limit (SM-38). A refused login ends the session. */
  async #afterLogin(sid: string, userId: string): Promise<void> {
    const limiter = this.#deps.limiter;
    if (!limiter) return;
    let refused: boolean;
    try {
      refused = await limiter.enforce(sid, userId);
    } catch (err) {
      await this.#deps.end(sid, { quiet: true });
      throw err;
    }
    if (refused) {
      await this.#deps.end(sid, { quiet: true });
      throw sessionLimitReached((this.#deps.options.maxSessionsPerUser as { limit: number }).limit);
    }
  }

  /** This request lost its session: nothing of it is written, and the cookie is cleared. */
  #failClosed(s: SessionState, out: CommitOutcome): CommitOutcome {
    s.lost();
    out.gone = true;
    this.clear(out, false);
    return out;
  }

  /** This request's changes as a store delta, encoded for record `sid`. */
  #delta(sid: string, s: SessionState): { set: Record<string, string>; unset: string[] } {
    const set: Record<string, string> = {};
    const unset: string[] = [];
    for (const [f, v] of s.changes) {
      if (v === undefined) unset.push(f);
      else set[f] = this.#deps.codec.encode(sid, f, v);
    }
    return { set, unset };
  }

  /** What this request knows of the values after its commit (others may have written more). */
  #valuesAfter(s: SessionState, delta: SessionDelta): Record<string, string> {
    // Fields always carry a prefix (v:, b:, s:), so plain objects cannot meet `__proto__`.
    const values: Record<string, string> = {};
    const keep = delta.retain ? new Set(delta.retain) : null;
    const before = s.record!.values;
    for (const f of Object.keys(before)) if (!keep || keep.has(f)) values[f] = before[f]!;
    for (const f of delta.unset) delete values[f];
    for (const f of Object.keys(delta.set)) values[f] = delta.set[f]!;
    return values;
  }

  #seal(sid: string, meta: SessionMeta): string | undefined {
    const mac = this.#deps.codec.sealMeta(sid, meta);
    if (mac !== undefined) meta.mac = mac;
    return mac;
  }

  #warnInsecure(): void {
    this.#deps.warnOnce(
      "a session was written on a plain-HTTP request while cookie.secure is on, so no cookie can be sent; serve over HTTPS, set trustProxy behind a TLS proxy, or use cookie.secure: 'auto' for local development on http://localhost.",
    );
  }

  /**
   * The pre-session cookie after a commit that stored the session: set if this request drew it
   * (a form shown in the same response still needs it), expired after an ID change (login,
   * regenerateId: the CSRF token rotates with the ID).
   */
  #settlePre(s: SessionState, out: CommitOutcome, rotated: boolean): void {
    if (rotated && s.hadPre && s.issuePre === null) {
      out.setCookie.push(this.#deps.cookies.clearPre());
      s.hadPre = false;
    } else if (s.issuePre !== null) {
      out.setCookie.push(this.#deps.cookies.issuePre(s.issuePre));
    }
    s.issuePre = null;
  }

  /** Expires the cookie; on logout also `Clear-Site-Data`. */
  clear(out: CommitOutcome, logout: boolean): void {
    out.setCookie.push(this.#deps.cookies.clear());
    out.noStore = true;
    const value = this.#deps.options.clearSiteData;
    if (logout && value) out.clearSiteData = value;
  }
}
