import { randomBytes, timingSafeEqual } from 'node:crypto';
import { SessionError } from '../errors.js';

export interface CsrfHost {
  readInternal(name: string): unknown;
  writeInternal(name: string, value: unknown): void;
  /**
   * For a visitor without a stored session: a token that needs no storage (bound to a signed
   * pre-session cookie), or undefined when the session is (or is about to be) stored.
   */
  anonymousToken?(): string | undefined;
  /** Checks a token issued by {@link anonymousToken} against this request's pre-session cookie. */
  verifyAnonymous?(submitted: string): boolean;
}

const FIELD = 'csrf';

/**
 * Per-session synchronizer token (OWASP CSRF cheat sheet). One token per session, valid in every
 * tab and for AJAX, rotated when the session ID is regenerated (login, privilege change).
 */
export class Csrf {
  readonly #host: CsrfHost;
  readonly #field: string;

  constructor(host: CsrfHost, field: string) {
    this.#host = host;
    this.#field = field;
  }

  /**
   * The session's token, created on first use (256 bits, base64url). For a visitor who has no
   * stored session, e.g. on a login page, the token is derived from a signed pre-session cookie
   * instead, so showing a form costs no store write.
   */
  token(): string {
    const existing = this.#host.readInternal(FIELD);
    if (typeof existing === 'string') return existing;
    const anonymous = this.#host.anonymousToken?.();
    if (anonymous !== undefined) return anonymous;
    const token = randomBytes(32).toString('base64url');
    this.#host.writeInternal(FIELD, token);
    return token;
  }

  /** The form field name the token travels in (a header `x-csrf-token` is accepted too). */
  tokenKey(): string {
    return this.#field;
  }

  /**
   * Constant-time check of a submitted token against the session's token, or, for a form shown
   * before the session was stored, against the pre-session cookie; false when there is neither.
   */
  verify(submitted: unknown): boolean {
    if (typeof submitted !== 'string') return false;
    const expected = this.#host.readInternal(FIELD);
    if (typeof expected === 'string') {
      const a = Buffer.from(expected, 'utf8');
      const b = Buffer.from(submitted, 'utf8');
      if (a.length === b.length && timingSafeEqual(a, b)) return true;
    }
    return this.#host.verifyAnonymous?.(submitted) ?? false;
  }
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

/** True for methods that must not change state, which the CSRF check lets through. */
export function isSafeMethod(method: string): boolean {
  return SAFE_METHODS.has(method.toUpperCase());
}

/** What the CSRF check needs from a request, whatever the framework. */
export interface CsrfRequest {
  method: string;
  /** Lower-case header names. */
  headers: Record<string, string | string[] | undefined>;
  /** The parsed body, if the app parsed one (a form field carries the token). */
  body?: unknown;
  /** The origin the app is served on, e.g. 'https://app.example.org'; derived from Host if absent. */
  origin?: string | readonly string[];
  /**
   * Whether the request came over HTTPS (as the integrations' `requestInfo(...).secure` says,
   * X-Forwarded-Proto from a trusted proxy included). With no `origin`, the app's origin is this
   * scheme plus the Host header, so an `http://` page cannot post to the `https://` app or the
   * other way round. Without `origin` and without `secure` the app's origin is unknown and every
   * unsafe request that carries an Origin or Referer is refused.
   */
  secure?: boolean;
}

function header(req: CsrfRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * How strict the origin part of the check is.
 *
 * @inline
 */
export interface CsrfPolicy {
  /**
   * Accept an unsafe request that carries neither `Origin`, `Referer` nor `Sec-Fetch-Site` when
   * its token is valid. Browsers send at least one of them on every POST, so only non-browser
   * clients need this. @default false
   */
  allowMissingOrigin?: boolean;
}

/** The app's origin(s): the configured ones, else the request's own scheme and Host, never both schemes. */
function allowedOrigins(req: CsrfRequest): readonly string[] {
  if (req.origin !== undefined) return typeof req.origin === 'string' ? [req.origin] : req.origin;
  const host = header(req, 'host');
  if (!host || typeof req.secure !== 'boolean') return [];
  return [`${req.secure ? 'https' : 'http'}://${host}`];
}

/** The origin the browser says the request comes from: `Origin`, else the `Referer`'s origin. */
function sourceOrigin(req: CsrfRequest): string | undefined {
  const origin = header(req, 'origin');
  if (origin !== undefined) return origin;
  const referer = header(req, 'referer');
  if (referer === undefined) return undefined;
  try {
    return new URL(referer).origin;
  } catch {
    return 'null';
  }
}

/**
 * Why an unsafe request was refused; never contains the token.
 *
 * - `cross-site`: Fetch Metadata (`Sec-Fetch-Site: cross-site` or `same-site`) says another site sent it.
 * - `origin-mismatch`: its `Origin` (or, without one, its `Referer`'s origin) is not the app's.
 * - `origin-missing`: it carries none of `Origin`, `Referer`, `Sec-Fetch-Site`.
 * - `token-missing`: no token in the form field or the header.
 * - `token-mismatch`: a token that is not this session's (another session's, an expired
 *   session's, or one whose session cookie never reached the browser).
 */
export type CsrfRefusal =
  | 'cross-site'
  | 'origin-mismatch'
  | 'origin-missing'
  | 'token-missing'
  | 'token-mismatch';

/**
 * Decides whether an unsafe request may proceed: 'ok', or the reason it may not. Safe methods
 * pass. Unsafe ones are refused when the browser says they come from another site (Fetch
 * Metadata), when their Origin (or, without one, their Referer) is not exactly the app's origin
 * (`req.origin`, else the request's own scheme — `req.secure` — and Host header),
 * when none of these headers is present (unless the policy allows it), and when the session's
 * token is not in the form field or the header (never a cookie). Content-Type plays no part.
 */
export function csrfDecision(
  csrf: Csrf,
  req: CsrfRequest,
  names: { field: string; header: string },
  policy: CsrfPolicy = {},
): 'ok' | CsrfRefusal {
  if (isSafeMethod(req.method)) return 'ok';
  const site = header(req, 'sec-fetch-site');
  if (site === 'cross-site' || site === 'same-site') return 'cross-site';
  const source = sourceOrigin(req);
  if (source !== undefined) {
    if (source === 'null' || !allowedOrigins(req).includes(source)) return 'origin-mismatch';
  } else if (site === undefined && !policy.allowMissingOrigin) {
    return 'origin-missing';
  }
  const body = req.body;
  const fromBody =
    body && typeof body === 'object' && Object.hasOwn(body, names.field)
      ? (body as Record<string, unknown>)[names.field]
      : undefined;
  const submitted = header(req, names.header) ?? fromBody;
  if (submitted === undefined || submitted === '') return 'token-missing';
  return csrf.verify(submitted) ? 'ok' : 'token-mismatch';
}

/** The message of every CSRF refusal: the same for all reasons, so it tells an attacker nothing. */
export const CSRF_REFUSED_MESSAGE =
  'The form has expired or did not come from this site. Reload the page and try again.';

/**
 * The 403 of a refused unsafe request: a SessionError of code CSRF_INVALID whose `reason` says
 * which check failed (for logs and error handlers; the message, shown to users, stays generic).
 */
export class CsrfError extends SessionError {
  readonly reason: CsrfRefusal;

  constructor(reason: CsrfRefusal) {
    super('CSRF_INVALID', CSRF_REFUSED_MESSAGE);
    this.reason = reason;
  }
}
