import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import {
  type AuditEvent,
  escapeHtml,
  type LoginThrottleOptions,
  type Session,
  SessionError,
  SessionManager,
  type SessionStore,
} from '../../src/index.js';
import { csrfProtection, session } from '../../src/integrations/express.js';
import { DeviceRegistry, describeDevice } from './devices.js';
import { MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, type User, UserDirectory } from './users.js';
import {
  type Chrome,
  dashboardPage,
  errorPage,
  flashPage,
  landingPage,
  loginPage,
  type SessionRow,
  sessionsPage,
} from './views.js';

/** How tests and `server.ts` build the demo. */
export interface DemoOptions {
  /** Where sessions live. */
  store: SessionStore;
  /** Signing secret (at least 32 random bytes), or a key ring, newest first. */
  secret: string | readonly string[];
  /** @default the library's (30 minutes) */
  idleTimeout?: number;
  /** @default the library's (12 hours) */
  absoluteTimeout?: number;
  touchInterval?: number;
  /** Receives the library's audit events and the demo's `authn_login_fail`. */
  audit?: (event: AuditEvent) => void;
  /** Operational warnings from the library. @default console.warn */
  warn?: (message: string) => void;
  /** `Secure` session cookie (HTTPS only). @default true */
  secureCookie?: boolean;
  /** Trust `X-Forwarded-Proto`/`-For` from the direct peer (behind a TLS proxy). @default false */
  trustProxy?: boolean;
  /** The public origin(s) accepted in `Origin` on unsafe requests. @default derived from Host */
  origin?: string | string[];
  /** How long `GET /slow` waits before it writes to the session. @default 1000 */
  slowMs?: number;
  /** Clock in milliseconds, shared with the session manager (tests freeze it). @default Date.now */
  now?: () => number;
  /** The user table. @default a fresh copy of the demo users */
  users?: UserDirectory;
  /** How recent a login or re-authentication must be for a sensitive change. @default 300000 (5 minutes) */
  reauthWithinMs?: number;
  /**
   * Failed-login throttling (kept in the session store, so processes sharing it throttle
   * together); `false` turns it off. @default the library's defaults (5 per account, 20 per
   * address, in 15 minutes; then 1 s doubling to 15 min)
   */
  loginThrottle?: LoginThrottleOptions | false;
}

export interface Demo {
  app: Express;
  manager: SessionManager;
  users: UserDirectory;
  /** Device and address per signed-in session, for `/sessions` (in memory: demo only). */
  devices: DeviceRegistry;
}

const REF = /^[A-Za-z0-9_-]{1,32}$/;

/** Error pages of the session pages lead back to the list. */
const SESSIONS_BACK = { back: { href: '/sessions', label: 'Back to your sessions' } };

function field(body: unknown, name: string, max: number): string | undefined {
  if (!body || typeof body !== 'object' || !Object.hasOwn(body, name)) return undefined;
  const value = (body as Record<string, unknown>)[name];
  return typeof value === 'string' && value.length <= max ? value : undefined;
}

/** `amount` from a form (text) or JSON (number); NaN when absent or malformed. */
function amountOf(body: unknown): number {
  const value = body && typeof body === 'object' ? (body as Record<string, unknown>).amount : undefined;
  if (typeof value === 'number') return value;
  return typeof value === 'string' && /^\d{1,7}(\.\d{1,2})?$/.test(value) ? Number(value) : Number.NaN;
}

