import { createServer } from 'node:http';
import express, { type NextFunction, type Request, type Response } from 'express';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { storageKey } from '../../src/crypto/ids.js';
import type { SessionError, SessionManagerOptions } from '../../src/index.js';
import { session } from '../../src/integrations/express.js';
import { withSession } from '../../src/integrations/node.js';
import { listen, MINUTE, sessionCookieOf, setup } from '../helpers/session-kit.js';

const NAME = 'sid';

type Kit = ReturnType<typeof setup>;
interface Running {
  kit: Kit;
  url: string;
  close: () => Promise<void>;
}
const running: Running[] = [];

afterAll(async () => {
  for (const r of running) await r.close();
});

/** The record id and the handle (hash of the token) of a `name=<id>.<token>.<mac>` cookie pair. */
function parts(pair: string | undefined): { id: string; handle: string } {
  const [id, token] = pair!.split('=')[1]!.split('.');
  return { id: id!, handle: storageKey(token!) };
}

/** GET or POST with an optional session cookie; redirects are not followed. */
function call(url: string, cookie?: string, method = 'GET'): Promise<globalThis.Response> {
  return fetch(url, { method, redirect: 'manual', headers: cookie ? { cookie } : {} });
}

describe('SM-24 over node:http: renewal every 2 s with a 1 s grace window (fake clock)', () => {
  let app: Running;

  beforeAll(async () => {
    const kit = setup({ cookie: { name: NAME, secure: false }, renewal: { interval: 2_000, grace: 1_000 } });
    const handler = withSession(kit.manager, async (req, res, s) => {
      const { pathname, searchParams } = new URL(req.url!, 'http://x');
      if (req.method === 'POST' && pathname === '/login') {
        await s.login(searchParams.get('user') ?? 'alice');
        res.writeHead(303, { Location: '/me' }).end();
      } else if (req.method === 'POST' && pathname === '/theme') {
        s.set('theme', searchParams.get('value'));
        res.end('saved');
      } else if (req.method === 'POST' && pathname === '/note') {
        s.bag('notes').set(searchParams.get('key')!, searchParams.get('value'));
        res.end('noted');
      } else if (pathname === '/notes') {
        res.setHeader('Content-Type', 'application/json').end(JSON.stringify(s.bag('notes').all()));
      } else if (req.method === 'POST' && pathname === '/logout') {
        await s.logout();
        res.end('bye');
      } else if (pathname === '/me') {
        if (s.userId === undefined) res.writeHead(401).end('login first');
        else
          res
            .setHeader('Content-Type', 'application/json')
            .end(JSON.stringify({ user: s.userId, theme: s.get('theme') ?? null }));
      } else {
        res.writeHead(404).end();
      }
    });
    app = { kit, ...(await listen(createServer(handler))) };
    running.push(app);
  });

  afterEach(() => {
    app.kit.store.reset();
  });

  async function login(user: string): Promise<string> {
    const res = await call(`${app.url}/login?user=${user}`, undefined, 'POST');
    expect(res.status).toBe(303);
    return sessionCookieOf(res, NAME)!;
  }

  it('after 2 s a new token is set for the same record; the old cookie within 1 s answers 200 without Set-Cookie and its writes land', async () => {
    const { kit, url } = app;
    const oldCookie = await login('renee');
    kit.clock.advance(2_000);
    kit.store.reset();
    const renewing = await call(`${url}/me`, oldCookie);
    expect(renewing.status).toBe(200);
    const newCookie = sessionCookieOf(renewing, NAME);
    expect(newCookie).toBeDefined();
    expect(parts(newCookie).id).toBe(parts(oldCookie).id);
    expect(parts(newCookie).handle).not.toBe(parts(oldCookie).handle);
    expect(kit.store.ops()).toEqual(['load', 'commit']);
    expect(kit.store.calls[1]!.guard).toEqual({ handle: parts(oldCookie).handle });

    kit.clock.advance(999);
    kit.store.reset();
    const inFlight = await call(`${url}/me`, oldCookie);
    expect(inFlight.status).toBe(200);
    expect(await inFlight.json()).toEqual({ user: 'renee', theme: null });
    expect(inFlight.headers.getSetCookie()).toEqual([]);
    const write = await call(`${url}/theme?value=dark`, oldCookie, 'POST');
    expect(write.status).toBe(200);
    expect(write.headers.getSetCookie()).toEqual([]);
    expect(kit.store.count('create')).toBe(0);
    expect((await kit.manager.sessionsOf('renee')).map((s) => s.key)).toEqual([parts(newCookie).id]);
    expect(await (await call(`${url}/me`, newCookie)).json()).toEqual({ user: 'renee', theme: 'dark' });
  });

  it("the old cookie after the grace window gets a fresh session and a 'session_use_after_expire' event", async () => {
    const { kit, url } = app;
    const oldCookie = await login('otto');
    kit.clock.advance(2_000);
    const newCookie = sessionCookieOf(await call(`${url}/me`, oldCookie), NAME);
    kit.clock.advance(1_000);
    kit.store.reset();

    const replay = await call(`${url}/me`, oldCookie);
    expect(replay.status).toBe(401);
    expect(sessionCookieOf(replay, NAME)).toBeUndefined();
    expect(kit.store.ops()).toEqual(['load']);
    expect(kit.events.at(-1)).toMatchObject({
      type: 'session_use_after_expire',
      reason: 'renewed',
      userId: 'otto',
      ip: '127.0.0.1',
    });
    expect((await call(`${url}/me`, newCookie)).status).toBe(200);
  });

  it('two requests sent at once when the renewal is due: one response carries a new cookie, both writes land', async () => {
    const { kit, url } = app;
    const oldCookie = await login('paula');
    kit.clock.advance(2_000);
    const answers = await Promise.all([
      call(`${url}/note?key=a&value=1`, oldCookie, 'POST'),
      call(`${url}/note?key=b&value=2`, oldCookie, 'POST'),
    ]);
    expect(answers.map((r) => r.status)).toEqual([200, 200]);
    const issued = answers.map((r) => sessionCookieOf(r, NAME)).filter((c) => c !== undefined);
    expect(issued).toHaveLength(1);
    expect(answers.flatMap((r) => r.headers.getSetCookie()).filter((c) => /Max-Age=0/i.test(c))).toEqual([]);
    expect(await (await call(`${url}/notes`, issued[0])).json()).toEqual({ a: '1', b: '2' });
    expect(await app.kit.manager.sessionsOf('paula')).toHaveLength(1);
  });

  it('a logout through the new cookie also ends the old one, even within its grace window', async () => {
    const { kit, url } = app;
    const oldCookie = await login('lou');
    kit.clock.advance(2_000);
    const newCookie = sessionCookieOf(await call(`${url}/me`, oldCookie), NAME);
    const bye = await call(`${url}/logout`, newCookie, 'POST');
    expect(bye.status).toBe(200);
    expect(bye.headers.getSetCookie()).toEqual([expect.stringMatching(/^sid=;.*Max-Age=0/i)]);
    expect((await call(`${url}/me`, oldCookie)).status).toBe(401);
    expect((await call(`${url}/me`, newCookie)).status).toBe(401);
    expect(await kit.manager.sessionsOf('lou')).toEqual([]);
  });
});

