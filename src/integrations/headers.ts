import proxyAddr from 'proxy-addr';
import { SessionError } from '../errors.js';
import { CsrfError, type CsrfPolicy, csrfDecision } from '../features/csrf.js';
import type { CommitOutcome, RequestInfo, SessionManager } from '../manager.js';
import type { ResolvedOptions } from '../options.js';
import { type Session, stateOf } from '../session.js';

/** The minimal header API every integration's response offers (node, Fetch, Fastify). */
export interface HeaderTarget {
  append(name: string, value: string): void;
  set(name: string, value: string): void;
  has(name: string): boolean;
}

/**
 * Writes the headers a commit asks for: the session cookies, `Clear-Site-Data` on logout, and
 * `Cache-Control: no-store` on responses that carry a session cookie (always) or show session
 * state or an authenticated user (unless the app chose its own caching).
 */
export function writeSessionHeaders(
  target: HeaderTarget,
  out: CommitOutcome,
  session: Session<object>,
  info?: RequestInfo,
): void {
  const local = info === undefined ? undefined : transportOf(info)?.localHttp;
  for (const cookie of out.setCookie)
    target.append('Set-Cookie', local ? toPlainSetCookie(cookie, local) : cookie);
  if (out.clearSiteData) target.set('Clear-Site-Data', out.clearSiteData);
  if (out.setCookie.length > 0) target.set('Cache-Control', 'no-store');
  else if ((out.noStore || session.userId !== undefined) && !target.has('Cache-Control')) {
    target.set('Cache-Control', 'no-store');
  }
}

// ---- the request's transport: trusted proxies, and `cookie.secure: 'auto'` ---------------------

/** What an integration knows about a request's transport, whatever the framework. */
export interface RequestFacts {
  /** Address of the direct peer (the TCP connection), if the runtime knows it. */
  peer: string | undefined;
  /** The connection itself is TLS (for the Fetch API: the URL's scheme is https). */
  encrypted: boolean;
  /** A request header by lower-case name (the first value of a repeated one). */
  header(name: string): string | undefined;
  /**
   * The host the request was sent to (Host header, or the URL's `host`), for `secure: 'auto'`;
   * parsed into a host name only when that setting needs it.
   */
  host: string | undefined;
  /**
   * What the framework concluded from its own trust-proxy setting, when the app configured one
   * (Express `trust proxy`, Fastify `trustProxy`), so that the session sees the client the app
   * sees in `req.ip`.
   */
  framework?: { secure: boolean; ip: string | undefined } | undefined;
  /** The connection the request came over, where the runtime has one (see `RequestInfo`). */
  connection?: object | undefined;
}

/** Cookie names as the manager knows them, and as sent on a `localHttp` request. */
interface LocalNames {
  /** Configured name → plain name (`__Host-id` → `id`, `__Host-id-pre` → `id-pre`). */
  plain: Map<string, string>;
}

interface Transport {
  /** The request really came over HTTPS (directly or from a trusted proxy). */
  secure: boolean;
  /** Served under `cookie.secure: 'auto'` without Secure (plain HTTP to this machine). */
  localHttp: LocalNames | undefined;
  /** Forwarding headers were ignored because the peer address was not known. */
  peerUnknown: boolean;
}

/** The transport facts ride on the RequestInfo itself (a WeakMap entry per request costs GC time). */
const TRANSPORT = Symbol('sessionflow.transport');
type InfoWithTransport = RequestInfo & { [TRANSPORT]?: Transport };
const transportOf = (info: RequestInfo): Transport | undefined => (info as InfoWithTransport)[TRANSPORT];

/** The request's real scheme: `info.secure` is true on a `secure: 'auto'` localhost request too. */
export function transportSecure(info: RequestInfo): boolean {
  return transportOf(info)?.secure ?? info.secure;
}

/** The request is served under `cookie.secure: 'auto'` as plain local HTTP. */
export function isLocalHttp(info: RequestInfo): boolean {
  return transportOf(info)?.localHttp !== undefined;
}

const FORWARDING_HEADERS = [
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'forwarded',
  'x-real-ip',
];

function isLoopbackAddress(address: string): boolean {
  const a = address.startsWith('::ffff:') ? address.slice(7) : address;
  return a === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a);
}

function isLoopbackHostname(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/\.$/, '');
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (h === '[::1]' || h === '::1') return true;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * A plain-HTTP request made directly to this machine: a loopback host name, a loopback peer
 * (when known) and no proxy header of any kind, so a proxy on the same machine forwarding
 * production traffic does not qualify.
 */
