import { type IncomingMessage, type OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { SessionError } from '../errors.js';
import type { CommitOutcome, RequestInfo, SessionManager } from '../manager.js';
import { type Session, stateOf } from '../session.js';
import {
  errorResponseText,
  hostnameOf,
  type RequestFacts,
  resolveRequest,
  writeSessionHeaders,
} from './headers.js';

/** A manager of any session data type. */
type AnyManager = SessionManager<object>;

function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** The parts of an Express app a request can reach (`req.app`), read without importing Express. */
interface ExpressLike {
  app?: { get?: (setting: string) => unknown; settings?: Record<string, unknown> };
  protocol?: string;
  ip?: string;
}

/**
 * Express's own decision about a request's scheme and client (`req.protocol`, `req.ip`), when
 * the app configured `trust proxy` (any value, `false` included, set with `app.set`); undefined
 * for a plain node:http request or an app that left the setting alone.
 */
function expressForwarding(req: IncomingMessage): { secure: boolean; ip: string | undefined } | undefined {
  const r = req as IncomingMessage & ExpressLike;
  const app = r.app;
  if (!app || typeof app.get !== 'function' || !app.settings) return undefined;
  // Express marks its own default with this key (express 4 and 5); a mounted sub-app inherits
  // its parent's setting through `get`.
  const setByApp =
    app.settings['@@symbol:trust_proxy_default'] === false || (app.get('trust proxy') ?? false) !== false;
  if (!setByApp) return undefined;
  return { secure: r.protocol === 'https', ip: r.ip };
}

/**
 * Facts about a node:http request. `X-Forwarded-*` headers count only as `trustProxy` says
 * (Express's semantics, through `proxy-addr`): the scheme when the direct peer is trusted, the
 * client address as the first untrusted hop from the right. On an Express app that set
 * `trust proxy`, Express's own `req.protocol` and `req.ip` are used instead, so the session sees
 * the client the app sees. Under `cookie.secure: 'auto'`, see `resolveRequest` (headers.ts).
 */
export function requestInfo(manager: AnyManager, req: IncomingMessage): RequestInfo {
  return resolveRequest(manager, nodeRequestFacts(req, expressForwarding(req)));
}

/** What {@link resolveRequest} needs from a node:http request. */
export function nodeRequestFacts(
  req: IncomingMessage,
  framework?: { secure: boolean; ip: string | undefined },
): RequestFacts {
  const headers = req.headers;
  return {
    peer: req.socket.remoteAddress,
    encrypted: (req.socket as TLSSocket).encrypted === true,
    header: (name) => firstHeader(headers[name]),
    hostname: hostnameOf(firstHeader(headers.host)),
    framework,
  };
}

type HeaderArg =
  | OutgoingHttpHeaders
  | readonly (string | number | readonly string[])[]
  | readonly (readonly [string, string | number | readonly string[]])[];

/** Applies the headers an app passed to `writeHead` with `setHeader`, in all of node's shapes. */
function applyWriteHeadHeaders(res: ServerResponse, headers: HeaderArg | undefined): void {
  if (!headers) return;
  if (Array.isArray(headers)) {
    const pairs: [string, unknown][] = [];
    if (headers.length > 0 && Array.isArray(headers[0])) {
      for (const pair of headers as readonly (readonly [string, unknown])[]) pairs.push([pair[0], pair[1]]);
    } else {
      for (let i = 0; i + 1 < headers.length; i += 2) pairs.push([String(headers[i]), headers[i + 1]]);
    }
    for (const [name] of pairs) res.removeHeader(name);
    for (const [name, value] of pairs) res.appendHeader(name, value as string | readonly string[]);
    return;
  }
  for (const [name, value] of Object.entries(headers)) if (value !== undefined) res.setHeader(name, value);
}

/**
 * Adds the session's headers to a response whose headers have not gone out yet. Pass the
 * request's `info` (from {@link requestInfo}) so that `cookie.secure: 'auto'` can send plain
 * cookies on http://localhost.
 */
export function applyOutcome(
  res: ServerResponse,
  out: CommitOutcome,
  session: Session<object>,
  info?: RequestInfo,
): void {
  writeSessionHeaders(
    {
      append: (name, value) => res.appendHeader(name, value),
      set: (name, value) => res.setHeader(name, value),
      has: (name) => res.hasHeader(name),
    },
    out,
    session,
    info,
  );
}

/**
 * Renders the error response when the session could not be committed.
 *
 * @inline
 */
export type CommitErrorHandler = (error: SessionError, res: ServerResponse) => void;

const defaultCommitError: CommitErrorHandler = (error, res) => {
  // The shared rule: a refusal meant for the user (409 too many sessions) or an outage says what
  // the library's own message says; anything else leaks no details.
  const { text: body } = errorResponseText(error);
  res.writeHead(error.status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
  });
  res.end(body);
};

type HeldMethod = 'writeHead' | 'write' | 'end' | 'flushHeaders';
type Methods = Record<HeldMethod, (...args: unknown[]) => unknown>;
const HELD: readonly HeldMethod[] = ['writeHead', 'write', 'end', 'flushHeaders'];
/** What a held call returns to the app, since the real call happens later. */
const HELD_RESULT: Record<HeldMethod, (res: ServerResponse) => unknown> = {
  writeHead: (res) => res,
  write: () => true,
  end: (res) => res,
  flushHeaders: () => undefined,
};

