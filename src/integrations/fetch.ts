import { SessionError } from '../errors.js';
import type { CommitOutcome, RequestInfo, SessionManager } from '../manager.js';
import type { Session } from '../session.js';
import { writeSessionHeaders } from './headers.js';

export interface FetchSessionOptions {
  /** The client address, if the runtime knows it (the Fetch API does not carry it). */
  clientIp?: (request: Request) => string | undefined;
}

/** Facts about a Fetch API request: HTTPS from the URL's scheme, cookies and UA from headers. */
export function fetchRequestInfo(request: Request, options: FetchSessionOptions = {}): RequestInfo {
  return {
    cookieHeader: request.headers.get('cookie') ?? undefined,
    secure: new URL(request.url).protocol === 'https:',
    ip: options.clientIp?.(request),
    userAgent: request.headers.get('user-agent') ?? undefined,
  };
}

/** Copies the session's headers onto a Response (a new one if its headers are immutable). */
export function withSessionHeaders(
  response: Response,
  out: CommitOutcome,
  session: Session<object>,
): Response {
  if (out.setCookie.length === 0 && !out.clearSiteData && !out.noStore && session.userId === undefined)
    return response;
  try {
    writeSessionHeaders(response.headers, out, session);
    return response;
  } catch {
    // Responses from fetch() or Response.redirect() have immutable headers: copy them.
    const copy = new Response(response.body, response);
    writeSessionHeaders(copy.headers, out, session);
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
    const info = fetchRequestInfo(request, options);
    try {
      const session = await manager.load(info);
      const response = await handler(request, session);
      const out = await manager.commit(session, info);
      return withSessionHeaders(response, out, session);
    } catch (err) {
      if (!(err instanceof SessionError) || err.status < 500) throw err;
      return new Response(`Service Unavailable: ${err.message}\n`, {
        status: err.status,
        headers: { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' },
      });
    }
  };
}
