// Passport 0.7 with passport-local on a real Express app, over sessionflow's express-session
// compatibility surface (src/integrations/express-compat.ts): login, a protected route, logout,
// and the security properties that must survive the mapping (new ID at login, old cookie dead
// after logout, the user recorded as the session's identity).
import { createServer } from 'node:http';
import express, { type NextFunction, type Request, type Response } from 'express';
import passport from 'passport';
import { Strategy as LocalStrategy } from 'passport-local';
import { afterAll, beforeAll, beforeEach, describe, expect, expectTypeOf, it } from 'vitest';
import { type Session, SessionError } from '../../src/index.js';
import { compat, type ExpressSessionCompat, session } from '../../src/integrations/express.js';
import { cookiePair, HOUR, listen, sessionCookieOf, setup } from '../helpers/session-kit.js';

const NAME = 'sid';
const DAY = 24 * HOUR;

interface User {
  id: number;
  username: string;
  password: string;
}
const users: User[] = [
  { id: 7, username: 'alice', password: 'wonderland' },
  { id: 8, username: 'bob', password: 'builder' },
];

let kit: ReturnType<typeof setup>;
let url: string;
let close: () => Promise<void>;
const errors: unknown[] = [];

beforeAll(async () => {
  kit = setup({ cookie: { name: NAME, secure: false }, absoluteTimeout: 12 * HOUR });
  const auth = new passport.Passport();
  auth.use(
    new LocalStrategy((username, password, done) => {
      const user = users.find((u) => u.username === username);
      if (!user) return done(null, false, { message: 'Unknown user.' });
      if (user.password !== password) return done(null, false, { message: 'Incorrect password.' });
      return done(null, user);
    }),
  );
  auth.serializeUser((user, done) => done(null, (user as User).id));
  auth.deserializeUser((id: number, done) => done(null, users.find((u) => u.id === id) ?? false));

  const app = express();
  app.use(express.urlencoded({ extended: false }));
  app.use(session(kit.manager));
  app.use(auth.initialize());
  app.use(auth.session());

  app.get('/visit', (req, res) => {
    req.session.set('cart', ['book']);
    res.json({ sessionID: req.sessionID });
  });
  app.post(
    '/login',
    auth.authenticate('local', { successRedirect: '/me', failureRedirect: '/login', failureMessage: true }),
  );
  app.get('/login', (req, res) => {
    res.json({ messages: compat(req).messages ?? [] });
  });
  app.get('/me', (req, res) => {
    if (!req.isAuthenticated()) {
      res.status(401).json({ user: null });
      return;
    }
    res.json({
      user: (req.user as User).username,
      userId: req.session.userId ?? null,
      passport: req.session.get('passport') ?? null,
      cart: req.session.get('cart') ?? null,
      sessionID: req.sessionID,
      id: req.session.id,
    });
  });
  app.post('/remember', (req, res) => {
    compat(req).cookie.maxAge = 30 * DAY;
    res.json({ maxAge: compat(req).cookie.maxAge });
  });
  app.post('/logout', (req, res, next) => {
    req.logout((err) => (err ? next(err) : res.redirect(303, '/')));
  });
  app.post('/destroy', (req, res, next) => {
    compat(req).destroy((err) => (err ? next(err) : res.json({ status: req.session.status })));
  });
  app.post('/reload', (req, res, next) => {
    req.session.set('cart', ['unsaved']);
    compat(req).reload((err) => (err ? next(err) : res.json({ cart: req.session.get('cart') ?? null })));
  });
  app.post('/save', async (req, res) => {
    req.session.set('cart', ['saved']);
    const saved = compat(req).save(); // the promise form, for code that awaits
    await saved;
    res.json({ ok: true });
  });
  app.post('/bad-write', (req, res) => {
    const legacy = compat(req);
    legacy.passport = { user: 1 };
    let code: string | undefined;
    try {
      (legacy.passport as Record<string, unknown>).user = () => 2;
    } catch (err) {
      code = (err as SessionError).code;
    }
    res.json({ code, passport: req.session.get('passport') });
  });
  app.use((err: SessionError, _req: Request, res: Response, _next: NextFunction) => {
    errors.push(err);
    res.status(err.status ?? 500).json({ code: err.code ?? null, message: err.message });
  });
  const started = await listen(createServer(app));
  url = started.url;
  close = started.close;
});