/** An Express app with `maxSessionsPerUser`, rendering SessionErrors as JSON. */
async function expressApp(options: Partial<SessionManagerOptions>): Promise<Running> {
  const kit = setup({ cookie: { name: NAME, secure: false }, ...options });
  const app = express();
  app.use(session(kit.manager));
  app.post('/login', async (req, res) => {
    await req.session.login(String(req.query.user));
    res.redirect(303, '/me');
  });
  app.get('/me', (req, res) => {
    res.status(req.session.userId ? 200 : 401).json({ user: req.session.userId ?? null });
  });
  app.use((err: SessionError, _req: Request, res: Response, _next: NextFunction) => {
    res.status(err.status ?? 500).json({ code: err.code ?? null, message: err.expose ? err.message : null });
  });
  const started = { kit, ...(await listen(createServer(app))) };
  running.push(started);
  return started;
}

/** Three logins of `user`, a minute apart (the fake clock), and what each answered. */
async function threeLogins({ kit, url }: Running, user: string) {
  const answers: globalThis.Response[] = [];
  for (let i = 0; i < 3; i++) {
    if (i > 0) kit.clock.advance(MINUTE);
    answers.push(await call(`${url}/login?user=${user}`, undefined, 'POST'));
  }
  return answers;
}

describe('SM-38 over Express: at most 2 sessions per user', () => {
  it('evict-oldest: three logins, the first session is rejected afterwards, with an event', async () => {
    const app = await expressApp({ maxSessionsPerUser: { limit: 2 } });
    const answers = await threeLogins(app, 'eve');
    expect(answers.map((r) => r.status)).toEqual([303, 303, 303]);
    const cookies = answers.map((r) => sessionCookieOf(r, NAME)!);
    const statuses = [];
    for (const cookie of cookies) statuses.push((await call(`${app.url}/me`, cookie)).status);
    expect(statuses).toEqual([401, 200, 200]);
    expect(app.kit.events.filter((e) => e.type === 'excess_sessions_exceeded')).toEqual([
      expect.objectContaining({ userId: 'eve', reason: 'evict-oldest: 1 over the limit of 2' }),
    ]);
  });

  it('refuse: the third login answers 409 SESSION_LIMIT with no session cookie, with an event', async () => {
    const app = await expressApp({ maxSessionsPerUser: { limit: 2, onExceed: 'refuse' } });
    const answers = await threeLogins(app, 'rex');
    expect(answers.map((r) => r.status)).toEqual([303, 303, 409]);
    const refused = answers[2]!;
    expect(sessionCookieOf(refused, NAME)).toBeUndefined();
    expect(await refused.json()).toEqual({
      code: 'SESSION_LIMIT',
      message: expect.stringMatching(/already signed in on 2 devices/),
    });
    expect(app.kit.events.at(-1)).toMatchObject({
      type: 'excess_sessions_exceeded',
      userId: 'rex',
      reason: 'refused: limit of 2',
    });
    for (const r of answers.slice(0, 2)) {
      expect((await call(`${app.url}/me`, sessionCookieOf(r, NAME))).status).toBe(200);
    }
    expect(await app.kit.manager.sessionsOf('rex')).toHaveLength(2);
  });
});
