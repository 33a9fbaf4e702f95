import Fastify from 'fastify';
import { CsrfError, csrfPreHandler, sessionPlugin } from '../../../../src/integrations/fastify.js';
import type { MatrixAdapter } from '../adapter.js';

type Body = Record<string, string>;

const adapter: MatrixAdapter = {
  name: 'fastify',
  async start(manager) {
    const app = Fastify();
    app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) =>
      done(null, Object.fromEntries(new URLSearchParams(body as string))),
    );
    await app.register(sessionPlugin(manager));
    app.addHook('preHandler', csrfPreHandler(manager));
    app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
      if (err instanceof CsrfError) return reply.code(403).send({ code: err.code, reason: err.reason });
      return reply.code(err.statusCode ?? 500).send({ code: err.code ?? null });
    });
    app.get('/form', async (req) => ({ token: req.session.csrf.token() }));
    app.post<{ Body: Body }>('/login', async (req, reply) => {
      await req.session.login(req.body.user!);
      req.session.set('profile', { name: req.body.name, plan: 'free' });
      req.session.flash.success(`welcome ${req.body.name}`);
      return reply.redirect('/me', 303);
    });
    app.get('/me', async (req, reply) => {
      const s = req.session;
      const me = { user: s.userId ?? null, profile: s.get('profile') ?? null, cart: s.bag('cart').all() };
      return reply.code(s.userId ? 200 : 401).send(me);
    });
    app.post<{ Body: Body }>('/cart', async (req) => {
      req.session.bag<Record<string, number>>('cart').set(req.body.item!, Number(req.body.qty));
      return { ok: true };
    });
    app.get('/flash', async (req) => ({ messages: req.session.flash.messages('success') }));
    app.post('/logout', async (req) => {
      await req.session.logout();
      return { ok: true };
    });
    const url = await app.listen({ host: '127.0.0.1', port: 0 });
    return { url, close: () => app.close() };
  },
};
export default adapter;