function isDirectLocal(facts: RequestFacts): boolean {
  const hostname = hostnameOf(facts.host);
  if (hostname === undefined || !isLoopbackHostname(hostname)) return false;
  if (facts.peer !== undefined && facts.peer !== '' && !isLoopbackAddress(facts.peer)) return false;
  return FORWARDING_HEADERS.every((name) => facts.header(name) === undefined);
}

/** The host name of a Host header value (`localhost:3000` → `localhost`, `[::1]:80` → `[::1]`). */
export function hostnameOf(host: string | undefined): string | undefined {
  if (!host) return undefined;
  try {
    return new URL(`http://${host}`).hostname;
  } catch {
    return undefined;
  }
}

/** Settings that trust the nearest hop whatever its address (`true`, a hop count). */
function trustsAnyPeer(o: ResolvedOptions): boolean {
  const setting = o.trustProxySetting;
  return setting === true || (typeof setting === 'number' && setting > 0);
}

/**
 * Facts about a request as the manager needs them. `X-Forwarded-Proto` and `X-Forwarded-For`
 * count only as `trustProxy` says (Express semantics, resolved by `proxy-addr`): the scheme
 * when the direct peer is trusted, the client address as the first untrusted hop from the
 * right. A framework's own decision (`facts.framework`) is taken as is. With
 * `cookie.secure: 'auto'`, a plain-HTTP request made directly to this machine is served with
 * plain (non-Secure, unprefixed) cookies: the manager is told the request is secure and sees
 * the cookies under their configured names, and {@link writeSessionHeaders} (given the same
 * `RequestInfo`) writes them back plain.
 */
export function resolveRequest(manager: SessionManager<object>, facts: RequestFacts): RequestInfo {
  const o = manager.options;
  let secure = facts.encrypted;
  let ip = facts.peer || undefined;
  let peerUnknown = false;
  if (facts.framework) {
    secure = facts.framework.secure;
    ip = facts.framework.ip || undefined;
  } else if (o.trustProxySetting !== undefined && o.trustProxySetting !== false) {
    const known = facts.peer !== undefined && facts.peer !== '';
    const peer = facts.peer ?? '';
    if (known ? o.trustProxy(peer, 0) : trustsAnyPeer(o)) {
      const proto = facts.header('x-forwarded-proto');
      if (proto) secure = proto.split(',')[0]!.trim().toLowerCase() === 'https';
      const xff = facts.header('x-forwarded-for');
      if (xff) {
        const req = { socket: { remoteAddress: peer }, headers: { 'x-forwarded-for': xff } };
        const addrs = proxyAddr.all(req as unknown as Parameters<typeof proxyAddr.all>[0], o.trustProxy);
        ip = addrs[addrs.length - 1] || undefined;
      }
    } else if (!known) {
      peerUnknown =
        facts.header('x-forwarded-for') !== undefined || facts.header('x-forwarded-proto') !== undefined;
    }
  }
  const cookieHeader = facts.header('cookie');
  const userAgent = facts.header('user-agent');
  let localHttp: LocalNames | undefined;
  if (!secure && o.cookie.secure && o.cookie.localHttp && isDirectLocal(facts)) {
    localHttp = localNames(o.cookie.name);
  }
  const info: InfoWithTransport = {
    cookieHeader: localHttp && cookieHeader ? fromPlainCookies(cookieHeader, localHttp) : cookieHeader,
    secure: secure || localHttp !== undefined,
    ip,
    userAgent,
    connection: facts.connection,
    [TRANSPORT]: { secure, localHttp, peerUnknown },
  };
  return info;
}

/**
 * Warnings an integration can only give once the session is loaded (they go through the
 * manager's `warn`, once): forwarding headers ignored for want of the peer address.
 */
export function warnAboutTransport(info: RequestInfo, session: Session<object>): void {
  if (transportOf(info)?.peerUnknown) {
    stateOf(session).driver.warn(
      'X-Forwarded-For/X-Forwarded-Proto were ignored: trustProxy lists addresses (or is a function) but the integration was not given the peer address; pass it (e.g. peerAddress for the Fetch integration), or use trustProxy: true or a hop count where the platform always sits behind its proxy.',
    );
  }
}

const localNameCache = new Map<string, LocalNames>();

function localNames(name: string): LocalNames {
  let names = localNameCache.get(name);
  if (!names) {
    const plain = name.replace(/^__(Host|Secure)-/, '');
    names = {
      plain: new Map([
        [name, plain],
        [`${name}-pre`, `${plain}-pre`],
      ]),
    };
    localNameCache.set(name, names);
  }
  return names;
}

