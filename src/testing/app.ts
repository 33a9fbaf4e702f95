/**
 * Helpers for application tests: start a request with a session that already holds given data,
 * read back what a handler stored, and move a fake clock through the idle and absolute timeouts.
 * Everything goes through the real `SessionManager` and its store (no back door into the record
 * format), so a seeded session is exactly what a browser would hold after the same requests.
 * No test runner is imported: the helpers work under vitest, jest, `node:test` or mocha alike.
 */
import type { RequestInfo, SessionManager } from '../manager.js';
import type { ResolvedOptions } from '../options.js';
import type { Session } from '../session.js';

/** The client facts the manager records and, with `binding`, checks on every request. */
export interface TestClient {
  /**
   * The client address the app will see (e.g. '127.0.0.1' for a local server or Fastify's
   * `inject`). Needed only when the manager binds sessions to the address (`binding.ip`).
   */
  ip?: string;
  /** The User-Agent the app will see. Needed only with `binding.userAgent`. */
  userAgent?: string;
}

/** What a seeded session holds. */
export interface SessionSeed<D extends object> extends TestClient {
  /** Values to store, as `session.set(key, value)` would. */
  data?: Partial<D>;
  /** Log the session in as this user first (`session.login(userId)`: a new ID, timers started). */
  userId?: string | number;
  /** Anything else to do to the session before it is stored: flash messages, bags, ... */
  prepare?: (session: Session<D>) => unknown;
}

/** A session stored through the manager, ready to be sent with a request. */
export interface SeededSession {
  /** The `Cookie` header value (`name=value`) that names the session. */
  cookie: string;
  /** The session's record id (`session.id`), e.g. for `manager.revoke(id)`. */
  id: string;
  /** The session's CSRF token, for the test's unsafe requests (form field or `x-csrf-token`). */
  csrfToken: string;
}

/** The typed data and identity of the session a cookie names, as read through the manager. */
export interface SessionSnapshot<D extends object> {
  /** True when the cookies name a live session; false with none, a cleared one or an ended one. */
  active: boolean;
  /** The record id of the live session. */
  id: string | undefined;
  /** The logged-in user, if any. */
  userId: string | undefined;
  /** When the user logged in (ms on the manager's clock). */
  authenticatedAt: number | undefined;
  /** Every top-level value (bags, flash and internal fields excluded); `{}` when not active. */
  data: Partial<D>;
  /**
   * Why the session the cookie named has ended, when it has: 'idle', 'absolute', 'regenerated',
   * 'renewed', 'binding:ip', ... (`session.endedReason`).
   */
  endedReason: string | undefined;
}

/**
 * Anything a test holds cookies in, as one value: a `Cookie` header (`a=1; b=2`), a `Set-Cookie`
 * header, the `set-cookie` list of a node/supertest/light-my-request response, a Fetch `Headers`
 * or `Response`, a light-my-request or supertest response, or a list of those (later ones win,
 * as in a browser). `undefined` and `null` stand for no cookies.
 */
export type CookieSource =
  | string
  | null
  | undefined
  | readonly CookieSource[]
  | SetCookieHeaders
  | { readonly headers: SetCookieHeaders };

/** Headers a `Set-Cookie` list can be read from: Fetch `Headers`, or node-style header records. */
export type SetCookieHeaders = { getSetCookie(): string[] } | { readonly [name: string]: unknown };

/**
 * The manager of the app under test: one of data type `D`, or any manager when the test names the
 * data type itself (`sessionCookie<MyData>(manager, ...)` on a manager built without one).
 */
export type ManagerOf<D extends object> = SessionManager<D> | SessionManager<object>;

/**
 * Any manager; what the timeout helpers read from it.
 *
 * @inline
 */
type TimeoutSource = {
  readonly options: Pick<ResolvedOptions, 'idleTimeout' | 'anonymousIdleTimeout' | 'absoluteTimeout' | 'now'>;
};

