import { parse as parseCookies, serialize as serializeCookie } from 'cookie';
import { isWellFormedToken, storageKey } from '../crypto/ids.js';
import type { KeyRing } from '../crypto/keyring.js';
import type { ResolvedOptions } from '../options.js';
import type { SessionMeta } from '../stores/store.js';

/**
 * The session cookie: `<record id>.<token>.<mac>`. The record id names the stored record and
 * never changes for the life of the session; the token is the secret that opens it, replaced at
 * every ID change; the MAC (HMAC-SHA256 under the key ring, covering the cookie name) rejects
 * forged or altered values before any store access. Stores see the record id and a hash of the
 * token (the handle), never the token.
 */

/** A cookie value that passed the MAC and shape checks. */
export interface VerifiedCookie {
  /** The record id: the storage key. */
  sid: string;
  token: string;
  /** SHA-256 of the token, compared with the record's `meta.h`. */
  handle: string;
  /** Index of the secret that verified it; 0 is the newest. */
  keyIndex: number;
}

/**
 * The per-session cookie lifetime left at `now` ("remember me": `session.rememberFor()` stores
 * its end in `meta.persistUntil`), for {@link CookieCodec.issue}; undefined once it has passed
 * or when the session has none, so the cookie falls back to `cookie.maxAge` or to a
 * browser-session cookie (never to `Max-Age=0`, which would end a live session).
 */
export function rememberedMaxAge(meta: Pick<SessionMeta, 'persistUntil'>, now: number): number | undefined {
  const until = meta.persistUntil;
  return until !== undefined && until > now ? until - now : undefined;
}

// <43>.<43>.<43>: anything longer is refused before the MAC is computed.
const MAX_COOKIE_VALUE = 160;
const VERIFIED_CACHE = 10_000;
/**
 * The longest `Cookie` header kept per connection (browsers rarely send more than a few hundred
 * bytes). A longer one is parsed every time, so an idle keep-alive connection holds at most this
 * much text here, not node's 16 KB header limit.
 */
const MAX_KEPT_HEADER = 4096;

/**
 * What a connection's last `Cookie` header held for this codec. Everything in it is a function of
 * the header's text and the codec's fixed keys and names, so a later request whose header is
 * the same text gets the same answers, whoever sent it over the connection.
 */
interface HeaderCookies {
  readonly header: string;
  /** The session cookie's raw value; undefined when the header has none. */
  readonly raw: string | undefined;
  /** `verify(raw)`, once asked: undefined until then. */
  verified: VerifiedCookie | null | undefined;
  /** `readPre(header)`, once asked: null for none, undefined until then. */
  pre: string | null | undefined;
}

/** A connection the per-connection entry can be kept for (a WeakMap key); anything else is ignored. */
function isConnection(connection: unknown): connection is object {
  return typeof connection === 'object' && connection !== null;
}

/** Reads, verifies (with a bounded cache of values already verified), issues and clears the cookie. */
export class CookieCodec {
  readonly #keys: KeyRing;
  readonly #options: ResolvedOptions;
  readonly #verified = new Map<string, VerifiedCookie>();
  /** Per connection (a keep-alive socket), the last `Cookie` header read through it. */
  readonly #lastHeader = new WeakMap<object, HeaderCookies>();
  /** `; Path=/; HttpOnly; ...`: the attributes after Max-Age, serialized on first use. */
  #attributes: string | undefined;

  constructor(keys: KeyRing, options: ResolvedOptions) {
    this.#keys = keys;
    this.#options = options;
  }

