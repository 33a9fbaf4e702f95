import type { BagHost } from '../bag.js';
import { newToken } from '../crypto/ids.js';
import { SessionError } from '../errors.js';
import type { AuditEventType, ClientInfo } from '../features/audit.js';
import type { ResolvedOptions } from '../options.js';
import { renewalDue } from '../policy/renewal.js';
import { shouldTouch } from '../policy/timeouts.js';
import { toJson } from '../serialize.js';
import type { SessionMeta, StoredSession } from '../stores/store.js';

/** What a session's state needs from its manager; the only way a session reaches I/O. */
export interface SessionDriver {
  readonly options: ResolvedOptions;
  /** Encodes (and with encryption on, seals) one value of record `sid`. */
  encode(sid: string, field: string, json: string): string;
  /** Bytes `json` will take in the store once encoded (sealed, with encryption on). */
  encodedSize(json: string): number;
  /** Decodes one stored value; null if it cannot be opened (tampered, foreign record). */
  decode(sid: string, field: string, stored: string): string | null;
  /** Deletes the record now (destroy, logout). */
  destroy(sid: string): Promise<void>;
  /** Throws SESSION_LIMIT before a login that `maxSessionsPerUser: 'refuse'` would turn down. */
  admitLogin(state: SessionState, userId: string): Promise<void>;
  audit(type: AuditEventType, state: SessionState, reason?: string): void;
  /** Reports a likely programming error once (e.g. a login() that was not awaited). */
  warn(message: string): void;
  /** The CSRF token of a pre-session nonce (no storage), and its constant-time check. */
  preToken(nonce: string): string;
  /** The `Set-Cookie` header of a pre-session nonce. */
  preCookie(nonce: string): string;
  verifyPreToken(nonce: string, submitted: string): boolean;
}

/** How the session's ID changes at commit: the kind decides the metadata and the guard. */
export interface Rotation {
  kind: 'regenerate' | 'login' | 'reauthenticate';
  /** Login: value fields kept from before (flash, keepOnLogin); every other one is dropped. */
  retain?: string[];
}

export const USER = 'v:';
export const INTERNAL = 's:';
export const FLASH_FIELD = `${INTERNAL}flash`;
export const CSRF_FIELD = `${INTERNAL}csrf`;

/** What the manager hands over at load. */
export interface StateInit {
  /** Record id (storage key), null for a session not stored yet. */
  sid: string | null;
  /** The cookie token; null when the request came in on a previous handle within its grace. */
  token: string | null;
  /** Hash of the token the request came in with: the guard of an ID change. */
  handle: string | null;
  record: StoredSession | null;
  client: ClientInfo;
  reissueCookie: boolean;
  hadCookie: boolean;
  endedReason?: string;
  /** The verified nonce of the request's pre-session cookie, if it carried one. */
  pre?: string | undefined;
}

/**
 * One request's session state and change set. Internal: the public `Session` is a façade over
 * it, so change tracking and the manager's back-channel are out of reach of application code.
 */
export class SessionState implements BagHost {
  readonly driver: SessionDriver;
  readonly client: ClientInfo;
  readonly hadCookie: boolean;
  readonly endedReason: string | undefined;
  sid: string | null;
  token: string | null;
  handle: string | null;
  record: StoredSession | null;
  changes = new Map<string, string | undefined>();
  meta: Partial<SessionMeta> = {};
  rotation: Rotation | null = null;
  reissueCookie: boolean;
  clearCookie = false;
  destroyed = false;
  /** login()/regenerateId()/reauthenticate()/destroy() calls not finished yet. */
  inFlight = 0;
  /** Pre-session nonce: from the request's cookie, or drawn here for a visitor's first form. */
  pre: string | null;
  /** The request carried a pre-session cookie (cleared at login). */
  hadPre: boolean;
  /** A nonce drawn in this request, whose cookie the response must set. */
  issuePre: string | null = null;
  /** The response shows a pre-session CSRF token: it depends on the visitor (no-store). */
  preUsed = false;
  /**
   * Set by integrations that can write response headers synchronously: applies the pre-session
   * Set-Cookie (or null: only no-store) now; false when it cannot (head sent, insecure transport).
   */
  sendNow: ((setCookie: string | null) => boolean) | undefined;
  onFirstChange: (() => void) | undefined;
  /**
   * The response has started: its commit began, or its head went out before the session
   * changed. Set by the integrations; a change from then on cannot be stored and is reported.
   */
  responseStarted = false;
  /**
   * Per-request data of the framework integration that loaded this session (the Express
   * compatibility surface keeps its request and its state here). A field rather than a WeakMap
   * keyed by the session: an entry per request there costs more than the rest of a read.
   */
  integration: object | undefined = undefined;

