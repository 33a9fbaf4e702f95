import type { Context, MiddlewareHandler } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { SessionError, storeUnavailable } from '../errors.js';
import { type CsrfPolicy, isSafeMethod } from '../features/csrf.js';
import type { RequestInfo, SessionManager } from '../manager.js';
import { type DefaultSessionData, type Session, stateOf } from '../session.js';
import { withSessionHeaders } from './fetch.js';
import { csrfGuard, errorResponseText, resolveRequest, warnAboutTransport } from './headers.js';

export { CsrfError, type CsrfRefusal } from '../features/csrf.js';

type AnyManager = SessionManager<object>;

/**
 * The context variables the `session()` middleware sets: `c.get('session')` is the request's
 * Session, typed with the app's `SessionData` unless a data type is given.
 *
 * @example
 * const app = new Hono<{ Bindings: HttpBindings; Variables: SessionVariables }>();
 */
export interface SessionVariables<D extends object = DefaultSessionData> {
  /** The request's session, set by sessionflow's `session()` middleware. */
  session: Session<D>;
}

/**
 * The Hono environment of an app that mounts `session()`: put it in the app's generic so that
 * `c.get('session')` is a `Session<SessionData>` in every handler.
 *
 * @example
 * const app = new Hono<SessionEnv>();
 * app.use(session(sessions));
 */
export interface SessionEnv<D extends object = DefaultSessionData> {
  /** The variables the middleware sets. */
  Variables: SessionVariables<D>;
}

export interface HonoSessionOptions {
  /**
   * The address of the direct peer (the TCP connection) for runtimes other than
   * `@hono/node-server`, e.g. `(c) => getConnInfo(c).remote.address` from `hono/bun` or
   * `hono/deno`. On `@hono/node-server` the socket's address is read without it. It is the
   * client address, unless `trustProxy` trusts it: `X-Forwarded-For` and `X-Forwarded-Proto`
   * are then honoured as for node:http.
   */
  peerAddress?: (c: Context) => string | undefined;
}

/** What `@hono/node-server` puts in `c.env` (directly, or under `server` on some adapters). */
interface NodeBindingsLike {
  incoming?: { socket?: { remoteAddress?: string; encrypted?: boolean } };
  server?: NodeBindingsLike;
}

/** The node:http socket of the request, on `@hono/node-server`. */
function nodeSocket(c: Context): { remoteAddress?: string; encrypted?: boolean } | undefined {
  const env = c.env as NodeBindingsLike | undefined;
  if (!env || typeof env !== 'object') return undefined;
  return (env.server ?? env).incoming?.socket;
}

/**
 * Facts about a Hono request, through the same core as every integration: on
 * `@hono/node-server` the peer address and TLS come from the socket itself (not from the URL,
 * which an absolute-form request target could set to https); elsewhere the peer address comes
 * from `options.peerAddress` and TLS from the URL's scheme. The manager's `trustProxy` and
 * `cookie.secure: 'auto'` apply as for node:http.
 */
export function honoRequestInfo(
  manager: SessionManager<object>,
  c: Context,
  options: HonoSessionOptions = {},
): RequestInfo {
  const socket = nodeSocket(c);
  const url = new URL(c.req.url);
  const raw = c.req.raw.headers;
  return resolveRequest(manager, {
    peer: options.peerAddress ? options.peerAddress(c) : socket?.remoteAddress,
    encrypted: socket ? socket.encrypted === true : url.protocol === 'https:',
    header: (name) => raw.get(name) ?? undefined,
    host: raw.get('host') ?? url.host,
    connection: socket,
  });
}

/** The request info each session was loaded with, for the CSRF middleware. */
const infos = new WeakMap<object, RequestInfo>();

/**
 * The response of a SessionError, under the rule every integration follows: the status of the
 * error, its message only when it may be shown (`expose`), never a session cookie.
 */
