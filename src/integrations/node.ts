import type { IncomingMessage, ServerResponse } from 'node:http';
import { SessionError } from '../errors.js';
import type { SessionManager } from '../manager.js';
import type { Session } from '../session.js';
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
    let session: Session<D>;
    try {
      session = await attachSession(manager, req, res);
    } catch (err) {
      const error =
        err instanceof SessionError
          ? err
          : new SessionError('STORE_UNAVAILABLE', String(err), { cause: err });
      if (!res.headersSent) {
        res.writeHead(error.status, {
          'Content-Type': 'text/plain; charset=utf-8',
          'Cache-Control': 'no-store',
        });
      }
      res.end(
        `${error.status === 503 ? 'Service Unavailable' : 'Error'}: ${error.expose ? error.message : 'session error'}\n`,
      );
      return;
    }
    await handler(req, res, session);
  };
}
