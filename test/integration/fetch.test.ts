import { describe, expect, it } from 'vitest';
import { FileStore, MemoryStore, SessionManager } from '../../src/index.js';
import { withFetchSession } from '../../src/integrations/fetch.js';

const secret = 'fetch-integration-test-secret-0123456789abcdef';

function cookieOf(response: Response): string {
  const set = response.headers.getSetCookie();
  expect(set).toHaveLength(1);
  return set[0]!.split(';')[0]!;
}

describe('Fetch API integration', () => {
  it('creates a session on the first write, then reads it back from the cookie', async () => {
    const manager = new SessionManager<{ visits: number }>({ secret, store: new MemoryStore() });
    const handler = withFetchSession(manager, (_req, session) => {
      const visits = session.get('visits', 0) + 1;
      session.set('visits', visits);
      return new Response(String(visits));
    });
    const first = await handler(new Request('https://app.example/'));
    expect(await first.text()).toBe('1');
    const cookie = cookieOf(first);
    expect(first.headers.get('set-cookie')).toMatch(/HttpOnly; Secure; SameSite=Lax/);
    expect(first.headers.get('cache-control')).toBe('no-store');
    const second = await handler(new Request('https://app.example/', { headers: { cookie } }));
    expect(await second.text()).toBe('2');
    expect(second.headers.getSetCookie()).toEqual([]);
  });

  it('SM-06: the cookie carries only the signed token, so 60 KB of session data still makes a cookie under 200 bytes', async () => {
    const manager = new SessionManager({ secret, store: new MemoryStore() });
    const handler = withFetchSession(manager, (_req, session) => {
      session.set('blob', 'x'.repeat(60_000));
      return new Response('ok');
    });
    const response = await handler(new Request('https://app.example/'));
    const [setCookie] = response.headers.getSetCookie();
    expect(setCookie!.length).toBeLessThan(200);
    expect(setCookie).not.toContain('xxxx');
  });

  it('a visitor who never touches the session gets no cookie', async () => {
    const manager = new SessionManager({ secret, store: new MemoryStore() });
    const handler = withFetchSession(manager, () => new Response('hello'));
    const response = await handler(new Request('https://app.example/'));
    expect(response.headers.getSetCookie()).toEqual([]);
  });

  it('adds the cookie to a redirect Response, whose headers are immutable', async () => {
    const manager = new SessionManager({ secret, store: new MemoryStore() });
    const handler = withFetchSession(manager, async (_req, session) => {
      await session.login(7);
      return Response.redirect('https://app.example/dashboard', 303);
    });
    const response = await handler(new Request('https://app.example/login', { method: 'POST' }));
    expect(response.status).toBe(303);
    expect(response.headers.get('location')).toBe('https://app.example/dashboard');
    expect(cookieOf(response)).toMatch(/^__Host-id=/);
  });

  it('SM-05: over plain http a Secure session cookie is neither set nor honoured', async () => {
    const manager = new SessionManager({ secret, store: new MemoryStore(), warn: () => {} });
    const handler = withFetchSession(manager, (_req, session) => {
      session.set('k', 1);
      return new Response('ok');
    });
    const response = await handler(new Request('http://app.example/'));
    expect(response.headers.getSetCookie()).toEqual([]);
  });

  it('SM-56: a store outage answers 503 instead of an empty session', async () => {
    const manager = new SessionManager({ secret, store: new MemoryStore() });
    const writer = withFetchSession(manager, (_req, session) => {
      session.set('k', 1);
      return new Response('ok');
    });
    const cookie = cookieOf(await writer(new Request('https://app.example/')));
    const broken = new SessionManager({
      secret,
      store: new FileStore({ dir: '/dev/null/sessions' }),
    });
    const reader = withFetchSession(broken, (_req, session) => new Response(String(session.get('k'))));
    const response = await reader(new Request('https://app.example/', { headers: { cookie } }));
    expect(response.status).toBe(503);
    expect(response.headers.getSetCookie()).toEqual([]);
  });
});
