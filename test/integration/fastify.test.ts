import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileStore, MemoryStore, type Session, SessionManager } from '../../src/index.js';
import { csrfPreHandler, sessionPlugin } from '../../src/integrations/fastify.js';

const secret = 'fastify-integration-secret-0123456789abcdef';

async function start(manager: SessionManager): Promise<{ app: FastifyInstance; url: string }> {
  const app = Fastify();
  await app.register(sessionPlugin(manager));
  app.get('/visit', async (req) => {
    const visits = ((req.session as Session<{ visits: number }>).get('visits') ?? 0) + 1;
    req.session.set('visits', visits);
    return { visits };
  });
  app.get('/read', async (req) => ({
    visits: req.session.get('visits') ?? null,
    csrf: req.session.csrf.token(),
  }));
  app.get('/plain', async () => 'no session touched');
  app.post('/login', async (req, reply) => {
    await req.session.login(42);
    return reply.redirect('/read', 303);
  });
  app.post('/transfer', { preHandler: csrfPreHandler(manager) }, async () => ({ ok: true }));
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  return { app, url };
}

const cookieOf = (res: Response) => res.headers.getSetCookie()[0]?.split(';')[0];

describe('Fastify integration', () => {
  let app: FastifyInstance;
  let url: string;
  beforeAll(async () => {
    ({ app, url } = await start(
      new SessionManager({ secret, store: new MemoryStore(), cookie: { secure: false } }),
    ));
  });
  afterAll(() => app.close());

  it('creates the session on the first write and reads it back; read-only requests send no cookie', async () => {
    const first = await fetch(`${url}/visit`);
    expect(await first.json()).toEqual({ visits: 1 });
    const cookie = cookieOf(first)!;
    expect(first.headers.get('set-cookie')).toMatch(/HttpOnly; SameSite=Lax/);
    expect(first.headers.get('cache-control')).toBe('no-store');
    const second = await fetch(`${url}/visit`, { headers: { cookie } });
    expect(await second.json()).toEqual({ visits: 2 });
    expect(second.headers.getSetCookie()).toEqual([]);
    const plain = await fetch(`${url}/plain`);
    expect(plain.headers.getSetCookie()).toEqual([]);
  });

  it('SM-19/SM-57: login regenerates the ID and the redirect already carries the committed session', async () => {
    const anon = await fetch(`${url}/visit`);
    const before = cookieOf(anon)!;
    const login = await fetch(`${url}/login`, {
      method: 'POST',
      headers: { cookie: before },
      redirect: 'manual',
    });
    expect(login.status).toBe(303);
    const after = cookieOf(login)!;
    expect(after).not.toBe(before);
    const dashboard = await fetch(`${url}/read`, { headers: { cookie: after } });
    expect(dashboard.status).toBe(200);
    // The pre-login ID is dead: its data is gone and the visitor gets a fresh session.
    const stale = await fetch(`${url}/read`, { headers: { cookie: before } });
    expect(((await stale.json()) as { visits: unknown }).visits).toBeNull();
    expect(cookieOf(stale)).not.toBe(before);
  });

  it('SM-43: the CSRF preHandler refuses a POST without the token and accepts it with the token', async () => {
    const page = await fetch(`${url}/read`);
    const cookie = cookieOf(page)!;
    const { csrf } = (await page.json()) as { csrf: string };
    const origin = new URL(url).origin;
    const refused = await fetch(`${url}/transfer`, { method: 'POST', headers: { cookie, origin } });
    expect(refused.status).toBe(403);
    const ok = await fetch(`${url}/transfer`, {
      method: 'POST',
      headers: { cookie, origin, 'x-csrf-token': csrf },
    });
    expect(ok.status).toBe(200);
  });

  it('SM-56: a store outage is a 503 through Fastify, never a fresh session', async () => {
    const good = new SessionManager({ secret, store: new MemoryStore(), cookie: { secure: false } });
    const s = await good.load({ secure: false });
    s.set('visits', 1);
    const cookie = (await good.commit(s, { secure: false })).setCookie[0]!.split(';')[0]!;
    const broken = await start(
      new SessionManager({
        secret,
        store: new FileStore({ dir: '/dev/null/sessions' }),
        cookie: { secure: false },
      }),
    );
    try {
      const res = await fetch(`${broken.url}/read`, { headers: { cookie } });
      expect(res.status).toBe(503);
      expect(res.headers.getSetCookie()).toEqual([]);
      const write = await fetch(`${broken.url}/visit`);
      expect(write.status).toBe(503);
      expect(write.headers.getSetCookie()).toEqual([]);
    } finally {
      await broken.app.close();
    }
  });
});