  constructor(driver: SessionDriver, init: StateInit) {
    this.driver = driver;
    this.sid = init.sid;
    this.token = init.token;
    this.handle = init.handle;
    this.record = init.record;
    this.client = init.client;
    this.reissueCookie = init.reissueCookie;
    this.hadCookie = init.hadCookie;
    this.endedReason = init.endedReason;
    this.pre = init.pre ?? null;
    this.hadPre = init.pre !== undefined;
  }

  // ---- CSRF for visitors without a stored session ------------------------------------------

  /** The request's verified pre-session nonce (set by the manager after load). */
  adoptPre(nonce: string): void {
    this.pre = nonce;
    this.hadPre = true;
  }

  anonymousToken(): string | undefined {
    if (this.record !== null || this.changes.size > 0 || Object.keys(this.meta).length > 0) return undefined;
    if (this.pre === null) {
      this.pre = newToken();
      this.issuePre = this.pre;
    }
    if (!this.preUsed) {
      this.preUsed = true;
      // An integration that can write headers right now (node:http, Express) takes the cookie
      // synchronously: \`res.end(session.csrf.token())\` looks up \`end\` before the token is made,
      // so holding the response from here on would be too late for that very call.
      const sent = this.sendNow?.(this.issuePre === null ? null : this.driver.preCookie(this.issuePre));
      if (sent) this.issuePre = null;
      // Otherwise the response carries the pre-session cookie and depends on the visitor
      // (no-store): integrations hold it from here on.
      else this.changed();
    }
    return this.driver.preToken(this.pre);
  }

  verifyAnonymous(submitted: string): boolean {
    return this.pre !== null && this.driver.verifyPreToken(this.pre, submitted);
  }

  get userId(): string | undefined {
    return 'userId' in this.meta ? this.meta.userId : this.record?.meta.userId;
  }

  get authAt(): number | undefined {
    return 'authAt' in this.meta ? this.meta.authAt : this.record?.meta.authAt;
  }

  /** The end of the session's own cookie lifetime ("remember me"), pending change first. */
  get persistUntil(): number | undefined {
    return 'persistUntil' in this.meta ? this.meta.persistUntil : this.record?.meta.persistUntil;
  }

  // ---- fields (bags, flash and CSRF use these) ------------------------------------------

  getField(field: string): unknown {
    const json = this.#json(field);
    return json === undefined ? undefined : JSON.parse(json);
  }

  setField(field: string, value: unknown): void {
    const json = toJson(value, field.startsWith(USER) ? field.slice(USER.length) : field);
    if (this.#json(field) === json) return;
    // Checked before the write: a refused value must not be committed anyway at the end of the request.
    this.#checkSize(field, json);
    this.changes.set(field, json);
    this.changed();
  }

  hasField(field: string): boolean {
    return this.#json(field) !== undefined;
  }

  removeField(field: string): void {
    const stored = this.record !== null && Object.hasOwn(this.record.values, field);
    if (stored) {
      if (this.changes.get(field) !== undefined || !this.changes.has(field)) {
        this.changes.set(field, undefined);
        this.changed();
      }
    } else {
      this.changes.delete(field);
    }
  }

  fieldsWithPrefix(prefix: string): string[] {
    const out = new Set<string>();
    if (this.record) for (const f of Object.keys(this.record.values)) if (f.startsWith(prefix)) out.add(f);
    for (const [f, v] of this.changes) {
      if (!f.startsWith(prefix)) continue;
      if (v === undefined) out.delete(f);
      else out.add(f);
    }
    return [...out];
  }

  readInternal(name: string): unknown {
    return this.getField(INTERNAL + name);
  }

  writeInternal(name: string, value: unknown): void {
    if (value === undefined) this.removeField(INTERNAL + name);
    else this.setField(INTERNAL + name, value);
  }

  #json(field: string): string | undefined {
    if (this.changes.has(field)) return this.changes.get(field);
    const record = this.record;
    if (record === null || !Object.hasOwn(record.values, field)) return undefined;
    return this.driver.decode(this.sid!, field, record.values[field]!) ?? undefined;
  }

