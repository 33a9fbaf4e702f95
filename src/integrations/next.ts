import { parseSetCookie } from 'cookie';
import { SessionError } from '../errors.js';
import type { CsrfError, CsrfPolicy } from '../features/csrf.js';
import type { RequestInfo, SessionManager } from '../manager.js';
import { type Session, stateOf } from '../session.js';
import { withSessionHeaders } from './fetch.js';
import {
  csrfGuard,
  errorResponseText,
  type HeaderTarget,
  isLocalHttp,
  resolveRequest,
  transportSecure,
  warnAboutTransport,
  writeSessionHeaders,
} from './headers.js';

export { CsrfError, type CsrfRefusal } from '../features/csrf.js';

/** The options of a cookie set through Next's `cookies().set` (its `ResponseCookie` fields). */
export interface NextCookieOptions {
  maxAge?: number;
  expires?: Date;
  domain?: string;
  path?: string;
  httpOnly?: boolean;
  secure?: boolean;
  sameSite?: boolean | 'lax' | 'strict' | 'none';
  partitioned?: boolean;
  priority?: 'low' | 'medium' | 'high';
}

/**
 * What sessionflow uses of the object `cookies()` from `next/headers` resolves to: Next's
 * `ReadonlyRequestCookies` (in Server Components, where `set` throws) or its mutable
 * counterpart (Server Actions, route handlers).
 */
export interface NextCookieStore {
  getAll(): { name: string; value: string }[];
  set(name: string, value: string, options?: NextCookieOptions): unknown;
}

/** What sessionflow uses of the object `headers()` from `next/headers` resolves to. */
export interface NextHeaderStore {
  get(name: string): string | null;
}

/**
 * Where {@link getSession} and {@link commitSession} find the request: by default `cookies()`
 * and `headers()` from `next/headers`. Pass your own (awaited or not) to call them elsewhere,
 * e.g. in a unit test.
 */
export interface NextRequestStores {
  cookies: () => NextCookieStore | Promise<NextCookieStore>;
  headers: () => NextHeaderStore | Promise<NextHeaderStore>;
}

/** Options of {@link withSession}. */
export interface NextSessionOptions {
  /**
   * The CSRF check of unsafe requests (POST, PUT, PATCH, DELETE): Fetch Metadata, `Origin`
   * (or `Referer`) and the session's token in the CSRF header or, for a form post, its field.
   * On by default; `false` turns it off (e.g. for a webhook with its own authentication), an
   * object tunes it (`origin`: the app's origin(s) when Host does not say it).
   */
  csrf?: boolean | (CsrfPolicy & { origin?: string | string[] | undefined });
  /**
   * The response to a refused unsafe request (the session's headers are added to it). By
   * default a 403 with the generic message of every refusal, as text; `error.reason` says which
   * check failed (for the app's logs or a JSON API), never the token.
   */
  onCsrfError?: (error: CsrfError, request: Request) => Response | Promise<Response>;
}

/** Headers that Next itself fills in on every request, from the connection, when absent. */
const LOOPBACK_FOR = /^(::1|::ffff:127\.\d+\.\d+\.\d+|127\.\d+\.\d+\.\d+)$/;

/**
 * A header reader that hides the `X-Forwarded-*` headers Next's own server adds to a request
 * made directly to this machine (the loopback address, the Host header, plain `http`), so that
 * `cookie.secure: 'auto'` recognises `next dev` on http://localhost. Headers a proxy sent are
 * kept, and count only as `trustProxy` says.
 */
function nextHeaderReader(get: (name: string) => string | null): (name: string) => string | undefined {
  const host = get('host') ?? undefined;
  return (name) => {
    const value = get(name) ?? undefined;
    if (value === undefined) return undefined;
    if (name === 'x-forwarded-for' && value.split(',').every((a) => LOOPBACK_FOR.test(a.trim())))
      return undefined;
    if (name === 'x-forwarded-host' && value === host) return undefined;
    if (name === 'x-forwarded-proto' && value === 'http') return undefined;
    return value;
  };
}

/**
 * Facts about a Next.js request, from a route handler's `Request` or from `headers()` (and
 * optionally the cookies as `cookies()` sees them, which include those a Server Action has just
 * set). Next does not tell the app how the connection arrived nor the peer address, so the
 * request counts as HTTPS only through `X-Forwarded-Proto` under `trustProxy` (set
 * `trustProxy: true` behind a TLS proxy or on a platform such as Vercel); under
 * `cookie.secure: 'auto'`, `next dev` on http://localhost gets plain cookies.
 */
