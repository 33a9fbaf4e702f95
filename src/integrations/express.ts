import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { SessionError } from '../errors.js';
import { type CsrfPolicy, csrfDecision, isSafeMethod } from '../features/csrf.js';
import type { SessionManager } from '../manager.js';
import type { MountableSessionData, Session } from '../session.js';
import { type CommitErrorHandler, commitBeforeHeaders, requestInfo } from './http.js';

declare module 'express-serve-static-core' {
  interface Request {
    /**
     * The request's session, set by sessionflow's `session()` middleware. Its data type is the
     * app's `SessionData` (declare your keys with `declare module 'sessionflow'`).
     */
    session: Session;
  }
}

type AnyManager = SessionManager<object>;

export interface ExpressSessionOptions {
  /** Renders the response when the session cannot be saved after the handler ran. @default plain-text 503 */
  onCommitError?: CommitErrorHandler;
}

/**
 * Express 5 middleware: `req.session` is the request's Session, committed before the response
 * head goes out. A store outage reaches Express's error handler as a SessionError with status 503.
 * `req.session` has the app's `SessionData` type; once that declares keys, the manager's data
 * type must have them too (a `SessionManager` without a type argument has).
 *
 * @example
 * app.use(session(sessions));
 * app.get('/', (req, res) => res.send(`visits: ${req.session.get('visits') ?? 0}`));
 */
export function session<D extends MountableSessionData>(
  manager: SessionManager<D>,
  options: ExpressSessionOptions = {},
): RequestHandler {
  const m: AnyManager = manager;
  return async function sessionflow(req: Request, res: Response, next: NextFunction) {
    let s: Session<object>;
    const info = requestInfo(m, req);
    try {
      s = await m.load(info);
    } catch (err) {
      next(err);
      return;
    }
    req.session = s as Session;
    commitBeforeHeaders(m, s, info, res, options.onCommitError);
    next();
  };
}

export interface CsrfMiddlewareOptions extends CsrfPolicy {
  /** The app's public origin(s) for the Origin check; derived from the Host header if absent. */
  origin?: string | string[];
}

/**
 * Rejects unsafe requests (POST, PUT, PATCH, DELETE…) without the session's CSRF token with a
 * 403 SessionError. Mount it after `session()` and after the body parser that reads your forms.
 */
export function csrfProtection<D extends object>(
  manager: SessionManager<D>,
  options: CsrfMiddlewareOptions = {},
): RequestHandler {
  const m: AnyManager = manager;
  const names = m.options.csrf;
  return function sessionflowCsrf(req: Request, res: Response, next: NextFunction) {
    // The outcome of an unsafe request depends on these headers; caches must not mix them up.
    if (!isSafeMethod(req.method)) res.vary('Sec-Fetch-Site').vary('Origin').vary('Referer');
    const s = req.session;
    if (!s) {
      next(
        new SessionError(
          'INVALID_OPTION',
          'csrfProtection() needs the session() middleware mounted before it.',
        ),
      );
      return;
    }
    const decision = csrfDecision(
      s.csrf,
      {
        method: req.method,
        headers: req.headers,
        body: req.body,
        secure: requestInfo(m, req).secure,
        ...(options.origin === undefined ? {} : { origin: options.origin }),
      },
      names,
      options,
    );
    if (decision === 'ok') {
      next();
      return;
    }
    m.reportCsrfFailure(s, decision);
    next(
      new SessionError(
        'CSRF_INVALID',
        'The form has expired or did not come from this site. Reload the page and try again.',
      ),
    );
  };
}