  /**
   * Throws VALUE_TOO_LARGE if setting `field` to `json` would take the stored session over
   * maxSize. Counted as stored (sealed, in bytes) on both sides, so whatever one request was
   * allowed to write never blocks the writes of the next.
   */
  #checkSize(field: string, json: string): void {
    const d = this.driver;
    let total = Buffer.byteLength(field) + d.encodedSize(json);
    if (this.record)
      for (const [f, v] of Object.entries(this.record.values))
        if (f !== field && !this.changes.has(f)) total += Buffer.byteLength(f) + Buffer.byteLength(v);
    for (const [f, v] of this.changes)
      if (f !== field && v !== undefined) total += Buffer.byteLength(f) + d.encodedSize(v);
    if (total > d.options.maxSize) {
      throw new SessionError(
        'VALUE_TOO_LARGE',
        `session data would be ${total} bytes, over the ${d.options.maxSize}-byte limit; keep sessions small (store ids, not objects) or raise maxSize.`,
      );
    }
  }

  // ---- identity ---------------------------------------------------------------------------

  /** The record id, assigned on first use for a session not stored yet. */
  id(): string {
    this.sid ??= newToken();
    return this.sid;
  }

  /** Marks an ID change for the commit; a session not stored yet simply gets a fresh token. */
  rotate(kind: Rotation['kind'], retain?: string[]): void {
    this.token = newToken();
    // A pre-session CSRF token rotates with the ID: this request no longer accepts it, and the
    // commit expires its cookie.
    this.pre = null;
    this.issuePre = null;
    if (this.record === null) return;
    this.driver.audit('session_renewed', this);
    if (this.rotation === null || kind === 'login') {
      this.rotation = retain ? { kind, retain } : { kind };
    } else if (kind === 'reauthenticate' && this.rotation.kind === 'regenerate') {
      this.rotation = { kind };
    }
    this.changed();
  }

  /** Forgets everything: the object continues as a brand-new, empty session. */
  reset(hadRecord: boolean): void {
    this.record = null;
    this.token = null;
    this.sid = null;
    this.handle = null;
    this.changes.clear();
    this.meta = {};
    this.rotation = null;
    this.reissueCookie = false;
    this.destroyed = true;
    this.clearCookie = this.hadCookie || hadRecord;
    if (this.clearCookie) this.changed();
  }

  /**
   * True while a commit would store and send nothing: no change, no ID change, no cookie to set
   * or clear, and at `now` neither a throttled touch nor a scheduled renewal due. Integrations
   * then hold the response only from the first change (`onFirstChange`), as for a new session.
   */
  quiet(now: number): boolean {
    const o = this.driver.options;
    const loaded = this.record;
    if (this.changes.size > 0 || this.rotation !== null || this.reissueCookie || this.clearCookie)
      return false;
    if (this.destroyed || this.issuePre !== null || this.preUsed) return false;
    for (const _ in this.meta) return false;
    if (loaded === null) return true;
    if (shouldTouch(o, loaded.meta, now)) return false;
    return !(o.renewal && this.token !== null && renewalDue(o.renewal, loaded.meta, now));
  }

  changed(): void {
    if (this.responseStarted) this.lateChange();
    const listener = this.onFirstChange;
    if (listener) {
      this.onFirstChange = undefined;
      listener();
    }
  }

  /** Reports (once per manager) a change made after the response started: it is dropped. */
  lateChange(): void {
    this.driver.warn(
      this.inFlight > 0
        ? 'login(), regenerateId() or destroy() was not awaited: it changed the session after the response had started, so its change was dropped (a login did not happen): await it before sending the response.'
        : 'a session was changed after its response had started (the session is saved when the response head goes out), so the change was dropped: set session values, and await login(), regenerateId() and destroy(), before sending the response.',
    );
  }

  /** After a successful commit: the written state becomes the loaded state. */
  committed(record: StoredSession, handle: string | null): void {
    this.record = record;
    this.handle = handle;
    this.changes.clear();
    this.meta = {};
    this.rotation = null;
    this.reissueCookie = false;
    this.clearCookie = false;
  }

  /** After a commit that found the session gone or taken over: nothing of it is left here. */
  lost(): void {
    this.record = null;
    this.sid = null;
    this.token = null;
    this.handle = null;
    this.changes.clear();
    this.meta = {};
    this.rotation = null;
  }
}