function errorResponse(error: SessionError): Response {
  const { status, text } = errorResponseText(error);
  return new Response(text, {
    status,
    headers: { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' },
  });
}

const VARY = 'Sec-Fetch-Site, Origin, Referer';

/** The HTTPException Hono's error handling expects, carrying the SessionError as its cause. */
function httpException(error: SessionError, vary = false): HTTPException {
  const res = errorResponse(error);
  if (vary) res.headers.set('Vary', VARY);
  return new HTTPException(error.status as ConstructorParameters<typeof HTTPException>[0], {
    res,
    message: error.message,
    cause: error,
  });
}

/** Replaces `c.res` without Hono copying the old response's headers (Set-Cookie included) over it. */
function replaceResponse(c: Context, response: Response): void {
  c.res = undefined;
  c.res = response;
}

/**
 * Hono middleware: `c.get('session')` is the request's Session, committed after the handlers
 * ran and before the response goes out, with its Set-Cookie, `Cache-Control` and
 * `Clear-Site-Data` headers (a redirect's immutable response is copied). On `@hono/node-server`
 * the client address is the socket's (or, under `trustProxy`, the one forwarded by a trusted
 * proxy). A store outage throws an `HTTPException` whose response is a plain-text 503 (Hono's
 * default error handler sends it; `app.onError` finds the SessionError in `err.cause`).
 *
 * The session has the manager's data type, the app's `SessionData` for a `SessionManager`
 * without a type argument; put {@link SessionEnv} in the app's generic (or chain `.use()`) to
 * have it in `c.get('session')`.
 *
 * @example
 * const app = new Hono<SessionEnv>();
 * app.use(session(sessions));
 * app.get('/', (c) => c.text(`visits: ${c.get('session').get('visits') ?? 0}`));
 */
export function session<D extends object>(
  manager: SessionManager<D>,
  options: HonoSessionOptions = {},
): MiddlewareHandler<SessionEnv<D>> {
  const m = manager as unknown as AnyManager;
  return async function sessionflow(c, next) {
    const info = honoRequestInfo(m, c, options);
    let s: Session<object>;
    try {
      s = await m.load(info);
    } catch (err) {
      if (!(err instanceof SessionError)) throw err;
      throw httpException(err);
    }
    warnAboutTransport(info, s);
    infos.set(s, info);
    c.set('session', s as unknown as Session<D>);
    await next();
    // Whatever the app changes from here on (a task it left running) is not saved.
    stateOf(s).responseStarted = true;
    let out: Awaited<ReturnType<AnyManager['commit']>>;
    try {
      out = await m.commit(s, info);
    } catch (err) {
      // The app's response (and any cookie on it) does not go out: the 503 replaces it.
      c.res = undefined;
      throw httpException(storeUnavailable('commit', err));
    }
    const response = c.res;
    const withHeaders = withSessionHeaders(response, out, s, info);
    if (withHeaders !== response) replaceResponse(c, withHeaders);
  };
}

export interface HonoCsrfOptions extends CsrfPolicy {
  /** The app's public origin(s) for the Origin check; derived from the Host header if absent. */
  origin?: string | string[];
}

const FORM_TYPES = /^(application\/x-www-form-urlencoded|multipart\/form-data)\b/i;

/** The parsed body, where the form field may carry the token (Hono caches it for the handler). */
async function bodyOf(c: Context): Promise<unknown> {
  const type = c.req.header('content-type') ?? '';
  try {
    if (FORM_TYPES.test(type)) return await c.req.parseBody();
    if (/^application\/json\b/i.test(type)) return await c.req.json();
  } catch {
    // An unreadable body carries no token.
  }
  return undefined;
}

/**
 * Refuses unsafe requests (POST, PUT, PATCH, DELETE…) without the session's CSRF token, with the
 * Fetch Metadata and Origin checks of every integration: it throws an `HTTPException` 403 whose
 * `cause` is a {@link CsrfError} (a SessionError of code CSRF_INVALID) whose `reason` says which
 * check failed (`token-missing`, `token-mismatch`, `origin-mismatch`, `origin-missing`,
 * `cross-site`), as the `malicious_csrf` audit event does; the message stays generic. The token
 * is read from the `x-csrf-token` header or the `_csrf` field of a form or JSON body (the names
 * the manager configures). Mount it after `session()`.
 */
export function csrfProtection<D extends object>(
  manager: SessionManager<D>,
  options: HonoCsrfOptions = {},
): MiddlewareHandler {
  const m = manager as unknown as AnyManager;
  return async function sessionflowCsrf(c, next) {
    const s = c.get('session') as Session<object> | undefined;
    if (!s) {
      throw new SessionError(
        'INVALID_OPTION',
        'csrfProtection() needs the session() middleware mounted before it.',
      );
    }
    if (isSafeMethod(c.req.method)) {
      await next();
      return;
    }
    const info = infos.get(s) ?? honoRequestInfo(m, c);
    const names = m.options.csrf;
    const headers = c.req.header();
    const body = headers[names.header] === undefined ? await bodyOf(c) : undefined;
    const refused = csrfGuard(m, s, { method: c.req.method, headers, body }, info, options);
    // The outcome of an unsafe request depends on these headers; caches must not mix them up.
    if (refused) throw httpException(refused, true);
    await next();
    c.header('Vary', VARY, { append: true });
  };
}