export function nextRequestInfo(
  manager: SessionManager<object>,
  source: Request | NextHeaderStore,
  cookies?: { name: string; value: string }[],
): RequestInfo {
  const headers = source instanceof Request ? source.headers : source;
  const header = nextHeaderReader((name) => headers.get(name));
  const host = header('host') ?? (source instanceof Request ? new URL(source.url).host : undefined);
  const cookieHeader =
    cookies === undefined ? undefined : cookies.map((c) => `${c.name}=${c.value}`).join('; ') || undefined;
  return resolveRequest(manager, {
    peer: undefined,
    encrypted: false,
    header: (name) => (name === 'cookie' && cookies !== undefined ? cookieHeader : header(name)),
    host,
  });
}

function warnAboutNextTransport(
  manager: SessionManager<object>,
  info: RequestInfo,
  session: Session<object>,
) {
  warnAboutTransport(info, session);
  const name = manager.options.cookie.name;
  if (
    !transportSecure(info) &&
    !isLocalHttp(info) &&
    manager.options.cookie.secure &&
    info.cookieHeader?.includes(`${name}=`)
  ) {
    stateOf(session).driver.warn(
      "a Next.js request is treated as plain HTTP, so the Secure session cookie is ignored: behind a TLS proxy or on a platform (Vercel, …) set trustProxy: true so that X-Forwarded-Proto counts; for next dev on http://localhost set cookie: { secure: 'auto' }.",
    );
  }
}

