import { type IncomingMessage, type OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { SessionError } from '../errors.js';
import type { CommitOutcome, RequestInfo, SessionManager } from '../manager.js';
import { type Session, stateOf } from '../session.js';
import { errorResponseText, type RequestFacts, resolveRequest, writeSessionHeaders } from './headers.js';

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
    host: firstHeader(headers.host),
    framework,
    connection: req.socket,
  };
}

type HeaderArg =
  | OutgoingHttpHeaders
  | readonly (string | number | readonly string[])[]
  | readonly (readonly [string, string | number | readonly string[]])[];

/** True if `name` is `lower` (a lower-case header name) in any case. */
function sameName(name: unknown, lower: string): boolean {
  return typeof name === 'string' && name.length === lower.length && name.toLowerCase() === lower;
}

/**
 * The headers an app passed to `writeHead` (any of node's shapes) as one flat list of name,
 * value, with the session's headers merged in by the rules of {@link writeSessionHeaders}: what
 * they set replaces the app's header of that name, a cookie is appended to the app's cookies.
 * node takes the list as it would the app's own headers: a response with no `setHeader` before
 * goes on node's fast path (nothing copied into the response's header map); one with some has
 * each header named in the list replaced, as `writeHead` does with the app's headers. A
 * `Set-Cookie` set before and not passed to `writeHead` keeps its values: the session's cookies
 * are appended to it on the response instead.
 */
function headWith(
  res: ServerResponse,
  headers: HeaderArg | null | undefined,
  out: CommitOutcome,
  session: Session<object>,
  info: RequestInfo | undefined,
): unknown[] {
  const flat: unknown[] = [];
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) {
      for (const pair of headers as readonly (readonly [unknown, unknown])[]) flat.push(pair[0], pair[1]);
    } else {
      for (let i = 0; i + 1 < headers.length; i += 2) flat.push(String(headers[i]), headers[i + 1]);
    }
  } else if (headers !== null && headers !== undefined) {
    const record = headers as OutgoingHttpHeaders;
    for (const name of Object.keys(record)) {
      const value = record[name];
      if (value !== undefined) flat.push(name, value);
    }
  }
  const passed = (lower: string): boolean => {
    for (let i = 0; i < flat.length; i += 2) if (sameName(flat[i], lower)) return true;
    return false;
  };
  writeSessionHeaders(
    {
      append: (name, value) => {
        if (res.hasHeader(name) && !passed(name.toLowerCase())) res.appendHeader(name, value);
        else flat.push(name, value);
      },
      set: (name, value) => {
        const lower = name.toLowerCase();
        let kept = 0;
        for (let i = 0; i < flat.length; i += 2) {
          if (sameName(flat[i], lower)) continue;
          flat[kept++] = flat[i];
          flat[kept++] = flat[i + 1];
        }
        flat.length = kept;
        flat.push(name, value);
      },
      has: (name) => res.hasHeader(name) || passed(name.toLowerCase()),
    },
    out,
    session,
    info,
  );
  return flat;
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
type Method = (this: ServerResponse, ...args: unknown[]) => unknown;
type Methods = Record<HeldMethod, Method>;
const HELD: readonly HeldMethod[] = ['writeHead', 'write', 'end', 'flushHeaders'];
/** What a held call returns to the app, since the real call happens later. */
function heldResult(method: HeldMethod, res: ServerResponse): unknown {
  if (method === 'write') return true;
  return method === 'flushHeaders' ? undefined : res;
}

/**
 * One of `methods` by name. The four are read by name, not as `methods[method]`: a lookup by a
 * key that varies takes V8's generic path on every call (about 150 instructions each).
 */
function methodIn(methods: Methods, method: HeldMethod): Method {
  switch (method) {
    case 'writeHead':
      return methods.writeHead;
    case 'write':
      return methods.write;
    case 'end':
      return methods.end;
    default:
      return methods.flushHeaders;
  }
}

/** The hold of a plain response while it is held (an own symbol property of the response). */
const HOLD = Symbol('sessionflow.hold');
/** The methods a plain response had as own properties before the hold (wrapped by someone). */
const WRAPPED = Symbol('sessionflow.wrapped');
type Holdable = ServerResponse & { [HOLD]?: ResponseHold | undefined; [WRAPPED]?: Methods };
/** Holds of responses with a framework's prototype (no own properties added to those). */
const frameworkHolds = new WeakMap<ServerResponse, ResponseHold>();
const prototypeOriginals = new WeakMap<object, Methods>();

