/**
 * Shared fixtures for the library-level and integration suites: a controllable clock, a store
 * wrapper that counts calls and injects faults (it delegates to a real store, it is not a mock),
 * a cookie jar that plays a browser against `manager.load`/`commit`, and a tiny HTTP client.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import {
  type AuditEvent,
  type CommitGuard,
  type CommitOutcome,
  type CommitResult,
  FileStore,
  MemoryStore,
  type RequestInfo,
  type Session,
  type SessionDelta,
  SessionManager,
  type SessionManagerOptions,
  type SessionMeta,
  type SessionStore,
  type SessionSummary,
  type StoredSession,
} from '../../src/index.js';

/** Strong, non-sample secrets (48 random-looking bytes each). */
export const SECRET = 'q9Vb3-kL0pX7rT2mW8zN4cJ6hY1dF5gS0aE3uI9oP2lK7jH4';
export const SECRET_2 = 'Zr8Tn2Qw6Ey4Ui0Op5As9Df3Gh7Jk1Lz6Xc2Vb8Nm4Qa0Ws5';

export const MINUTE = 60_000;
export const HOUR = 60 * MINUTE;

/** `text` with the character at `index` changed (A <-> B): a forged cookie, one character off. */
export function flipAt(text: string, index: number): string {
  return text.slice(0, index) + (text[index] === 'A' ? 'B' : 'A') + text.slice(index + 1);
}

/** A clock tests move by hand, shared by the manager and the store. */
export class Clock {
  t = Date.UTC(2026, 0, 15, 9, 0, 0);
  readonly now = (): number => this.t;
  advance(ms: number): void {
    this.t += ms;
  }
}

export type StoreOp = 'load' | 'create' | 'commit' | 'touch' | 'destroy';

export interface StoreCall {
  op: StoreOp;
  key: string;
  ttl?: number;
  record?: StoredSession;
  delta?: SessionDelta;
  guard?: CommitGuard;
}

/**
 * Delegates to a real store, records every call, and on demand fails an operation or slows
 * every operation down: fault injection around a real backend.
 */
export class InstrumentedStore implements SessionStore {
  readonly calls: StoreCall[] = [];
  readonly failing = new Set<StoreOp>();
  latencyMs = 0;

  constructor(readonly inner: SessionStore = new MemoryStore()) {
    const revokeUser = inner.revokeUser?.bind(inner);
    if (revokeUser) this.revokeUser = revokeUser;
  }

  get capabilities() {
    return this.inner.capabilities;
  }

  count(op: StoreOp): number {
    return this.calls.filter((c) => c.op === op).length;
  }

  ops(): StoreOp[] {
    return this.calls.map((c) => c.op);
  }

  reset(): void {
    this.calls.length = 0;
  }

  async #run<T>(call: StoreCall, fn: () => Promise<T>): Promise<T> {
    this.calls.push(call);
    if (this.latencyMs > 0) await new Promise((r) => setTimeout(r, this.latencyMs));
    if (this.failing.has(call.op)) throw new Error(`injected ${call.op} failure`);
    return fn();
  }

  load(key: string): Promise<StoredSession | null> {
    return this.#run({ op: 'load', key }, () => this.inner.load(key));
  }
  create(key: string, record: StoredSession, ttl: number): Promise<boolean> {
    return this.#run({ op: 'create', key, ttl, record }, () => this.inner.create(key, record, ttl));
  }
  commit(key: string, delta: SessionDelta, ttl: number, guard?: CommitGuard): Promise<CommitResult> {
    return this.#run({ op: 'commit', key, ttl, delta, ...(guard ? { guard } : {}) }, () =>
      this.inner.commit(key, delta, ttl, guard),
    );
  }
  touch(key: string, meta: Partial<SessionMeta>, ttl: number): Promise<'ok' | 'gone'> {
    return this.#run({ op: 'touch', key, ttl }, () =>
      this.inner.touch
        ? this.inner.touch(key, meta, ttl)
        : (this.inner.commit(key, { set: {}, unset: [], meta }, ttl) as Promise<'ok' | 'gone'>),
    );
  }
  /** Present when the inner store has it (stores that revoke without listing). */
  revokeUser?: (userId: string, except?: string) => Promise<void>;
  destroy(key: string): Promise<void> {
    return this.#run({ op: 'destroy', key }, () => this.inner.destroy(key));
  }
  sessionsOf(userId: string): Promise<SessionSummary[]> {
    return this.inner.sessionsOf!(userId);
  }
}

/**
 * A manager whose store (a MemoryStore on `clock` unless `options.store` is given) is wrapped
 * in an InstrumentedStore, with every audit event and warning captured.
 */
export function setup<D extends Record<string, unknown> = Record<string, unknown>>(
  options: Partial<SessionManagerOptions> = {},
  clock = new Clock(),
) {
  const events: AuditEvent[] = [];
  const warnings: string[] = [];
  const store = new InstrumentedStore(options.store ?? new MemoryStore({ now: clock.now }));
  const manager = new SessionManager<D>({
    secret: SECRET,
    now: clock.now,
    audit: (e) => events.push(e),
    warn: (w) => warnings.push(w),
    ...options,
    store,
  });
  return { manager, store, clock, events, warnings };
}

