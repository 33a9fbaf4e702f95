import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { SessionError } from '../errors.js';
import { type CsrfPolicy, isSafeMethod } from '../features/csrf.js';
import type { RequestInfo, SessionManager } from '../manager.js';
import type { MountableSessionData, Session } from '../session.js';
import { compatInstaller, type ExpressCompatOptions } from './express-compat.js';
import { csrfGuard } from './headers.js';
import { type CommitErrorHandler, commitBeforeHeaders, requestInfo } from './http.js';

export { CsrfError, type CsrfRefusal } from '../features/csrf.js';
export {
  type CompatCookie,
  compat,
  type ExpressCompatOptions,
  type ExpressSessionCompat,
} from './express-compat.js';

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

/**
 * Taken when the module loads, so that a test's fake timers installed afterwards never stall a
 * request. Fake timers installed before (a setup file, Jest's `fakeTimers: { enableGlobally }`)
 * are recognised as Testing Library does: @sinonjs/fake-timers (Vitest, Jest) marks its fakes
 * with `clock`, `jest.fn()` with `_isMockFunction`; the app then always goes on at once.
 */
const defer = setImmediate;
const deferring = !(
  Object.hasOwn(defer, 'clock') || (defer as { _isMockFunction?: unknown })._isMockFunction === true
);

/** How many check phases of the event loop have passed (counted only while requests come). */
let turn = 0;
let counting = false;
function currentTurn(): number {
  if (!counting) {
    counting = true;
    defer(() => {
      turn++;
      counting = false;
    });
  }
  return turn;
}

/**
 * Puts a request or response that Express re-prototyped into V8's dictionary mode.
 *
 * Express gives every `req` and `res` its app's prototype (`Object.setPrototypeOf`). V8 then
 * caches no map transitions for them: every property Express, the router, the app or
 * sessionflow adds to one request makes a new map and copies its descriptors, and every
 * property read on it misses the inline caches, whose maps no other request shares. An
 * object in dictionary mode keeps its properties in a hash table instead: an addition is an
 * insertion, and a read is found without a new map's lookup. Deleting a property that is not
 * the last one added is what moves an object there (V8 has no other switch for it); both
 * properties are this module's own symbols, and neither is left behind.
 *
 * Measured with `npm run bench:instr` (main-thread instructions per request, Express 5 on
 * node 20): Express + MemoryStore 609k -> 405k and Express + PostgresStore 683k -> 461k;
 * plain Express 565k, and 365k with the same move alone (bench/README.md, thirtieth pass).
 */
const SHAPE_A = Symbol('sessionflow.shape.a');
const SHAPE_B = Symbol('sessionflow.shape.b');
function toDictionaryMode(o: object): void {
  const r = o as Record<symbol, unknown>;
  r[SHAPE_A] = 0;
  r[SHAPE_B] = 0;
  delete r[SHAPE_A];
  delete r[SHAPE_B];
}

export interface ExpressSessionOptions {
  /** Renders the response when the session cannot be saved after the handler ran. @default plain-text 503 */
  onCommitError?: CommitErrorHandler;
  /**
   * The express-session surface on `req.session` (`regenerate`/`save`/`destroy`/`reload` with
   * callbacks, `req.session.passport`, `req.sessionID`) that Passport and other express-session
   * middleware use; see {@link ExpressSessionCompat}. `false` leaves `req.session` bare.
   * @default {} (on)
   */
  expressSession?: ExpressCompatOptions | false;
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
  const installCompat =
    options.expressSession === false
      ? undefined
      : compatInstaller(options.expressSession ?? {}, (req) => m.load(requestInfo(m, req)));
  const proceed = (
    req: Request,
    res: Response,
    next: NextFunction,
    info: RequestInfo,
    s: Session<object>,
  ) => {
    try {
      req.session = s as Session;
      installCompat?.(req, s);
      commitBeforeHeaders(m, s, info, res, options.onCommitError);
    } catch (err) {
      next(err);
      return;
    }
    next();
  };
  // Not an async function: Express 5 would then also watch the promise it returns.
  return function sessionflow(req: Request, res: Response, next: NextFunction): void {
    toDictionaryMode(req);
    toDictionaryMode(res);
    const info = requestInfo(m, req);
    const at = deferring ? currentTurn() : -1;
    m.load(info).then((s) => {
      // A load answered in the turn that read the request (memory store, a file kept open): the
      // rest of the app runs in this turn's check phase, not in the microtask right after the
      // socket's data callback. Under load, the requests read in one turn then go through
      // Express one after another, which costs Express less CPU per request than interleaving
      // each with the parser (docs/architecture.md). A load that waited for I/O goes on at once.
      if (turn === at) defer(proceed, req, res, next, info, s);
      else proceed(req, res, next, info, s);
    }, next);
  };
}

export interface CsrfMiddlewareOptions extends CsrfPolicy {
  /** The app's public origin(s) for the Origin check; derived from the Host header if absent. */
  origin?: string | string[];
}

/**
 * Rejects unsafe requests (POST, PUT, PATCH, DELETE…) without the session's CSRF token with a
 * 403 {@link CsrfError} (a SessionError of code CSRF_INVALID) whose `reason` says which check
 * failed — `token-missing`, `token-mismatch`, `origin-mismatch`, `origin-missing` or
 * `cross-site` — as the `malicious_csrf` audit event does; its message stays generic. Mount it
 * after `session()` and after the body parser that reads your forms.
 */
export function csrfProtection<D extends object>(
  manager: SessionManager<D>,
  options: CsrfMiddlewareOptions = {},
): RequestHandler {
  const m: AnyManager = manager;
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
    next(csrfGuard(m, s, req, requestInfo(m, req), options));
  };
}
