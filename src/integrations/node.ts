import type { IncomingMessage, ServerResponse } from 'node:http';
import type { CsrfError, CsrfPolicy } from '../features/csrf.js';
import type { SessionManager } from '../manager.js';
import type { Session } from '../session.js';
import { csrfGuard, errorResponseText } from './headers.js';
import { type CommitErrorHandler, commitBeforeHeaders, requestInfo } from './http.js';

export { applyOutcome, commitBeforeHeaders, requestInfo } from './http.js';

/**
 * Loads the session of a node:http request and arranges for it to be committed before the
 * response's head goes out (redirects, errors and `writeHead` with array headers included).
 * Call it only where a handler needs the session: a handler that never calls it pays nothing.
 * Rejects with a 503 SessionError if the store is down. The session has the manager's data
 * type: the app's `SessionData` for a `SessionManager` without a type argument.
 *
 * @example
 * const session = await attachSession(sessions, req, res);
 * session.set('visits', (session.get('visits') ?? 0) + 1);
 */
export async function attachSession<D extends object>(
  manager: SessionManager<D>,
  req: IncomingMessage,
  res: ServerResponse,
  options: { onCommitError?: CommitErrorHandler } = {},
): Promise<Session<D>> {
  const info = requestInfo(manager, req);
  const session = await manager.load(info);
  commitBeforeHeaders(manager, session, info, res, options.onCommitError);
  return session;
}

/**
 * Wraps a node:http handler so it receives the request's session. A store outage at load time
 * answers 503 (never an empty session that would log the user out).
 *
 * @example
 * http.createServer(withSession(sessions, async (req, res, session) => { ... }));
 */
export function withSession<D extends object>(
  manager: SessionManager<D>,
  handler: (req: IncomingMessage, res: ServerResponse, session: Session<D>) => unknown,
): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  return async (req, res) => {
    try {
      const session = await attachSession(manager, req, res);
      await handler(req, res, session);
    } catch (err) {
      // A store outage (503), a CSRF refusal thrown by the handler (403), or a bug in the handler
      // (500): always an answer, never a hung request or an unhandled rejection.
      const { status, text } = errorResponseText(err);
      if (!res.headersSent) {
        res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' });
      }
      if (!res.writableEnded) res.end(text);
    }
  };
}

/**
 * The CSRF check of `csrfProtection()` for node:http handlers: for an unsafe method, the
 * session's token (form field `body[_csrf]` or the `x-csrf-token` header), Fetch Metadata and
 * the Origin must all pass. Returns the 403 `CsrfError` (with its `reason`) to answer with, or
 * undefined when the request may proceed; refusals are audited as `malicious_csrf`.
 *
 * @example
 * const refused = checkCsrf(sessions, session, req, { body });
 * if (refused) throw refused; // withSession answers 403
 */
export function checkCsrf<D extends object>(
  manager: SessionManager<D>,
  session: Session<D>,
  req: IncomingMessage,
  options: CsrfPolicy & { body?: unknown; origin?: string | string[] } = {},
): CsrfError | undefined {
  const { body, ...policy } = options;
  const m = manager as unknown as SessionManager<object>;
  return csrfGuard(
    m,
    session as unknown as Session<object>,
    { method: req.method ?? 'GET', headers: req.headers, body },
    requestInfo(m, req),
    policy,
  );
}
