import { createServer } from 'node:http';
import express, { type ErrorRequestHandler } from 'express';
import { CsrfError, csrfProtection, session } from '../../../../src/integrations/express.js';
import { listen } from '../../../helpers/session-kit.js';
import type { MatrixAdapter } from '../adapter.js';

/** The same app on any Express major: `express` is the framework's default export. */
export function expressAdapter(name: string, framework: typeof express): MatrixAdapter {
  return {
    name,
    async start(manager) {
      const app = framework();
      app.use(framework.urlencoded({ extended: false }), framework.json());
      app.use(session(manager), csrfProtection(manager));
      app.get('/form', (req, res) => {
        res.json({ token: req.session.csrf.token() });
      });
      app.post('/login', async (req, res) => {
        await req.session.login(req.body.user);
        req.session.set('profile', { name: req.body.name, plan: 'free' });
        req.session.flash.success(`welcome ${req.body.name}`);
        res.redirect(303, '/me');
      });
      app.get('/me', (req, res) => {
        const s = req.session;
        res
          .status(s.userId ? 200 : 401)
          .json({ user: s.userId ?? null, profile: s.get('profile') ?? null, cart: s.bag('cart').all() });
      });
      app.post('/cart', (req, res) => {
        req.session.bag<Record<string, number>>('cart').set(req.body.item, Number(req.body.qty));
        res.json({ ok: true });
      });
      app.get('/flash', (req, res) => {
        res.json({ messages: req.session.flash.messages('success') });
      });
      app.post('/logout', async (req, res) => {
        await req.session.logout();
        res.json({ ok: true });
      });
      const onError: ErrorRequestHandler = (err, _req, res, _next) => {
        if (err instanceof CsrfError) res.status(403).json({ code: err.code, reason: err.reason });
        else res.status(err.status ?? 500).json({ code: err.code ?? null });
      };
      app.use(onError);
      return listen(createServer(app));
    },
  };
}

export default expressAdapter('express5', express);