/** The shared rule (errorResponseText): an exposed SessionError's message, nothing else's. */
function errorResponse(err: SessionError): Response {
  const { status, text } = errorResponseText(err);
  return new Response(text, {
    status,
    headers: { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' },
  });
}

async function formBody(request: Request): Promise<Record<string, unknown> | undefined> {
  const type = request.headers.get('content-type') ?? '';
  if (!/^(application\/x-www-form-urlencoded|multipart\/form-data)/i.test(type)) return undefined;
  try {
    const form = await request.clone().formData();
    const body: Record<string, unknown> = {};
    for (const [k, v] of form) if (typeof v === 'string' && !(k in body)) body[k] = v;
    return body;
  } catch {
    return undefined;
  }
}

/**
 * Wraps a Next.js App Router route handler (`app/**​/route.ts`) so it receives the request's
 * session, typed with the manager's data type. Unsafe requests pass the CSRF check first (403
 * otherwise); the session is committed before the Response is returned and its headers
 * (`Set-Cookie`, `Cache-Control`, `Clear-Site-Data`) are set on it. A store outage answers 503.
 *
 * @example
 * // app/api/me/route.ts
 * export const GET = withSession(sessions, async (_request, session) =>
 *   Response.json({ user: session.userId ?? null }),
 * );
 */
export function withSession<D extends object, C = unknown>(
  manager: SessionManager<D>,
  handler: (request: Request, session: Session<D>, context: C) => Response | Promise<Response>,
  options: NextSessionOptions = {},
): (request: Request, context: C) => Promise<Response> {
  const m = manager as unknown as SessionManager<object>;
  return async (request, context) => {
    await optOutOfPrerendering();
    const info = nextRequestInfo(m, request);
    try {
      const session = await manager.load(info);
      warnAboutNextTransport(m, info, session);
      if (options.csrf !== false) {
        const policy = typeof options.csrf === 'object' ? options.csrf : {};
        const headers: Record<string, string> = {};
        request.headers.forEach((value, name) => {
          headers[name] = value;
        });
        const refused = csrfGuard(
          m,
          session,
          { method: request.method, headers, body: await formBody(request) },
          info,
          policy,
        );
        if (refused) {
          const response = options.onCsrfError
            ? await options.onCsrfError(refused, request)
            : errorResponse(refused);
          const out = await manager.commit(session, info);
          return withSessionHeaders(response, out, session, info);
        }
      }
      const response = await handler(request, session, context);
      stateOf(session).responseStarted = true;
      const out = await manager.commit(session, info);
      return withSessionHeaders(response, out, session, info);
    } catch (err) {
      if (!(err instanceof SessionError) || err.status < 500) throw err;
      return errorResponse(err);
    }
  };
}

let nextHeaders: Promise<NextRequestStores | undefined> | undefined;

/** `next/headers`, or undefined where Next is not installed. */
function loadNextHeaders(): Promise<NextRequestStores | undefined> {
  nextHeaders ??= import('next/headers.js').then(
    (mod) => mod as unknown as NextRequestStores,
    () => undefined,
  );
  return nextHeaders;
}

/**
 * Tells Next the route handler reads the request, as `headers()` does: Next would otherwise
 * prerender a GET handler at build time and serve one session (its cookie, its CSRF token) to
 * every visitor. Outside a Next request (a unit test calling the handler) it does nothing.
 */
async function optOutOfPrerendering(): Promise<void> {
  const next = await loadNextHeaders();
  if (!next) return;
  try {
    await next.headers();
  } catch (err) {
    if (err instanceof Error && /outside a request scope/i.test(err.message)) return;
    throw err;
  }
}

async function nextStores(stores: NextRequestStores | undefined): Promise<{
  cookies: NextCookieStore;
  headers: NextHeaderStore;
}> {
  let source = stores;
  if (!source) {
    source = await loadNextHeaders();
    if (!source) throw new Error('sessionflow/next: next/headers could not be loaded; is next installed?');
  }
  return { cookies: await source.cookies(), headers: await source.headers() };
}

/** The RequestInfo each session loaded by getSession was loaded with. */
const loadedWith = new WeakMap<object, RequestInfo>();

/**
 * The session of the current request in a Server Action or a Server Component, through
 * `cookies()` and `headers()` from `next/headers`, typed with the manager's data type. In a
 * Server Action, call {@link commitSession} once done; a Server Component can read but not
 * write (Next forbids setting cookies while rendering). Next checks the `Origin` of every
 * Server Action against the host itself, which is the CSRF protection of actions. Throws a 503
 * SessionError if the store fails.
 *
 * @example
 * 'use server';
 * export async function addToCart(item: string) {
 *   const session = await getSession(sessions);
 *   session.set('cart', [...session.get('cart', []), item]);
 *   await commitSession(sessions, session);
 * }
 */
export async function getSession<D extends object>(
  manager: SessionManager<D>,
  stores?: NextRequestStores,
): Promise<Session<D>> {
  const m = manager as unknown as SessionManager<object>;
  const { cookies, headers } = await nextStores(stores);
  const info = nextRequestInfo(m, headers, cookies.getAll());
  const session = await manager.load(info);
  warnAboutNextTransport(m, info, session);
  loadedWith.set(session, info);
  return session;
}

/** Collects the headers of a commit: the Set-Cookie lines (plain ones on local HTTP). */
class Collected implements HeaderTarget {
  readonly setCookie: string[] = [];
  append(name: string, value: string): void {
    if (name.toLowerCase() === 'set-cookie') this.setCookie.push(value);
  }
  set(): void {}
  has(): boolean {
    return true;
  }
}

/**
 * Saves what a Server Action changed in a session from {@link getSession} and sets its cookie
 * through `cookies().set`. Only cookies reach the browser this way: Server Action responses
 * are never cached by Next, and `Clear-Site-Data` (sent on logout by route handlers) is not
 * sent. Server Components cannot set cookies (Next forbids it while rendering): there, a
 * commit that needs a cookie (a new session, a login, a logout, a renewed ID) throws an Error
 * that says so, after the store has saved the change; commit in a Server Action or a route
 * handler instead. Throws a 503 SessionError if the store fails.
 */
export async function commitSession<D extends object>(
  manager: SessionManager<D>,
  session: Session<D>,
  stores?: NextRequestStores,
): Promise<void> {
  const info = loadedWith.get(session);
  if (!info) throw new TypeError('commitSession: the session was not loaded by getSession');
  const { cookies } = await nextStores(stores);
  stateOf(session).responseStarted = true;
  const out = await manager.commit(session, info);
  const collected = new Collected();
  writeSessionHeaders(collected, out, session as Session<object>, info);
  for (const line of collected.setCookie) {
    const { name, value, ...attributes } = parseSetCookie(line);
    const options: NextCookieOptions = {};
    for (const [k, v] of Object.entries(attributes)) if (v !== undefined) Object.assign(options, { [k]: v });
    try {
      cookies.set(name, value ?? '', options);
    } catch (cause) {
      throw new Error(
        'sessionflow/next: commitSession cannot set the session cookie here. Next.js lets only Server Actions and route handlers set cookies, not Server Components (which can read a session with getSession but not change it): move the write into a Server Action or a route handler.',
        { cause },
      );
    }
  }
}

/**
 * Wraps a Server Action so that it receives the request's session as its first argument and
 * commits it when the action returns (also when it throws, e.g. Next's `redirect()`).
 *
 * @example
 * export const logout = withActionSession(sessions, async (session) => {
 *   await session.logout();
 *   redirect('/');
 * });
 */
export function withActionSession<D extends object, A extends unknown[], R>(
  manager: SessionManager<D>,
  action: (session: Session<D>, ...args: A) => R | Promise<R>,
  stores?: NextRequestStores,
): (...args: A) => Promise<R> {
  return async (...args) => {
    const session = await getSession(manager, stores);
    try {
      return await action(session, ...args);
    } finally {
      await commitSession(manager, session, stores);
    }
  };
}
