import { SessionError } from '../errors.js';
import type { CsrfError, CsrfPolicy } from '../features/csrf.js';
import type { CommitOutcome, RequestInfo, SessionManager } from '../manager.js';
import { type Session, stateOf } from '../session.js';
import {
  csrfGuard,
  errorResponseText,
  resolveRequest,
  warnAboutTransport,
  writeSessionHeaders,
} from './headers.js';

export interface FetchSessionOptions {
  /**
   * The address of the direct peer (the TCP connection), if the runtime knows it: Bun's
   * `server.requestIP(req)?.address`, Deno's `info.remoteAddr.hostname`, `@hono/node-server`'s
   * `c.env.incoming.socket.remoteAddress`. It is the client address, unless `trustProxy`
   * trusts it: `X-Forwarded-For` and `X-Forwarded-Proto` are then honoured as for node:http.
   */
  peerAddress?: (request: Request) => string | undefined;
  /**
   * @deprecated The same as `peerAddress` (the address the runtime reports is the peer's),
   * kept for compatibility.
   */
  clientIp?: (request: Request) => string | undefined;
}

/**
 * Facts about a Fetch API request: HTTPS from the URL's scheme, cookies and UA from headers,
 * the peer address from `options.peerAddress`. Given the manager, its `trustProxy` applies:
 * `X-Forwarded-Proto`/`X-Forwarded-For` count when the peer is a trusted proxy (or, with no
 * peer address, only under `trustProxy: true` or a hop count), and `cookie.secure: 'auto'`
 * serves plain cookies on `http://localhost`. Without the manager, forwarding headers are ignored.
 */
export function fetchRequestInfo(
  request: Request,
  options: FetchSessionOptions = {},
  manager?: SessionManager<object>,
): RequestInfo {
  const peer = (options.peerAddress ?? options.clientIp)?.(request);
  const url = new URL(request.url);
  const encrypted = url.protocol === 'https:';
  if (!manager) {
    return {
      cookieHeader: request.headers.get('cookie') ?? undefined,
      secure: encrypted,
      ip: peer,
      userAgent: request.headers.get('user-agent') ?? undefined,
    };
  }
  return resolveRequest(manager, {
    peer,
    encrypted,
    header: (name) => request.headers.get(name) ?? undefined,
    host: url.host,
  });
}

/**
 * Copies the session's headers onto a Response (a new one if its headers are immutable). Pass
 * the request's `info` (from {@link fetchRequestInfo}) so that `cookie.secure: 'auto'` can
 * send plain cookies on http://localhost.
 */
export function withSessionHeaders(
  response: Response,
  out: CommitOutcome,
  session: Session<object>,
  info?: RequestInfo,
): Response {
  if (out.setCookie.length === 0 && !out.clearSiteData && !out.noStore && session.userId === undefined)
    return response;
  try {
    writeSessionHeaders(response.headers, out, session, info);
    return response;
  } catch {
    // Responses from fetch() or Response.redirect() have immutable headers: copy them.
    const copy = new Response(response.body, response);
    writeSessionHeaders(copy.headers, out, session, info);
    return copy;
  }
}

/**
 * Wraps a Fetch API handler (Bun, Deno, Cloudflare-style, Hono's `app.fetch`, Next.js route
 * handlers) so it receives the request's session; the session is committed before the
 * Response is returned. A store outage answers 503. The session has the manager's data type:
 * the app's `SessionData` for a `SessionManager` without a type argument.
 *
 * @example
 * export default { fetch: withFetchSession(sessions, async (req, session) => new Response('hi')) };
 */
export function withFetchSession<D extends object>(
  manager: SessionManager<D>,
  handler: (request: Request, session: Session<D>) => Response | Promise<Response>,
  options: FetchSessionOptions = {},
): (request: Request) => Promise<Response> {
  return async (request) => {
    const info = fetchRequestInfo(request, options, manager as SessionManager<object>);
    try {
      const session = await manager.load(info);
      warnAboutTransport(info, session);
      const response = await handler(request, session);
      // Whatever the handler changes from here on (a task it left running) is not saved.
      stateOf(session).responseStarted = true;
      const out = await manager.commit(session, info);
      return withSessionHeaders(response, out, session, info);
    } catch (err) {
      if (!(err instanceof SessionError) || err.status < 500) throw err;
      const { status, text } = errorResponseText(err);
      return new Response(text, {
        status,
        headers: { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' },
      });
    }
  };
}

/**
 * The CSRF check of `csrfProtection()` for Fetch handlers: for an unsafe method, the session's
 * token (from `body[_csrf]`, which you pass after parsing the body, or the `x-csrf-token`
 * header), Fetch Metadata and the Origin must all pass. Returns the 403 `CsrfError` (with its
 * `reason`) to answer with, or undefined when the request may proceed.
 *
 * @example
 * const refused = checkCsrf(sessions, session, request, { body: Object.fromEntries(await request.formData()) });
 * if (refused) return new Response('Forbidden', { status: 403 });
 */
export function checkCsrf<D extends object>(
  manager: SessionManager<D>,
  session: Session<D>,
  request: Request,
  options: CsrfPolicy & FetchSessionOptions & { body?: unknown; origin?: string | string[] } = {},
): CsrfError | undefined {
  const { body, origin, ...rest } = options;
  const m = manager as unknown as SessionManager<object>;
  const headers: Record<string, string> = {};
  request.headers.forEach((value, name) => {
    headers[name] = value;
  });
  const info = fetchRequestInfo(request, rest, m);
  return csrfGuard(
    m,
    session as unknown as Session<object>,
    { method: request.method, headers, body },
    info,
    {
      ...rest,
      ...(origin === undefined ? {} : { origin }),
    },
  );
}