/** The helpers' own requests come in over HTTPS, so a `Secure` session cookie is issued and read. */
const info = (client: TestClient, cookieHeader?: string): RequestInfo => ({
  secure: true,
  cookieHeader,
  ip: client.ip,
  userAgent: client.userAgent,
});

/**
 * Stores a session holding `seed` through the manager (one load and one commit, as the request
 * of a real handler) and gives its cookie, id and CSRF token.
 *
 * @example
 * const { cookie, csrfToken } = await seedSession(manager, { userId: 'alice', data: { cart: ['x'] } });
 */
export async function seedSession<D extends object>(
  manager: ManagerOf<D>,
  seed: SessionSeed<D>,
): Promise<SeededSession> {
  const m = manager as SessionManager<D>;
  const req = info(seed);
  const session = await m.load(req);
  if (seed.userId !== undefined) await session.login(seed.userId);
  for (const [key, value] of Object.entries(seed.data ?? {}) as [keyof D & string, D[keyof D & string]][]) {
    if (value !== undefined) session.set(key, value);
  }
  await seed.prepare?.(session);
  const csrfToken = session.csrf.token();
  const out = await m.commit(session, req);
  const cookie = sessionCookieOf(manager.options.cookie.name, out.setCookie);
  if (cookie === undefined) {
    throw new Error(
      'seedSession: the seed left nothing to store (a session that holds nothing is never stored): ' +
        'give it `data` or a `userId`, and do not destroy the session in `prepare`.',
    );
  }
  return { cookie, id: session.id, csrfToken };
}

/**
 * The `Cookie` header value (`name=value`) of a session stored with `seed` through the manager:
 * send it with supertest (`.set('Cookie', cookie)`), fetch, light-my-request or Fastify's
 * `inject` (`headers: { cookie }`). The type argument checks the data's keys and value types.
 *
 * A `Secure` cookie (the manager's default) is accepted by the app only on HTTPS requests: for
 * tests over plain HTTP, build the test's manager with `cookie: { secure: false }`.
 *
 * @example
 * const cookie = await sessionCookie<ShopData>(manager, { data: { cart: ['x'] }, userId: 'alice' });
 * const res = await app.inject({ url: '/cart', headers: { cookie } });
 */
export async function sessionCookie<D extends object>(
  manager: ManagerOf<D>,
  seed: SessionSeed<D>,
): Promise<string> {
  return (await seedSession(manager, seed)).cookie;
}

/**
 * Reads the session that `cookies` name through the manager, as the app's next request would see
 * it: pass the cookie the test sent and the response (or its `set-cookie` headers), so that a new
 * cookie from a login or a cleared one from a logout is taken into account. Only a load: nothing is
 * written and the idle timer is not refreshed. A session that has ended is deleted by the read, as
 * by any request, so the app's own next request no longer sees its `endedReason`.
 *
 * @example
 * const s = await readSession<ShopData>(manager, [cookie, res]);
 * expect(s.data.cart).toEqual(['x', 'y']);
 */
export async function readSession<D extends object>(
  manager: ManagerOf<D>,
  cookies: CookieSource,
  client: TestClient = {},
): Promise<SessionSnapshot<D>> {
  const session = await (manager as SessionManager<D>).load(info(client, cookieHeader(cookies)));
  if (session.isNew) {
    return {
      active: false,
      id: undefined,
      userId: undefined,
      authenticatedAt: undefined,
      data: {},
      endedReason: session.endedReason,
    };
  }
  const data: Record<string, unknown> = {};
  for (const key of session.keys()) data[key] = session.get(key as keyof D & string);
  return {
    active: true,
    id: session.id,
    userId: session.userId,
    authenticatedAt: session.authenticatedAt,
    data: data as Partial<D>,
    endedReason: undefined,
  };
}

const ATTRIBUTES = new Set([
  'path',
  'domain',
  'expires',
  'max-age',
  'secure',
  'httponly',
  'samesite',
  'partitioned',
  'priority',
]);

