import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import {
  type AuditEvent,
  type Session,
  SessionError,
  SessionManager,
  type SessionStore,
} from '../../src/index.js';
import { csrfProtection, session } from '../../src/integrations/express.js';
import { MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, type User, UserDirectory } from './users.js';
import { type Chrome, dashboardPage, errorPage, flashPage, landingPage, loginPage } from './views.js';

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
}

export interface Demo {
  app: Express;
  manager: SessionManager;
  users: UserDirectory;
}

const REF = /^[A-Za-z0-9_-]{1,32}$/;

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
    const { ok, user } = await users.authenticate(username, password);
    if (!ok || !user) {
      auditLoginFail(req, user ? 'wrong password' : 'unknown user', user);
      s.flash.error('Wrong username or password.');
      res.redirect(303, '/login');
      return;
    }
    // New ID, pre-login data dropped (flash kept), only the user id stored (seed §11, §24, §27.1).
    await s.login(user.id);
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

  return { app, manager, users };
}