function methodsOf(target: object): Methods {
  const t = target as unknown as Methods;
  return { writeHead: t.writeHead, write: t.write, end: t.end, flushHeaders: t.flushHeaders };
}

/**
 * The four interceptors, the same functions for every response: a held response's calls go to
 * its hold; a response that is not held (released, or another response sharing a framework's
 * prototype) calls the method underneath.
 */
function interceptors(
  holdOf: (res: ServerResponse) => ResponseHold | undefined,
  below: (res: ServerResponse) => Methods,
): Methods {
  const make = (method: HeldMethod): Method =>
    function (this: ServerResponse, ...args: unknown[]) {
      const hold = holdOf(this);
      return hold ? hold.call(method, args) : below(this)[method].apply(this, args);
    };
  return {
    writeHead: make('writeHead'),
    write: make('write'),
    end: make('end'),
    flushHeaders: make('flushHeaders'),
  };
}

let nodeMethods = methodsOf(ServerResponse.prototype);
/** node's methods as they are now (read again if something replaced them on the prototype). */
function currentNodeMethods(): Methods {
  const p = ServerResponse.prototype as unknown as Methods;
  const n = nodeMethods;
  if (
    p.end !== n.end ||
    p.write !== n.write ||
    p.writeHead !== n.writeHead ||
    p.flushHeaders !== n.flushHeaders
  )
    nodeMethods = methodsOf(p);
  return nodeMethods;
}

/** Own-property interceptors of plain node:http responses. */
const ownInterceptors = interceptors(
  (res) => (res as Holdable)[HOLD],
  (res) => (res as Holdable)[WRAPPED] ?? currentNodeMethods(),
);

/**
 * Routes the four head-and-body methods of `res` to `hold` until {@link release}, and returns
 * the methods to replay with. A plain node:http response gets four own properties (the same
 * four functions for every response) and its hold under a symbol: no closure per request.
 * Frameworks such as Express give every response a prototype of their own, and adding own
 * properties to such an object takes V8's slow path (~20 µs a request): there the interception
 * is installed once on that prototype, and finds the hold in a WeakMap.
 */
function intercept(res: Holdable, hold: ResponseHold): Methods {
  const proto = Object.getPrototypeOf(res) as object;
  if (proto !== ServerResponse.prototype && !Object.hasOwn(res, 'end')) {
    let originals = prototypeOriginals.get(proto);
    if (!originals) {
      const below = methodsOf(proto);
      originals = below;
      prototypeOriginals.set(proto, below);
      const installed = interceptors(
        (r) => frameworkHolds.get(r),
        () => below,
      );
      for (const method of HELD) {
        Object.defineProperty(proto, method, {
          configurable: true,
          writable: true,
          value: installed[method],
        });
      }
    }
    frameworkHolds.set(res, hold);
    return originals;
  }
  // An app or another library may have wrapped a method of this very response already: those
  // wrappers are what the replay calls. (An own property that is node's method itself changes
  // nothing.) Each method is read and written by name: see `methodIn`.
  let originals = currentNodeMethods();
  const own = res as unknown as Methods;
  if (
    own.writeHead !== originals.writeHead ||
    own.write !== originals.write ||
    own.end !== originals.end ||
    own.flushHeaders !== originals.flushHeaders
  ) {
    originals = methodsOf(res);
    res[WRAPPED] = originals;
  }
  res[HOLD] = hold;
  const mine = ownInterceptors;
  own.writeHead = mine.writeHead;
  own.write = mine.write;
  own.end = mine.end;
  own.flushHeaders = mine.flushHeaders;
  return originals;
}

/** Ends the hold: calls go to the methods underneath again. */
function release(res: Holdable, originals: Methods): void {
  // A plain response's hold is its own property; a framework response's is in the WeakMap.
  if (res[HOLD] === undefined) {
    frameworkHolds.delete(res);
    return;
  }
  res[HOLD] = undefined;
  // Ours are put back to what was there; a wrapper installed over ours meanwhile stays, and
  // reaches the original through our interceptor, which no longer holds.
  const own = res as unknown as Methods;
  const mine = ownInterceptors;
  if (own.writeHead === mine.writeHead) own.writeHead = originals.writeHead;
  if (own.write === mine.write) own.write = originals.write;
  if (own.end === mine.end) own.end = originals.end;
  if (own.flushHeaders === mine.flushHeaders) own.flushHeaders = originals.flushHeaders;
}