afterAll(async () => {
  await close();
});

beforeEach(() => {
  errors.length = 0;
  kit.warnings.length = 0;
});

function login(username: string, password: string, cookie?: string) {
  return fetch(`${url}/login`, {
    method: 'POST',
    redirect: 'manual',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      ...(cookie ? { cookie } : {}),
    },
    body: new URLSearchParams({ username, password }).toString(),
  });
}

function get(path: string, cookie?: string) {
  return fetch(`${url}${path}`, { redirect: 'manual', headers: cookie ? { cookie } : {} });
}

function post(path: string, cookie?: string) {
  return fetch(`${url}${path}`, { method: 'POST', redirect: 'manual', headers: cookie ? { cookie } : {} });
}

/** Logs alice in on a session that already holds pre-login data; returns both cookies. */
async function signedIn() {
  const visit = await get('/visit');
  const before = sessionCookieOf(visit, NAME)!;
  const { sessionID } = (await visit.json()) as { sessionID: string };
  const res = await login('alice', 'wonderland', before);
  const after = sessionCookieOf(res, NAME)!;
  return { before, after, sessionID, res };
}

describe('Passport 0.7 + passport-local over the express-session surface', () => {
  it('login: redirect, a new cookie, the user in the session as Passport and as sessionflow know it', async () => {
    const { before, after, sessionID, res } = await signedIn();
    expect(res.status).toBe(302);
    expect(res.headers.get('location')).toBe('/me');
    expect(after).toBeDefined();
    expect(after).not.toBe(before); // regenerate + login: a new cookie secret (fixation defence)

    const me = await get('/me', after);
    expect(me.status).toBe(200);
    expect(await me.json()).toEqual({
      user: 'alice',
      userId: '7', // session.login() ran: the identity core knows the user
      passport: { user: 7 },
      cart: null, // pre-login data dropped by login()
      sessionID, // the record id is stable; only the cookie's secret changed
      id: sessionID,
    });
    // The pre-login cookie no longer opens the session.
    expect((await get('/me', before)).status).toBe(401);
    expect(kit.events.some((e) => e.type === 'authn_login_success' && e.userId === '7')).toBe(true);
    expect(await kit.manager.sessionsOf(7)).toHaveLength(1);
    expect(kit.warnings).toEqual([]);
    await post('/logout', after);
  });

  it('a wrong password: no user, and failureMessage lands in req.session.messages', async () => {
    const res = await login('alice', 'nope');
    expect(res.status).toBe(302);
    expect(res.headers.get('location')).toBe('/login');
    const cookie = sessionCookieOf(res, NAME)!;
    expect(await (await get('/login', cookie)).json()).toEqual({ messages: ['Incorrect password.'] });
    expect((await get('/me', cookie)).status).toBe(401);
    const again = await login('alice', 'still wrong', cookie);
    expect(await (await get('/login', sessionCookieOf(again, NAME) ?? cookie)).json()).toEqual({
      messages: ['Incorrect password.', 'Incorrect password.'],
    });
  });

  it('logout: req.logout(cb) ends the session; the cookie is cleared and the old one is dead', async () => {
    const { after, sessionID } = await signedIn();
    expect((await get('/me', after)).status).toBe(200);

    const out = await post('/logout', after);
    expect(out.status).toBe(303);
    const cleared = out.headers.getSetCookie().map(cookiePair);
    expect(cleared).toContainEqual({ name: NAME, value: '', cleared: true });
    expect(out.headers.get('clear-site-data')).toBe('"cache"');

    expect(await kit.store.inner.load(sessionID)).toBeNull(); // deleted, not just emptied
    expect(await kit.manager.sessionsOf(7)).toEqual([]);
    const replay = await get('/me', after);
    expect(replay.status).toBe(401);
    expect(kit.events.some((e) => e.type === 'session_logout' && e.userId === '7')).toBe(true);
    expect(kit.warnings).toEqual([]);
  });

  it('logging in as another user on a signed-in session starts a new session for the new user', async () => {
    const { after, sessionID } = await signedIn();
    const bob = await login('bob', 'builder', after);
    const bobCookie = sessionCookieOf(bob, NAME)!;
    const me = (await (await get('/me', bobCookie)).json()) as { user: string; userId: string; id: string };
    expect(me).toMatchObject({ user: 'bob', userId: '8' });
    expect(me.id).not.toBe(sessionID); // alice's session was ended by regenerate(), not reused
    expect((await get('/me', after)).status).toBe(401);
    expect(await kit.manager.sessionsOf(7)).toEqual([]);
    await post('/logout', bobCookie);
  });

  it('remember me through req.session.cookie.maxAge: a persistent cookie, capped by the absolute timeout', async () => {
    const { after } = await signedIn();
    const res = await post('/remember', after);
    const { maxAge } = (await res.json()) as { maxAge: number };
    expect(maxAge).toBeLessThanOrEqual(12 * HOUR);
    expect(maxAge).toBeGreaterThan(11 * HOUR);
    const set = res.headers.getSetCookie().find((c) => c.startsWith(`${NAME}=`))!;
    const seconds = Number(/Max-Age=(\d+)/i.exec(set)?.[1]);
    expect(seconds).toBeGreaterThan(11 * 3600);
    expect(seconds).toBeLessThanOrEqual(12 * 3600);
    const cookie = sessionCookieOf(res, NAME)!;
    expect((await get('/me', cookie)).status).toBe(200);
    expect((await get('/me', after)).status).toBe(401); // the lifetime change came with a new ID
    await post('/logout', cookie);
  });

  it('destroy(cb), reload(cb) and save() keep their express-session meaning', async () => {
    const cookie = sessionCookieOf(await get('/visit'), NAME)!;
    const reloaded = await post('/reload', cookie);
    expect(await reloaded.json()).toEqual({ cart: ['book'] }); // the unsaved write was dropped
    await post('/save', cookie);
    const destroyed = await post('/destroy', cookie);
    expect(await destroyed.json()).toEqual({ status: 'destroyed' });
    expect(sessionCookieOf(destroyed, NAME)).toBeUndefined();
    expect((await get('/me', cookie)).status).toBe(401);
  });

  it('a change through a property that is not JSON data is refused and undone', async () => {
    const cookie = sessionCookieOf(await get('/visit'), NAME)!;
    const res = await post('/bad-write', cookie);
    expect(await res.json()).toEqual({ code: 'NOT_SERIALIZABLE', passport: { user: 1 } });
  });

  it('the surface can be renamed or turned off, and cannot shadow a Session member', async () => {
    expect(() => session(kit.manager, { expressSession: { properties: ['flash'] } })).toThrow(
      /"flash" is a member of req.session/,
    );
    expect(() => session(kit.manager, { expressSession: { properties: ['regenerate'] } })).toThrow(
      SessionError,
    );
    const app = express();
    app.use(session(kit.manager, { expressSession: false }));
    app.get('/', (req, res) => {
      const bare = req.session as unknown as Record<string, unknown>;
      res.json({ regenerate: typeof bare.regenerate, passport: 'passport' in bare });
    });
    const bare = await listen(createServer(app));
    try {
      expect(await (await fetch(bare.url)).json()).toEqual({ regenerate: 'undefined', passport: false });
    } finally {
      await bare.close();
    }
  });

  it('types: req.session keeps the typed API; the surface is typed through compat(req), not any', () => {
    const check = (req: Request) => {
      expectTypeOf(req.session).not.toBeAny();
      expectTypeOf(req.session).toEqualTypeOf<Session>();
      expectTypeOf(req.sessionID).toEqualTypeOf<string>();
      const legacy = compat(req);
      expectTypeOf(legacy).not.toBeAny();
      expectTypeOf(legacy.passport).toEqualTypeOf<{ user?: unknown } | undefined>();
      expectTypeOf(legacy.regenerate).toBeCallableWith((err?: unknown) => void err);
      // @ts-expect-error not a member of the session: compat did not widen it to `any`
      legacy.regenrate(() => {});
      // @ts-expect-error the typed API has no express-session members
      req.session.regenerate(() => {});
      // With declared keys, a typo is still a compile error through the compat type.
      const typed = req.session as unknown as Session<{ cart: string[] }> & ExpressSessionCompat;
      // @ts-expect-error a key typo
      typed.get('crat');
      // @ts-expect-error a value of the wrong type
      typed.set('cart', 'book');
    };
    expect(check).toBeTypeOf('function');
  });
});