/** Per-response hold of the responses whose prototype carries the interception (see below). */
const holds = new WeakMap<ServerResponse, (method: HeldMethod, args: unknown[]) => unknown>();
const prototypeOriginals = new WeakMap<object, Methods>();

function methodsOf(target: object): Methods {
  const t = target as unknown as Methods;
  return { writeHead: t.writeHead, write: t.write, end: t.end, flushHeaders: t.flushHeaders };
}

/**
 * Routes the four head-and-body methods of `res` to `hold` until the returned release function
 * is called, and gives the methods to replay with. A plain node:http response gets own
 * properties. Frameworks such as Express give every response a prototype of their own, and
 * adding own properties to such an object takes V8's slow path (~20 µs a request): there the
 * interception is installed once on that prototype and finds the hold in a WeakMap.
 */
function intercept(
  res: ServerResponse,
  hold: (method: HeldMethod, args: unknown[]) => unknown,
): { originals: Methods; release: () => void } {
  const proto = Object.getPrototypeOf(res) as object;
  if (proto !== ServerResponse.prototype && !Object.hasOwn(res, 'end')) {
    let originals = prototypeOriginals.get(proto);
    if (!originals) {
      const below = methodsOf(proto);
      originals = below;
      prototypeOriginals.set(proto, below);
      for (const method of HELD) {
        Object.defineProperty(proto, method, {
          configurable: true,
          writable: true,
          value(this: ServerResponse, ...args: unknown[]) {
            const held = holds.get(this);
            return held ? held(method, args) : below[method].apply(this, args);
          },
        });
      }
    }
    holds.set(res, hold);
    return { originals, release: () => holds.delete(res) };
  }
  const originals = methodsOf(res);
  const own = res as unknown as Methods;
  for (const method of HELD) own[method] = (...args: unknown[]) => hold(method, args);
  return {
    originals,
    release: () => {
      for (const method of HELD) own[method] = originals[method];
    },
  };
}

/**
 * Holds the response's head until the session is committed, so that the session is stored
 * before the client sees a redirect (login -> dashboard) and the Set-Cookie goes out with the
 * head. `writeHead`, `write`, `end` and `flushHeaders` are queued from the first of them until
 * the commit resolves, then replayed in order. If the commit fails, the app's response is
 * replaced by a 503 without any session cookie.
 */
export function commitBeforeHeaders(
  manager: AnyManager,
  session: Session<object>,
  info: RequestInfo,
  res: ServerResponse,
  onError: CommitErrorHandler = defaultCommitError,
): void {
  const queue: Array<{ method: HeldMethod; args: unknown[] }> = [];
  let started = false;
  let pending: CommitOutcome | undefined;
  const applyPending = () => {
    if (pending && !res.headersSent) applyOutcome(res, pending, session, info);
  };

  const replay = () => {
    let headApplied = false;
    for (const { method, args } of queue) {
      if (method === 'writeHead' && !headApplied) {
        headApplied = true;
        const [status, reasonOrHeaders, maybeHeaders] = args as [number, unknown, unknown];
        const headers = (typeof reasonOrHeaders === 'string' ? maybeHeaders : reasonOrHeaders) as
          | HeaderArg
          | undefined;
        applyWriteHeadHeaders(res, headers);
        applyPending();
        if (typeof reasonOrHeaders === 'string') originals.writeHead.call(res, status, reasonOrHeaders);
        else originals.writeHead.call(res, status);
        continue;
      }
      if (!headApplied) {
        headApplied = true;
        applyPending();
      }
      originals[method].apply(res, args);
    }
  };

  const start = () => {
    if (started) return;
    started = true;
    stateOf(session).responseStarted = true;
    manager.commit(session, info).then(
      (out) => {
        pending = out;
        release();
        replay();
      },
      (err: unknown) => {
        release();
        for (const name of res.getHeaderNames()) res.removeHeader(name);
        const error =
          err instanceof SessionError
            ? err
            : new SessionError('STORE_UNAVAILABLE', String(err), { cause: err });
        res.emit('sessionflow:commit-error', error);
        onError(error, res);
      },
    );
  };

  let originals: Methods;
  let release: () => void;
  const hold = () => {
    // A change made after the head went out cannot send a cookie any more: it is not
    // committed (the commit starts when the head goes out), and the app is told so.
    if (res.headersSent) {
      const state = stateOf(session);
      state.responseStarted = true;
      state.lateChange();
      return;
    }
    ({ originals, release } = intercept(res, (method, args) => {
      queue.push({ method, args });
      start();
      return HELD_RESULT[method](res);
    }));
  };
  // A session that has no record yet needs a commit only once it changes: hold the response
  // from then on, so a visitor who never writes pays neither the hold nor a commit.
  if (session.isNew) {
    const state = stateOf(session);
    state.onFirstChange = hold;
    // A visitor's pre-session CSRF cookie needs no store: written at once, no hold needed.
    state.sendNow = (setCookie) => {
      if (res.headersSent || (manager.options.cookie.secure && !info.secure)) return false;
      applyOutcome(
        res,
        { setCookie: setCookie === null ? [] : [setCookie], noStore: true, gone: false },
        session,
        info,
      );
      return true;
    };
  } else hold();
}