/** Builds the demo application on a SessionManager configured from `options`. */
export function createApp(options: DemoOptions): Demo {
  const now = options.now ?? Date.now;
  const users = options.users ?? new UserDirectory();
  const slowMs = options.slowMs ?? 1000;
  const reauthWithinMs = options.reauthWithinMs ?? 5 * 60_000;
  const secrets = typeof options.secret === 'string' ? [options.secret] : options.secret;
  const devices = new DeviceRegistry();

  const manager = new SessionManager({
    store: options.store,
    secrets,
    cookie: { secure: options.secureCookie ?? true },
    ...(options.idleTimeout === undefined ? {} : { idleTimeout: options.idleTimeout }),
    ...(options.absoluteTimeout === undefined ? {} : { absoluteTimeout: options.absoluteTimeout }),
    ...(options.touchInterval === undefined ? {} : { touchInterval: options.touchInterval }),
    ...(options.audit ? { audit: options.audit } : {}),
    ...(options.warn ? { warn: options.warn } : {}),
    trustProxy: options.trustProxy ?? false,
    now,
  });

  /** The signed-in user, looked up by the id the session holds (seed §24). */
  const throttle =
    options.loginThrottle === false ? undefined : manager.loginThrottle(options.loginThrottle ?? {});
  const currentUser = (req: Request): User | undefined => users.findUserById(req.session.userId);

  const chromeFor = (req: Request, user: User | undefined): Chrome =>
    user ? { user, csrf: { field: req.session.csrf.tokenKey(), token: req.session.csrf.token() } } : {};

  /** `authn_login_fail` through the library's audit sink (user id when the name was a real user). */
  const auditLoginFail = (req: Request, reason: string, user: User | undefined): void => {
    manager.reportLoginFailure(req.session, user?.id, reason);
  };

  const app = express();
  app.disable('x-powered-by');
  // Pages carry per-session CSRF tokens and are never cached (no-store): validators are useless.
  app.set('etag', false);

  app.use((_req, res, next) => {
    res.setHeader(
      'Content-Security-Policy',
      "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.setHeader('Referrer-Policy', 'same-origin');
    next();
  });

  app.get('/favicon.ico', (_req, res) => {
    res.status(204).end();
  });

  app.use(
    session(manager, {
      onCommitError: (error, res) => {
        const html = errorPage(error.status, {});
        res.writeHead(error.status, {
          'Content-Type': 'text/html; charset=utf-8',
          'Content-Length': Buffer.byteLength(html),
          'Cache-Control': 'no-store',
        });
        res.end(html);
      },
    }),
  );
  app.use(express.urlencoded({ extended: false, limit: '16kb' }));
  app.use(express.json({ limit: '16kb' }));
  app.use(csrfProtection(manager, options.origin === undefined ? {} : { origin: options.origin }));

  // The last address and time of each signed-in session, for /sessions (a Map write; no store access).
  app.use((req, _res, next) => {
    const s = req.session;
    if (s.userId !== undefined) devices.seen(s.id, s.userId, s.client, now());
    next();
  });

  // Landing page: reads the session (a read creates nothing), never writes it.
  app.get('/', (req, res) => {
    const user = currentUser(req);
    res.type('html').send(landingPage(chromeFor(req, user)));
  });

  app.get('/login', (req, res) => {
    if (currentUser(req)) {
      res.redirect(303, '/dashboard');
      return;
    }
    // The token is the login form's CSRF protection; creating it starts the pre-login session.
    const s = req.session;
    res.type('html').send(loginPage(s.flash.output(), { field: s.csrf.tokenKey(), token: s.csrf.token() }));
  });

  app.post('/login', async (req, res) => {
    const s = req.session;
    const username = field(req.body, 'username', 64) ?? '';
    const password = field(req.body, 'password', MAX_PASSWORD_LENGTH) ?? '';
    // Throttled per account and per address before the password is even checked (seed 25.2);
    // an unknown account is throttled exactly like a known one.
    const verdict = throttle ? await throttle.check(username, s.client.ip) : { allowed: true as const };
    if (!verdict.allowed) {
      const seconds = Math.max(1, Math.ceil(verdict.retryAfterMs / 1000));
      const message = `Too many failed sign-in attempts. Try again in ${seconds} second${seconds === 1 ? '' : 's'}.`;
      res.status(429).set('Retry-After', String(seconds));
      res.type('html').send(
        loginPage(`<div class="flash flash-error" role="alert">${escapeHtml(message)}</div>`, {
          field: s.csrf.tokenKey(),
          token: s.csrf.token(),
        }),
      );
      return;
    }
    const { ok, user } = await users.authenticate(username, password);
    if (!ok || !user) {
      await throttle?.failed(username, s.client.ip);
      auditLoginFail(req, user ? 'wrong password' : 'unknown user', user);
      s.flash.error('Wrong username or password.');
      res.redirect(303, '/login');
      return;
    }
    await throttle?.succeeded(username);
    // New ID, pre-login data dropped (flash kept), only the user id stored (seed §11, §24, §27.1).
    await s.login(user.id);
    devices.signedIn(s.id, user.id, s.client, now());
    s.flash.success('Welcome back!');
    res.redirect(303, '/dashboard');
  });

  app.get('/dashboard', (req, res) => {
    const s = req.session;
    const user = currentUser(req);
    if (!user) {
      if (s.endedReason === 'idle' || s.endedReason === 'absolute') {
        s.flash.notice('Your session has expired. Please sign in again.');
      }
      res.redirect(303, '/login');
      return;
    }
    const transfers = Object.entries(s.bag('transfers').all()).map(([ref, value]) => {
      const t = value as { to: string; amount: number };
      return { ref, to: t.to, amount: t.amount };
    });
    const chrome = { ...chromeFor(req, user), user };
    res.type('html').send(
      dashboardPage(chrome, s.flash.output(), {
        authenticatedAt: s.authenticatedAt,
        absoluteTimeout: manager.options.absoluteTimeout,
        idleTimeout: manager.options.idleTimeout,
        transfers,
      }),
    );
  });

  app
    .route('/logout')
    .post(async (req, res) => {
      // Destroys the stored session now; the library expires the cookie and sends Clear-Site-Data.
      devices.forget(req.session.id);
      await req.session.logout();
      res.redirect(303, '/login');
    })
    .all((req, res) => {
      res.setHeader('Allow', 'POST');
      res
        .status(405)
        .type('html')
        .send(errorPage(405, chromeFor(req, currentUser(req))));
    });

  // ---- active sessions: see where you are signed in, sign out other devices -----------------

  const listable = () =>
    manager.store.capabilities.listByUser && typeof manager.store.sessionsOf === 'function';
  /** The store can end a user's other sessions: by listing them, or natively (Memcached). */
  const canSignOutOthers = () => listable() || typeof manager.store.revokeUser === 'function';
  const storeName = manager.store.constructor.name;

  /** The user's live sessions, or null when the store cannot list them. */
  const sessionsOf = async (userId: string) => {
    try {
      return await manager.sessionsOf(userId);
    } catch (err) {
      if (err instanceof SessionError && err.code === 'NOT_SUPPORTED') return null;
      throw err;
    }
  };

  const rowOf = (id: string, lastSeenAt: number, signedInAt: number | undefined, current: boolean) => {
    const seen = devices.get(id);
    const { label, known } = describeDevice(seen?.userAgent);
    const row: SessionRow = {
      id,
      device: label,
      deviceKnown: known,
      userAgent: seen?.userAgent,
      address: seen?.ip,
      // The store's lastSeenAt moves every touchInterval; this process may have seen it since.
      lastSeenAt: Math.max(lastSeenAt, seen?.seenAt ?? 0),
      signedInAt,
      current,
    };
    return row;
  };

  /** Anonymous visitors of the session pages go to the login page (as the dashboard does). */
  const signedInOrRedirect = (req: Request, res: Response): User | undefined => {
    const user = currentUser(req);
    if (!user) {
      const s = req.session;
      if (s.endedReason === 'idle' || s.endedReason === 'absolute') {
        s.flash.notice('Your session has expired. Please sign in again.');
      }
      res.redirect(303, '/login');
    }
    return user;
  };

  app.get('/sessions', async (req, res) => {
    const user = signedInOrRedirect(req, res);
    if (!user) return;
    const s = req.session;
    const listed = await sessionsOf(user.id);
    let rows: SessionRow[];
    if (listed) {
      devices.prune(user.id, new Set(listed.map((x) => x.key)));
      rows = listed.map((x) => rowOf(x.key, x.meta.lastSeenAt, x.meta.authAt, x.key === s.id));
      // This session first, then the most recently seen.
      rows.sort((a, b) => Number(b.current) - Number(a.current) || b.lastSeenAt - a.lastSeenAt);
    } else {
      rows = [rowOf(s.id, now(), s.authenticatedAt, true)];
    }
    const chrome = chromeFor(req, user);
    res.type('html').send(
      sessionsPage({ ...chrome, user, csrf: chrome.csrf! }, s.flash.output(), {
        now: now(),
        rows,
        listable: listed !== null,
        storeName,
        canSignOutOthers: canSignOutOthers(),
      }),
    );
  });

  /** Ends one of the user's own sessions, by its id (`session.id`) from the list. */
  app.post('/sessions/revoke', async (req, res) => {
    const user = signedInOrRedirect(req, res);
    if (!user) return;
    const s = req.session;
    const id = field(req.body, 'id', 128);
    if (!id) {
      res
        .status(400)
        .type('html')
        .send(errorPage(400, chromeFor(req, user), SESSIONS_BACK));
      return;
    }
    if (id === s.id) {
      // Revoking the session you are using is signing out.
      devices.forget(s.id);
      await s.logout();
      res.redirect(303, '/login');
      return;
    }
    const notFound = (title: string, text: string) =>
      res
        .status(404)
        .type('html')
        .send(errorPage(404, chromeFor(req, user), { ...SESSIONS_BACK, title, text }));
    const listed = await sessionsOf(user.id);
    if (!listed) {
      notFound(
        'Cannot sign out one session here',
        'This server cannot list sessions, so it cannot tell which ones are yours. Use "Sign out other devices" instead.',
      );
      return;
    }
    // Only an id from the user's own list: anyone else's session (or an ended one) is "not found".
    if (!listed.some((x) => x.key === id)) {
      notFound('Session not found', 'That session is not one of yours, or it has already ended.');
      return;
    }
    const { label } = describeDevice(devices.get(id)?.userAgent);
    await manager.revoke(id);
    devices.forget(id);
    s.flash.success(`Signed out: ${label}.`);
    res.redirect(303, '/sessions');
  });

  /** "Sign out other devices": every session of the user but this one. */
  app.post('/sessions/revoke-others', async (req, res) => {
    const user = signedInOrRedirect(req, res);
    if (!user) return;
    const s = req.session;
    if (!canSignOutOthers()) {
      s.flash.error(`This server's session store (${storeName}) cannot sign out other sessions.`);
      res.redirect(303, '/sessions');
      return;
    }
    // null: a store that revokes without listing (Memcached) cannot count what it ended.
    const count = await manager.revokeAll(user.id, { except: s.id });
    devices.forgetUser(user.id, s.id);
    s.flash.success(
      count === null
        ? 'All other sessions were signed out.'
        : count === 0
          ? 'There were no other sessions to sign out.'
          : `Signed out ${count} other session${count === 1 ? '' : 's'}.`,
    );
    res.redirect(303, '/sessions');
  });

  // ---- routes for the security tests (checklist §4) ------------------------------------

  const unauthorized = (res: Response) => {
    res.status(401).json({ error: 'not signed in' });
  };

  app
    .route('/transfer')
    .post((req, res) => {
      const user = currentUser(req);
      if (!user) return unauthorized(res);
      const to = field(req.body, 'to', 64);
      const amount = amountOf(req.body);
      const ref = field(req.body, 'ref', 32) ?? `t${randomBytes(6).toString('base64url')}`;
      if (!to || !Number.isFinite(amount) || amount <= 0 || amount > 1_000_000 || !REF.test(ref)) {
        res.status(400).json({ error: 'expected to (text), amount (positive number) and an optional ref' });
        return;
      }
      req.session.bag('transfers').set(ref, { to, amount });
      res.json({ ok: true, ref, to, amount });
    })
    .all((_req, res) => {
      res.setHeader('Allow', 'POST');
      res.status(405).json({ error: 'use POST' });
    });

  app.post('/reauth', async (req, res) => {
    const user = currentUser(req);
    if (!user) return unauthorized(res);
    const password = field(req.body, 'password', MAX_PASSWORD_LENGTH) ?? '';
    if (!(await users.checkPassword(user.id, password))) {
      auditLoginFail(req, 'reauthentication failed', user);
      res.status(401).json({ error: 'wrong password' });
      return;
    }
    // New ID, and both timers restart (NIST SP 800-63B §5.2).
    await req.session.reauthenticate();
    res.json({ ok: true });
  });

  app.post('/password', async (req, res) => {
    const user = currentUser(req);
    if (!user) return unauthorized(res);
    const current = field(req.body, 'currentPassword', MAX_PASSWORD_LENGTH) ?? '';
    const next = field(req.body, 'newPassword', MAX_PASSWORD_LENGTH) ?? '';
    if (!(await users.checkPassword(user.id, current))) {
      auditLoginFail(req, 'password change: wrong current password', user);
      res.status(401).json({ error: 'wrong password' });
      return;
    }
    if (next.length < MIN_PASSWORD_LENGTH) {
      res.status(400).json({ error: `the new password needs at least ${MIN_PASSWORD_LENGTH} characters` });
      return;
    }
    // Sign out every other device first (this session excepted): if that fails, the request fails
    // (503) before anything is reported as done. Then change the password and rotate this session.
    // signedOut is null on a store that revokes without listing (Memcached): it cannot count.
    const signedOut = await manager.revokeAll(user.id, { except: req.session.id });
    devices.forgetUser(user.id, req.session.id);
    await users.setPassword(user.id, next);
    await req.session.regenerateId();
    res.json({ ok: true, signedOut });
  });

  // A sensitive change: only with a recent login or re-authentication (SM-39, ASVS 7.5.1).
  app.post('/profile/email', (req, res) => {
    const user = currentUser(req);
    if (!user) return unauthorized(res);
    if (!req.session.isRecentlyAuthenticated(reauthWithinMs)) {
      res.status(401).json({ error: 'reauthentication required', reauthenticate: '/reauth' });
      return;
    }
    const email = field(req.body, 'email', 254) ?? '';
    if (!/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(email)) {
      res.status(400).json({ error: 'a valid email address is required' });
      return;
    }
    users.setEmail(user.id, email);
    res.json({ ok: true });
  });

  app.post('/elevate', async (req, res) => {
    const user = currentUser(req);
    if (!user) return unauthorized(res);
    // A privilege change: the session gets a new ID (OWASP, ASVS 7.2.4).
    await req.session.regenerateId();
    res.json({ ok: true });
  });

  // Writes to the session after a delay: the in-flight request of the logout-race test (SM-35).
  app.get('/slow', async (req, res) => {
    await sleep(slowMs);
    const s = req.session;
    const count = Number(s.get('slowRequests') ?? 0) + 1;
    s.set('slowRequests', count);
    res.json({ ok: true, slowRequests: count });
  });

  app.get('/flash-set', (req, res) => {
    const text =
      typeof req.query.text === 'string' && req.query.text.length > 0
        ? req.query.text.slice(0, 200)
        : 'This message is shown exactly once.';
    req.session.flash.notice(text);
    res.redirect(303, '/flash-read');
  });

  app.get('/flash-read', (req, res) => {
    const user = currentUser(req);
    const html = req.session.flash.output();
    res.type('html').send(flashPage(html, chromeFor(req, user)));
  });

  app.use((req, res) => {
    res
      .status(404)
      .type('html')
      .send(errorPage(404, chromeFor(req, currentUser(req))));
  });

  app.use((err: unknown, req: Request, res: Response, next: NextFunction) => {
    if (res.headersSent) {
      next(err);
      return;
    }
    const raw = (err as { status?: unknown } | null)?.status;
    const status = typeof raw === 'number' && raw >= 400 && raw < 600 ? raw : 500;
    if (status >= 500 && !(err instanceof SessionError && status === 503)) {
      (options.warn ?? console.error)(`demo: unexpected error: ${(err as Error)?.stack ?? String(err)}`);
    }
    // No session work on an outage; otherwise the header still offers logout to a signed-in user.
    const s = (req as { session?: Session }).session;
    let chrome: Chrome = {};
    if (status !== 503 && s) chrome = chromeFor(req, users.findUserById(s.userId));
    res.status(status).type('html').send(errorPage(status, chrome));
  });

  return { app, manager, users, devices };
}