/** One `Set-Cookie` header: its cookie, and whether it deletes that cookie. */
function parseSetCookie(header: string): { name: string; value: string; cleared: boolean } | undefined {
  const [pair = '', ...attributes] = header.split(';');
  const eq = pair.indexOf('=');
  if (eq <= 0) return undefined;
  let cleared = false;
  for (const attribute of attributes) {
    const at = attribute.indexOf('=');
    const name = (at < 0 ? attribute : attribute.slice(0, at)).trim().toLowerCase();
    const value = at < 0 ? '' : attribute.slice(at + 1).trim();
    if (name === 'max-age' && Number(value) <= 0) cleared = true;
    if (name === 'expires' && Date.parse(value) <= Date.now()) cleared = true;
  }
  return { name: pair.slice(0, eq).trim(), value: pair.slice(eq + 1).trim(), cleared };
}

/** True for a `Set-Cookie` header (a pair followed by attributes), false for a `Cookie` header. */
function isSetCookie(header: string): boolean {
  const parts = header.split(';');
  return parts.slice(1).some((p) => ATTRIBUTES.has(p.split('=')[0]!.trim().toLowerCase()));
}

/** Adds the cookies of one source to the jar, in order. */
function collect(source: CookieSource, jar: Map<string, string>, asSetCookie = false): void {
  if (source === undefined || source === null) return;
  if (typeof source === 'string') {
    if (asSetCookie || isSetCookie(source)) {
      const cookie = parseSetCookie(source);
      if (!cookie) return;
      jar.delete(cookie.name); // re-set cookies go last, as in a browser's Cookie header
      if (!cookie.cleared) jar.set(cookie.name, cookie.value);
      return;
    }
    for (const pair of source.split(';')) {
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq).trim();
      jar.delete(name);
      jar.set(name, pair.slice(eq + 1).trim());
    }
    return;
  }
  if (Array.isArray(source)) {
    for (const item of source as readonly CookieSource[]) collect(item, jar, asSetCookie);
    return;
  }
  const headers = source as SetCookieHeaders | { headers: SetCookieHeaders };
  if (typeof (headers as { getSetCookie?: unknown }).getSetCookie === 'function') {
    for (const h of (headers as { getSetCookie(): string[] }).getSetCookie()) collect(h, jar, true);
    return;
  }
  const nested = (headers as { headers?: unknown }).headers;
  if (nested !== null && typeof nested === 'object') {
    collect(nested as SetCookieHeaders, jar);
    return;
  }
  const record = headers as { readonly [name: string]: unknown };
  for (const [name, value] of Object.entries(record)) {
    if (name.toLowerCase() !== 'set-cookie') continue;
    if (typeof value === 'string') collect(value, jar, true);
    else if (Array.isArray(value)) for (const v of value) if (typeof v === 'string') collect(v, jar, true);
  }
}

/**
 * The `Cookie` header a browser would send after the given cookies and responses: later sources
 * replace a cookie of the same name, and a `Set-Cookie` with `Max-Age=0` (or an `Expires` in the
 * past) removes it. `undefined` when no cookie is left. Chains the requests of a test:
 *
 * @example
 * cookie = cookieHeader(cookie, res); // after each response
 */
export function cookieHeader(...sources: CookieSource[]): string | undefined {
  const jar = new Map<string, string>();
  collect(sources, jar);
  if (jar.size === 0) return undefined;
  return [...jar].map(([name, value]) => `${name}=${value}`).join('; ');
}

/** The `name=value` of the session cookie among `Set-Cookie` headers, unless it was cleared. */
function sessionCookieOf(name: string, setCookie: readonly string[]): string | undefined {
  for (const header of setCookie) {
    const cookie = parseSetCookie(header);
    if (cookie?.name === name && !cookie.cleared) return `${cookie.name}=${cookie.value}`;
  }
  return undefined;
}

