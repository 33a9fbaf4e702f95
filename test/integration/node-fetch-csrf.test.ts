import { createServer } from 'node:http';
import { describe, expect, it } from 'vitest';
import { checkCsrf as checkFetchCsrf, withFetchSession } from '../../src/integrations/fetch.js';
import { checkCsrf, withSession } from '../../src/integrations/node.js';
import { cookiesOf, listen, setup } from '../helpers/session-kit.js';

describe('node:http and Fetch: the public CSRF check and errors that always get an answer', () => {
  it('node: withSession answers 500 (no details) when the handler throws, instead of hanging', async () => {
    const { manager } = setup({ cookie: { secure: false } });
    const server = await listen(
      createServer(
        withSession(manager, () => {
          throw new Error('database password is hunter2');
        }),
      ),
    );
    try {
      const res = await fetch(`${server.url}/`);
      expect(res.status).toBe(500);
      const body = await res.text();
      expect(body).toBe('Internal Server Error\n');
      expect(body).not.toContain('hunter2');
    } finally {
      await server.close();
    }
  });

  it('node: checkCsrf refuses a missing token and a cross-site Origin with their reasons, accepts the token', async () => {
    const { manager, events } = setup({ cookie: { secure: false } });
    const server = await listen(
      createServer(
        withSession(manager, async (req, res, session) => {
          if (req.method === 'GET') {
            res.end(session.csrf.token());
            return;
          }
          const refused = checkCsrf(manager, session, req);
          if (refused) throw refused;
          res.end('ok');
        }),
      ),
    );
    try {
      const form = await fetch(`${server.url}/`);
      const token = await form.text();
      const cookie = cookiesOf(form)!;
      const origin = new URL(server.url).origin;
      const post = (headers: Record<string, string>) =>
        fetch(`${server.url}/`, { method: 'POST', headers: { cookie, ...headers } });
      expect((await post({ origin })).status).toBe(403);
      expect((await post({ origin: 'https://evil.example', 'x-csrf-token': token })).status).toBe(403);
      expect((await post({ origin, 'x-csrf-token': token })).status).toBe(200);
      expect(events.filter((e) => e.type === 'malicious_csrf').map((e) => e.reason)).toEqual([
        'token-missing',
        'origin-mismatch',
      ]);
    } finally {
      await server.close();
    }
  });

  it('Fetch: checkCsrf refuses without the token and accepts it from the header', async () => {
    const { manager } = setup({ cookie: { secure: false } });
    const handler = withFetchSession(manager, async (request, session) => {
      if (request.method === 'GET') return new Response(session.csrf.token());
      const refused = checkFetchCsrf(manager, session, request, { origin: 'http://localhost' });
      return refused ? new Response(refused.reason, { status: 403 }) : new Response('ok');
    });
    const form = await handler(new Request('http://localhost/'));
    const token = await form.text();
    const cookie = cookiesOf(form)!;
    const post = (headers: Record<string, string>) =>
      handler(
        new Request('http://localhost/', {
          method: 'POST',
          headers: { cookie, origin: 'http://localhost', ...headers },
        }),
      );
    const missing = await post({});
    expect([missing.status, await missing.text()]).toEqual([403, 'token-missing']);
    expect((await post({ 'x-csrf-token': token })).status).toBe(200);
  });
});