/**
 * Holds the response's head until the session is committed, so that the session is stored
 * before the client sees a redirect (login -> dashboard) and the Set-Cookie goes out with the
 * head. `writeHead`, `write`, `end` and `flushHeaders` are queued from the first of them until
 * the commit resolves, then replayed in order. If the commit fails, the app's response is
 * replaced by a 503 without any session cookie.
 */
class ResponseHold {
  readonly #manager: AnyManager;
  readonly #session: Session<object>;
  readonly #info: RequestInfo;
  readonly #res: Holdable;
  readonly #onError: CommitErrorHandler;
  readonly #queue: { method: HeldMethod; args: unknown[] }[] = [];
  #originals: Methods | undefined;
  #started = false;

  constructor(
    manager: AnyManager,
    session: Session<object>,
    info: RequestInfo,
    res: ServerResponse,
    onError: CommitErrorHandler,
  ) {
    this.#manager = manager;
    this.#session = session;
    this.#info = info;
    this.#res = res;
    this.#onError = onError;
  }

  /** Starts holding; a change made after the head went out cannot send a cookie any more. */
  hold(): void {
    const res = this.#res;
    if (res.headersSent) {
      // Not committed (the commit starts when the head goes out), and the app is told so.
      const state = stateOf(this.#session);
      state.responseStarted = true;
      state.lateChange();
      return;
    }
    this.#originals = intercept(res, this);
  }

  /** A held call: queued, and the commit starts with the first one. */
  call(method: HeldMethod, args: unknown[]): unknown {
    this.#queue.push({ method, args });
    if (!this.#started) {
      this.#started = true;
      stateOf(this.#session).responseStarted = true;
      this.#manager.commit(this.#session, this.#info).then(
        (out) => this.#replay(out),
        (err: unknown) => this.#fail(err),
      );
    }
    return heldResult(method, this.#res);
  }

  #replay(out: CommitOutcome): void {
    const res = this.#res;
    const originals = this.#originals!;
    release(res, originals);
    let headApplied = false;
    const applyOutcomeOnce = () => {
      headApplied = true;
      if (!res.headersSent) applyOutcome(res, out, this.#session, this.#info);
    };
    for (const { method, args } of this.#queue) {
      if (method === 'writeHead' && !headApplied && !res.headersSent) {
        // The app's headers and the session's go to node's writeHead together (see headWith).
        headApplied = true;
        const [status, reasonOrHeaders, maybeHeaders] = args as [number, unknown, unknown];
        const named = typeof reasonOrHeaders === 'string';
        // node's own reading: after a reason phrase the third argument, else the third or the second.
        const headers = (named ? maybeHeaders : (maybeHeaders ?? reasonOrHeaders)) as HeaderArg | undefined;
        const merged = headWith(res, headers, out, this.#session, this.#info);
        if (named) originals.writeHead.call(res, status, reasonOrHeaders, merged);
        else originals.writeHead.call(res, status, merged);
        continue;
      }
      if (!headApplied) applyOutcomeOnce();
      methodIn(originals, method).apply(res, args);
    }
  }

  #fail(err: unknown): void {
    const res = this.#res;
    release(res, this.#originals!);
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    const error =
      err instanceof SessionError ? err : new SessionError('STORE_UNAVAILABLE', String(err), { cause: err });
    res.emit('sessionflow:commit-error', error);
    this.#onError(error, res);
  }
}

// ---- Cache-Control for a stored session's read --------------------------------------------

/** True if headers passed to `writeHead` (any of node's shapes) name Cache-Control. */
function namesCacheControl(headers: HeaderArg | null | undefined): boolean {
  if (headers === null || headers === undefined) return false;
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) {
      for (const pair of headers as readonly (readonly [unknown, unknown])[])
        if (sameName(pair[0], 'cache-control')) return true;
      return false;
    }
    for (let i = 0; i < headers.length; i += 2) if (sameName(headers[i], 'cache-control')) return true;
    return false;
  }
  for (const name of Object.keys(headers)) if (sameName(name, 'cache-control')) return true;
  return false;
}

/**
 * Headers passed to `writeHead`, with `Cache-Control: no-store` added: a new array (an object
 * becomes a flat one, which node takes as the same headers), never a change to the app's own.
 */
function plusNoStore(headers: HeaderArg | null | undefined): HeaderArg {
  if (headers === null || headers === undefined) return ['Cache-Control', 'no-store'];
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) return [...headers, ['Cache-Control', 'no-store']];
    return [...headers, 'Cache-Control', 'no-store'];
  }
  const flat: unknown[] = [];
  const record = headers as OutgoingHttpHeaders;
  for (const name of Object.keys(record)) flat.push(name, record[name]);
  flat.push('Cache-Control', 'no-store');
  return flat as HeaderArg;
}