  /**
   * The raw value of our cookie in a `Cookie` header, if any (the first of duplicates). Given the
   * request's `connection`, a header identical to the one that connection sent last is not
   * parsed again, and {@link verify} and {@link readPre} of its values answer from the same
   * entry: a browser sends the same header on every request of a keep-alive connection.
   */
  read(header: string | undefined, connection?: object): string | undefined {
    if (header === undefined || header.length > MAX_KEPT_HEADER || !isConnection(connection)) {
      return this.#parse(header);
    }
    const last = this.#lastHeader.get(connection);
    if (last !== undefined && last.header === header) return last.raw;
    // A header without our cookie's name (nor the pre-session one, which contains it) is not kept.
    if (!header.includes(this.#options.cookie.name)) return undefined;
    const raw = parseCookies(header)[this.#options.cookie.name];
    this.#lastHeader.set(connection, { header, raw, verified: undefined, pre: undefined });
    return raw;
  }

  #parse(header: string | undefined): string | undefined {
    // Fast path: most requests of a site that never wrote a session carry no such cookie.
    if (!header?.includes(this.#options.cookie.name)) return undefined;
    return parseCookies(header)[this.#options.cookie.name];
  }

  /**
   * Checks a cookie value's MAC and shape. A session's cookie comes back on every request, so
   * verified values are remembered (bounded, oldest out): a repeat costs a map lookup instead
   * of an HMAC and a hash. Only values that passed the check enter.
   */
  verify(raw: string, connection?: object): VerifiedCookie | null {
    if (!isConnection(connection)) return this.#verify(raw);
    const last = this.#lastHeader.get(connection);
    // The entry answers only for the value it holds (read() just put it there, or found it).
    if (last === undefined || last.raw !== raw) return this.#verify(raw);
    if (last.verified === undefined) last.verified = this.#verify(raw);
    return last.verified;
  }

  #verify(raw: string): VerifiedCookie | null {
    const cached = this.#verified.get(raw);
    if (cached) return cached;
    if (raw.length > MAX_COOKIE_VALUE) return null;
    const verified = this.#keys.verify(this.#options.cookie.name, raw);
    if (!verified) return null;
    const dot = verified.value.indexOf('.');
    const sid = verified.value.slice(0, dot);
    const token = verified.value.slice(dot + 1);
    if (dot < 0 || !isWellFormedToken(sid) || !isWellFormedToken(token)) return null;
    const entry: VerifiedCookie = { sid, token, handle: storageKey(token), keyIndex: verified.keyIndex };
    if (this.#verified.size >= VERIFIED_CACHE) {
      this.#verified.delete(this.#verified.keys().next().value as string);
    }
    this.#verified.set(raw, entry);
    return entry;
  }

  /**
   * `Set-Cookie` for a session. `maxAge` is this session's own cookie lifetime in milliseconds
   * ("remember me", see {@link rememberedMaxAge}); without it, `cookie.maxAge`; without either,
   * a browser-session cookie. Never past the absolute deadline.
   */
  issue(sid: string, token: string, deadline: number, now: number, maxAge?: number): string {
    const c = this.#options.cookie;
    const lifetime = maxAge ?? c.maxAge;
    const seconds =
      lifetime === undefined ? undefined : Math.floor(Math.min(lifetime, deadline - now) / 1000);
    // The signed value is base64url and dots, which need no encoding; Max-Age comes right after
    // the value, then the attributes that never change (checked and written once by `cookie`).
    this.#attributes ??= serializeCookie(c.name, '', this.#fixedAttributes()).slice(c.name.length + 1);
    const value = this.#keys.sign(c.name, `${sid}.${token}`);
    return `${c.name}=${value}${seconds === undefined ? '' : `; Max-Age=${seconds}`}${this.#attributes}`;
  }

  /** The session cookie's attributes but Max-Age: the same for every cookie this codec issues. */
  #fixedAttributes() {
    const c = this.#options.cookie;
    return {
      httpOnly: true,
      secure: c.secure,
      sameSite: c.sameSite,
      path: c.path,
      ...(c.domain === undefined ? {} : { domain: c.domain }),
      ...(c.partitioned ? { partitioned: true } : {}),
    };
  }

  // ---- the pre-session cookie (CSRF for visitors without a stored session) ---------------

  /** Name of the pre-session cookie: the session cookie's name (prefix included) + `-pre`. */
  get preName(): string {
    return `${this.#options.cookie.name}-pre`;
  }

  /**
   * The verified nonce of the request's pre-session cookie, if any. With `connection`, answered
   * from the entry {@link read} keeps when the header is the one read through it last.
   */
  readPre(header: string | undefined, connection?: object): string | undefined {
    if (!isConnection(connection) || header === undefined) return this.#readPre(header);
    const last = this.#lastHeader.get(connection);
    if (last === undefined || last.header !== header) return this.#readPre(header);
    if (last.pre === undefined) last.pre = this.#readPre(header) ?? null;
    return last.pre ?? undefined;
  }

  #readPre(header: string | undefined): string | undefined {
    const name = this.preName;
    if (!header?.includes(name)) return undefined;
    const raw = parseCookies(header)[name];
    if (raw === undefined || raw.length > MAX_COOKIE_VALUE) return undefined;
    const verified = this.#keys.verify(name, raw);
    return verified && isWellFormedToken(verified.value) ? verified.value : undefined;
  }

  /** `Set-Cookie` for a pre-session nonce (a browser-session cookie, same attributes). */
  issuePre(nonce: string): string {
    const c = this.#options.cookie;
    return serializeCookie(this.preName, this.#keys.sign(this.preName, nonce), {
      httpOnly: true,
      secure: c.secure,
      sameSite: c.sameSite,
      path: c.path,
      ...(c.domain === undefined ? {} : { domain: c.domain }),
    });
  }

  /** `Set-Cookie` that expires the pre-session cookie (at login: it has served its purpose). */
  clearPre(): string {
    return this.#expire(this.preName);
  }

  /**
   * The CSRF token of a visitor without a stored session: an HMAC of the pre-session nonce under
   * the key ring, so it needs no storage and is worthless without the visitor's own cookie.
   */
  preToken(nonce: string): string {
    const signed = this.#keys.sign('csrf-pre', nonce);
    return signed.slice(signed.lastIndexOf('.') + 1);
  }

  /** Constant-time check of a submitted pre-session token (any key of the ring). */
  verifyPreToken(nonce: string, submitted: string): boolean {
    if (submitted.length > MAX_COOKIE_VALUE || submitted.includes('.')) return false;
    return this.#keys.verify('csrf-pre', `${nonce}.${submitted}`) !== null;
  }

  /** `Set-Cookie` that expires the session cookie in the browser. */
  clear(): string {
    return this.#expire(this.#options.cookie.name);
  }

  #expire(name: string): string {
    const c = this.#options.cookie;
    return serializeCookie(name, '', {
      httpOnly: true,
      secure: c.secure,
      sameSite: c.sameSite,
      path: c.path,
      ...(c.domain === undefined ? {} : { domain: c.domain }),
      maxAge: 0,
      expires: new Date(0),
    });
  }
}