/**
 * A clock the test moves by hand. Give `clock.now` to the manager (`new SessionManager({ now:
 * clock.now })`, and to a `MemoryStore` or `FileStore` if you want their expiry on it too); then
 * `advance` time instead of waiting. It starts at the real current time unless told otherwise,
 * so stores that keep their own clock agree with it at the start.
 *
 * @example
 * const clock = new TestClock();
 * const manager = new SessionManager({ secret, store: new MemoryStore(), now: clock.now });
 * clock.advancePastIdleTimeout(manager); // 30 minutes later: the session has expired
 */
export class TestClock {
  #time: number;

  constructor(start: number | Date = Date.now()) {
    this.#time = TestClock.#check(typeof start === 'number' ? start : start.getTime(), 'start');
  }

  static #check(ms: number, what: string): number {
    if (!Number.isFinite(ms))
      throw new TypeError(`TestClock: ${what} must be a finite number of milliseconds.`);
    return ms;
  }

  /** The current time in milliseconds; a bound function to pass as the `now` option. */
  readonly now = (): number => this.#time;

  /** The current time in milliseconds. */
  get time(): number {
    return this.#time;
  }

  /** Moves the clock forward by `ms` milliseconds; returns the new time. */
  advance(ms: number): number {
    TestClock.#check(ms, 'advance(ms)');
    if (ms < 0) throw new RangeError('TestClock: advance(ms) cannot go back in time; use set() for that.');
    this.#time += ms;
    return this.#time;
  }

  /** Sets the clock to `time`. */
  set(time: number | Date): void {
    this.#time = TestClock.#check(typeof time === 'number' ? time : time.getTime(), 'set(time)');
  }

  /**
   * Moves the clock forward by the manager's `idleTimeout` (or, with `anonymous`, its
   * `anonymousIdleTimeout`): a session last used now is dead at the new time. Returns the
   * milliseconds advanced. Throws if the manager does not run on this clock.
   */
  advancePastIdleTimeout(manager: TimeoutSource, options: { anonymous?: boolean } = {}): number {
    const o = this.#optionsOf(manager, 'advancePastIdleTimeout');
    const ms = options.anonymous ? o.anonymousIdleTimeout : o.idleTimeout;
    this.advance(ms);
    return ms;
  }

  /**
   * Moves the clock forward by the manager's `absoluteTimeout`: a session created or logged in to
   * now is dead at the new time, however active. Returns the milliseconds advanced. To show that
   * activity does not extend a session, use {@link advanceWhileActive} instead.
   */
  advancePastAbsoluteTimeout(manager: TimeoutSource): number {
    const ms = this.#optionsOf(manager, 'advancePastAbsoluteTimeout').absoluteTimeout;
    this.advance(ms);
    return ms;
  }

  /**
   * Moves the clock forward by `ms` in steps of at most `step` (by default half the manager's
   * idle timeout, so an active session never idles out), awaiting `activity()` after each step:
   * a user who keeps clicking. Pass the manager's `absoluteTimeout` to reach its absolute
   * deadline while active.
   *
   * @example
   * await clock.advanceWhileActive(manager, manager.options.absoluteTimeout, () => get('/me'));
   */
  async advanceWhileActive(
    manager: TimeoutSource,
    ms: number,
    activity: () => unknown,
    step: number = Math.floor(this.#optionsOf(manager, 'advanceWhileActive').idleTimeout / 2),
  ): Promise<void> {
    TestClock.#check(ms, 'advanceWhileActive(ms)');
    if (!(step > 0)) throw new RangeError('TestClock: advanceWhileActive needs a step above 0 ms.');
    for (let left = ms; left > 0; left -= step) {
      this.advance(Math.min(step, left));
      await activity();
    }
  }

  #optionsOf(manager: TimeoutSource, caller: string): TimeoutSource['options'] {
    if (manager.options.now !== this.now) {
      throw new Error(
        `TestClock.${caller}: this manager does not run on this clock; create it with \`now: clock.now\`.`,
      );
    }
    return manager.options;
  }
}