/**
 * `writeHead` of a plain node:http response whose stored session is only read: it adds
 * `Cache-Control: no-store` unless the app set or passed a Cache-Control of its own, then calls
 * node's. `end`, `write` and `flushHeaders` reach it too (node's implicit head calls
 * `this.writeHead`). Passing the header along with the app's (a copy, in the app's shape)
 * instead of a `setHeader` at load time keeps node on its fast path for a response whose
 * headers all go to `writeHead` (bench/README.md, twenty-seventh pass).
 */
function noStoreWriteHead(this: ServerResponse, ...args: unknown[]): unknown {
  const below = ServerResponse.prototype.writeHead as Method;
  const named = typeof args[1] === 'string';
  // node's own reading: the headers are the third argument after a reason phrase, else the
  // third or, failing that, the second.
  const headers = (named ? args[2] : (args[2] ?? args[1])) as HeaderArg | null | undefined;
  let result: unknown;
  if (this.hasHeader('cache-control') || namesCacheControl(headers)) result = below.apply(this, args);
  else if (named) result = below.call(this, args[0], args[1], plusNoStore(headers));
  else result = below.call(this, args[0], plusNoStore(headers));
  // Once the head went out; a writeHead that threw (a bad status) is still ours to retry.
  const own = this as unknown as Methods;
  if (own.writeHead === noStoreWriteHead) own.writeHead = below;
  return result;
}

/**
 * Arranges `Cache-Control: no-store` on the head of a response whose stored session is only
 * read: with {@link noStoreWriteHead} on a plain node:http response. A response of a framework's prototype
 * (Express: own properties on such objects take V8's slow path) or whose `writeHead` an app
 * wrapped gets the header with `setHeader` now instead.
 */
function noStoreAtHead(res: ServerResponse): void {
  if (Object.getPrototypeOf(res) === ServerResponse.prototype && !Object.hasOwn(res, 'writeHead'))
    (res as unknown as Methods).writeHead = noStoreWriteHead;
  else if (!res.hasHeader('Cache-Control')) res.setHeader('Cache-Control', 'no-store');
}

/** Removes {@link noStoreWriteHead}, if the response has it, before a hold. */
function withoutNoStoreAtHead(res: ServerResponse): void {
  const own = res as unknown as Partial<Methods>;
  if (own.writeHead === noStoreWriteHead) delete own.writeHead;
}

/**
 * Holds the response's head until the session is committed (see `ResponseHold`): from
 * now on, or, for a session whose commit would do nothing yet, from its first change.
 */
export function commitBeforeHeaders(
  manager: AnyManager,
  session: Session<object>,
  info: RequestInfo,
  res: ServerResponse,
  onError: CommitErrorHandler = defaultCommitError,
): void {
  const hold = () => {
    // A read that turns into a write: the hold's commit writes Cache-Control itself.
    withoutNoStoreAtHead(res);
    new ResponseHold(manager, session, info, res, onError).hold();
  };
  // A session whose commit would do nothing yet (a visitor with no record, or a stored session
  // with no touch or renewal due) needs one only once it changes: hold the response from then
  // on, so a request that never writes pays neither the hold nor a commit.
  const state = stateOf(session);
  if (!session.isNew && !state.quiet(manager.options.now())) {
    hold();
    return;
  }
  // A stored session's responses show session state: not cacheable, unless the app says
  // otherwise with a Cache-Control of its own, as a commit would write.
  if (!session.isNew) noStoreAtHead(res);
  state.onFirstChange = hold;
  // A visitor's pre-session CSRF cookie needs no store: written at once, no hold needed.
  if (session.isNew)
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
}