/** Builds a real store on the test's clock. */
export type StoreFactory = (clock: Clock) => Promise<SessionStore>;

/**
 * The real stores a manager-level suite runs over (`describe.each(realStores())`): a MemoryStore
 * and a FileStore, each on the test's clock. Registers, in the calling file, an `afterEach` that
 * removes the FileStore directories of the test.
 */
export function realStores(): [string, StoreFactory][] {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0)) await cleanup();
  });
  return [
    ['MemoryStore', async (clock) => new MemoryStore({ now: clock.now })],
    [
      'FileStore',
      async (clock) => {
        const { dir, cleanup } = await tempDir();
        cleanups.push(cleanup);
        return new FileStore({ dir, now: clock.now, fsync: false });
      },
    ],
  ];
}

/** `setup` over a store from `factory`, the manager and the store sharing a fresh clock. */
export async function setupOver<D extends Record<string, unknown> = Record<string, unknown>>(
  factory: StoreFactory,
  options: Partial<SessionManagerOptions> = {},
) {
  const clock = new Clock();
  return setup<D>({ store: await factory(clock), ...options }, clock);
}

/** Name and value of a Set-Cookie header, and whether it clears the cookie (Max-Age=0). */
export function cookiePair(setCookie: string): { name: string; value: string; cleared: boolean } {
  const pair = setCookie.split(';')[0]!;
  const eq = pair.indexOf('=');
  return {
    name: pair.slice(0, eq),
    value: pair.slice(eq + 1),
    cleared: /;\s*Max-Age=0(;|$)/i.test(setCookie),
  };
}

export interface Exchange<D extends Record<string, unknown>> {
  session: Session<D>;
  out: CommitOutcome;
  /** The session cookie sent in this response, if any. */
  setCookie: string | undefined;
}

/**
 * Plays one browser against a manager at library level: keeps the session cookie between
 * requests the way a browser does (replaced by Set-Cookie, dropped on Max-Age=0).
 */
export class Browser<D extends Record<string, unknown> = Record<string, unknown>> {
  cookie: string | undefined;
  /** The pre-session cookie (CSRF token of a visitor without a stored session), if set. */
  pre: string | undefined;
  info: Omit<RequestInfo, 'cookieHeader'> = {
    secure: true,
    ip: '203.0.113.10',
    userAgent: 'TestBrowser/1.0',
  };

  constructor(public manager: SessionManager<D>) {}

  /** The record id (`session.id`) of the session this browser's cookie points to. */
  get key(): string {
    return this.cookie!.split('.')[0]!;
  }

  /** The Cookie header this browser would send. */
  get cookieHeader(): string | undefined {
    const name = this.manager.options.cookie.name;
    const pairs: string[] = [];
    if (this.cookie !== undefined) pairs.push(`${name}=${this.cookie}`);
    if (this.pre !== undefined) pairs.push(`${name}-pre=${this.pre}`);
    return pairs.length === 0 ? undefined : pairs.join('; ');
  }

  async request(
    handler: (session: Session<D>) => unknown = () => {},
    info: Partial<RequestInfo> = {},
  ): Promise<Exchange<D>> {
    const req: RequestInfo = { ...this.info, cookieHeader: this.cookieHeader, ...info };
    const session = await this.manager.load(req);
    await handler(session);
    const out = await this.manager.commit(session, req);
    const name = this.manager.options.cookie.name;
    const setCookie = out.setCookie.find((c) => cookiePair(c).name === name);
    if (setCookie) {
      const { value, cleared } = cookiePair(setCookie);
      this.cookie = cleared ? undefined : value;
    }
    const pre = out.setCookie.find((c) => cookiePair(c).name === `${name}-pre`);
    if (pre) {
      const { value, cleared } = cookiePair(pre);
      this.pre = cleared ? undefined : value;
    }
    return { session, out, setCookie };
  }
}

/** A temp directory removed by the returned cleanup. */
export async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'sessionflow-lib-'));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Starts `server` on 127.0.0.1, port 0; returns its base URL and a closer. */
export async function listen(server: Server): Promise<{ url: string; close: () => Promise<void> }> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The session cookie pair (`name=value`) of a fetch Response, if one was set and not cleared. */
export function sessionCookieOf(res: Response, name: string): string | undefined {
  for (const header of res.headers.getSetCookie()) {
    const pair = cookiePair(header);
    if (pair.name === name && !pair.cleared) return `${pair.name}=${pair.value}`;
  }
  return undefined;
}

/**
 * Every cookie a fetch Response set and did not clear, as a Cookie header (`a=1; b=2`): the
 * session cookie and, for a visitor shown a form, the pre-session cookie its CSRF token is bound to.
 */
export function cookiesOf(res: Response): string | undefined {
  const pairs = res.headers
    .getSetCookie()
    .map(cookiePair)
    .filter((p) => !p.cleared)
    .map((p) => `${p.name}=${p.value}`);
  return pairs.length === 0 ? undefined : pairs.join('; ');
}