/**
 * The request's `Cookie` header with the plain cookies under their configured names (the MAC
 * covers the configured name). A configured-name cookie is dropped when its plain one is present.
 */
function fromPlainCookies(header: string, names: LocalNames): string {
  const parts = header.split(';').map((p) => p.trim());
  const nameOf = (p: string) => {
    const eq = p.indexOf('=');
    return eq < 0 ? p : p.slice(0, eq).trim();
  };
  const present = new Set(parts.map(nameOf));
  const out: string[] = [];
  for (const part of parts) {
    const n = nameOf(part);
    let renamed = false;
    for (const [configured, plain] of names.plain) {
      if (configured === plain) continue;
      if (n === plain) {
        out.push(`${configured}${part.slice(part.indexOf('='))}`);
        renamed = true;
      } else if (n === configured && present.has(plain)) {
        renamed = true; // the plain cookie of this run wins over a Secure one from an HTTPS run
      }
    }
    if (!renamed && part !== '') out.push(part);
  }
  return out.join('; ');
}

/** A `Set-Cookie` for a `localHttp` response: plain name, no Secure, no Partitioned, SameSite=None → Lax. */
function toPlainSetCookie(setCookie: string, names: LocalNames): string {
  const parts = setCookie.split('; ');
  const first = parts[0]!;
  const eq = first.indexOf('=');
  const plain = names.plain.get(first.slice(0, eq));
  const head = plain === undefined ? first : `${plain}${first.slice(eq)}`;
  const attributes = parts
    .slice(1)
    .filter((a) => !/^(secure|partitioned)$/i.test(a))
    .map((a) => (/^samesite=none$/i.test(a) ? 'SameSite=Lax' : a));
  return [head, ...attributes].join('; ');
}

// ---- the CSRF guard every integration uses ----------------------------------------------------

/** What the CSRF guard reads from a request. */
export interface CsrfGuardRequest {
  method: string;
  /** Lower-case header names. */
  headers: Record<string, string | string[] | undefined>;
  body?: unknown;
}

/**
 * Runs the CSRF check for one request: undefined when it may proceed, otherwise the 403
 * {@link CsrfError} to fail it with, after reporting `malicious_csrf` with the reason (never the
 * token). A token refusal on plain HTTP while the cookie is Secure — the session cookie could
 * never be set, the usual cause of "every POST is 403 on http://localhost" — is also warned
 * about, once, with the fix.
 */
export function csrfGuard(
  manager: SessionManager<object>,
  session: Session<object>,
  req: CsrfGuardRequest,
  info: RequestInfo,
  options: CsrfPolicy & { origin?: string | string[] | undefined } = {},
): CsrfError | undefined {
  const secure = transportSecure(info);
  const decision = csrfDecision(
    session.csrf,
    {
      method: req.method,
      headers: req.headers,
      body: req.body,
      secure,
      ...(options.origin === undefined ? {} : { origin: options.origin }),
    },
    manager.options.csrf,
    options,
  );
  if (decision === 'ok') return undefined;
  manager.reportCsrfFailure(session, decision);
  if (decision.startsWith('token-') && !secure && manager.options.cookie.secure && !isLocalHttp(info)) {
    stateOf(session).driver.warn(
      `an unsafe request on plain HTTP was refused by the CSRF check (${decision}) while cookie.secure is on: no session cookie can be set over HTTP, so no form token can match. For development on http://localhost set cookie: { secure: 'auto' } (it applies outside NODE_ENV=production); behind a TLS proxy set trustProxy (or the framework's trust proxy setting).`,
    );
  }
  return new CsrfError(decision);
}

/**
 * The one rule for what an error response may show, for every integration: the message of a
 * SessionError marked `expose` (a 503 outage, a 403 CSRF refusal, a 409 session limit), and
 * nothing of anything else (a bug's message, a driver's error, which may name hosts or SQL).
 */
export function errorResponseText(err: unknown): { status: number; text: string } {
  if (err instanceof SessionError && err.expose) {
    const label = err.status === 503 ? 'Service Unavailable' : err.status === 403 ? 'Forbidden' : 'Error';
    return { status: err.status, text: `${label}: ${err.message}\n` };
  }
  const status = err instanceof SessionError ? err.status : 500;
  return { status, text: status === 503 ? 'Service Unavailable\n' : 'Internal Server Error\n' };
}
