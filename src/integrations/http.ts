import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { SessionError } from '../errors.js';
import type { CommitOutcome, RequestInfo, SessionManager } from '../manager.js';
import type { Session } from '../session.js';

type AnyManager = SessionManager<Record<string, unknown>>;

function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/**
 * Facts about a node:http request. `X-Forwarded-*` headers count only when the direct peer is
 * a trusted proxy; the client address is then the rightmost untrusted hop of X-Forwarded-For.
 */
export function requestInfo(manager: AnyManager, req: IncomingMessage): RequestInfo {
  const peer = req.socket.remoteAddress ?? '';
  const trust = manager.options.trustProxy;
  let secure = (req.socket as TLSSocket).encrypted === true;
  let ip: string | undefined = peer || undefined;
  if (peer && trust(peer)) {
    const proto = firstHeader(req.headers['x-forwarded-proto'])?.split(',')[0]?.trim().toLowerCase();
    if (proto) secure = proto === 'https';
    const hops = (firstHeader(req.headers['x-forwarded-for']) ?? '')
      .split(',')
      .map((h) => h.trim())
      .filter(Boolean);
    for (let i = hops.length - 1; i >= 0; i--) {
      ip = hops[i]!;
      if (!trust(ip)) break;
    }
  }
  return { cookieHeader: req.headers.cookie, secure, ip, userAgent: firstHeader(req.headers['user-agent']) };
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

/** Adds the session's headers to a response whose headers have not gone out yet. */
export function applyOutcome(
  res: ServerResponse,
  out: CommitOutcome,
  session: Session<Record<string, unknown>>,
): void {
  for (const cookie of out.setCookie) res.appendHeader('Set-Cookie', cookie);
  if (out.clearSiteData) res.setHeader('Clear-Site-Data', out.clearSiteData);
  // Responses that carry a session cookie or show an authenticated user must not be cached.
  if (out.setCookie.length > 0) res.setHeader('Cache-Control', 'no-store');
  else if ((out.noStore || session.userId !== undefined) && !res.hasHeader('Cache-Control')) {
    res.setHeader('Cache-Control', 'no-store');
  }
}

/** Renders the error response when the session could not be committed. */
export type CommitErrorHandler = (error: SessionError, res: ServerResponse) => void;

const defaultCommitError: CommitErrorHandler = (error, res) => {
  // A refusal meant for the user (409 too many sessions) says why; a failure does not leak details.
  const body =
    error.status === 503
      ? 'Service Unavailable: the session could not be saved. Please retry.\n'
      : error.expose
        ? `${error.message}\n`
        : 'Internal Server Error: the session could not be saved.\n';
  res.writeHead(error.status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
  });
  res.end(body);
};

/**
 * Holds the response's head until the session is committed, so that the session is stored
 * before the client sees a redirect (login -> dashboard) and the Set-Cookie goes out with the
 * head. `writeHead`, `write`, `end` and `flushHeaders` are queued from the first of them until
 * the commit resolves, then replayed in order. If the commit fails, the app's response is
 * replaced by a 503 without any session cookie.
 */
export function commitBeforeHeaders(
  manager: AnyManager,
  session: Session<Record<string, unknown>>,
  info: RequestInfo,
  res: ServerResponse,
  onError: CommitErrorHandler = defaultCommitError,
): void {
  const original = {
    writeHead: res.writeHead,
    write: res.write,
    end: res.end,
    flushHeaders: res.flushHeaders,
  };
  const queue: Array<{ method: keyof typeof original; args: unknown[] }> = [];
  let started = false;

  const restore = () => {
    res.writeHead = original.writeHead;
    res.write = original.write;
    res.end = original.end;
    res.flushHeaders = original.flushHeaders;
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
        if (typeof reasonOrHeaders === 'string')
          (original.writeHead as (s: number, r: string) => unknown).call(res, status, reasonOrHeaders);
        else original.writeHead.call(res, status);
        continue;
      }
      if (!headApplied) {
        headApplied = true;
        applyPending();
      }
      (original[method] as (...a: unknown[]) => unknown).apply(res, args);
    }
  };

  let pending: CommitOutcome | undefined;
  const applyPending = () => {
    if (pending && !res.headersSent) applyOutcome(res, pending, session);
  };

  const start = () => {
    if (started) return;
    started = true;
    manager.commit(session, info).then(
      (out) => {
        pending = out;
        restore();
        replay();
      },
      (err: unknown) => {
        restore();
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

  const defer =
    (method: keyof typeof original, result: (args: unknown[]) => unknown) =>
    (...args: unknown[]) => {
      queue.push({ method, args });
      start();
      return result(args);
    };
  res.writeHead = defer('writeHead', () => res) as typeof res.writeHead;
  res.flushHeaders = defer('flushHeaders', () => undefined) as typeof res.flushHeaders;
  res.write = defer('write', () => true) as typeof res.write;
  res.end = defer('end', () => res) as typeof res.end;
}
