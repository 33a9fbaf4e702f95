import { Hono } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { CsrfError, csrfProtection, type SessionEnv, session } from '../../../../src/integrations/hono.js';
import { type MatrixAdapter, type MatrixData, serveFetch } from '../adapter.js';

const adapter: MatrixAdapter = {
  name: 'hono',
  async start(manager) {
    const app = new Hono<SessionEnv<MatrixData>>();
    app.use(session(manager));
    app.use(csrfProtection(manager));
    app.onError((err, c) => {
      if (err.cause instanceof CsrfError)
        return c.json({ code: err.cause.code, reason: err.cause.reason }, 403);
      if (err instanceof HTTPException) return err.getResponse();
      throw err;
    });
    app.get('/form', (c) => c.json({ token: c.get('session').csrf.token() }));
    app.post('/login', async (c) => {
      const type = c.req.header('content-type') ?? '';
      const body = type.startsWith('application/json') ? await c.req.json() : await c.req.parseBody();
      const s = c.get('session');
      await s.login(String(body.user));
      s.set('profile', { name: String(body.name), plan: 'free' });
      s.flash.success(`welcome ${body.name}`);
      return c.redirect('/me', 303);
    });
    app.get('/me', (c) => {
      const s = c.get('session');
      const body = { user: s.userId ?? null, profile: s.get('profile') ?? null, cart: s.bag('cart').all() };
      return c.json(body, s.userId ? 200 : 401);
    });
    app.post('/cart', async (c) => {
      const { item, qty } = await c.req.json<{ item: string; qty: number }>();
      c.get('session').bag<Record<string, number>>('cart').set(item, Number(qty));
      return c.json({ ok: true });
    });
    app.get('/flash', (c) => c.json({ messages: c.get('session').flash.messages('success') }));
    app.post('/logout', async (c) => {
      await c.get('session').logout();
      return c.json({ ok: true });
    });
    return serveFetch(app.fetch, false);
  },
};
export default adapter;
