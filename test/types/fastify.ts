// Fastify (`sessionflow/fastify`): `request.session` is a Session<SessionData> in every hook and
// handler, with no cast and no type argument.
import Fastify from 'fastify';
import { type Session, type SessionData, SessionManager } from 'sessionflow';
import { csrfPreHandler, sessionPlugin } from 'sessionflow/fastify';
import { type Exact, expectType } from './assert.js';

const secret = 'a-secret-of-at-least-32-characters!!';
const sessions = new SessionManager({ secret });
const app = Fastify();
await app.register(sessionPlugin(sessions));

app.get('/cart', async (request) => {
  expectType<Exact<typeof request.session, Session<SessionData>>>();
  const cart = request.session.get('cart', []);
  expectType<Exact<typeof cart, string[]>>();
  request.session.set('cart', [...cart, 'item3']);
  return { cart, user: request.session.get('user_id') ?? null };
});

app.post('/login', { preHandler: csrfPreHandler(sessions) }, async (request, reply) => {
  await request.session.login(42);
  request.session.set('user_id', 42);
  // @ts-expect-error a key typo
  request.session.set('userId', 42);
  // @ts-expect-error a key typo
  request.session.has('carts');
  // @ts-expect-error a value of the wrong type
  request.session.set('user_id', '42');
  // @ts-expect-error a fallback of the wrong type
  request.session.get('cart', {});
  return reply.redirect('/cart', 303);
});

app.addHook('preHandler', async (request) => {
  const user = request.session.get('user_id', 0);
  expectType<Exact<typeof user, number>>();
  // @ts-expect-error a key typo in a hook
  request.session.remove('themes');
});

// The generic form: a manager typed with an interface that has the app's keys (and more).
interface AdminData extends SessionData {
  impersonating: number | null;
}
const admins = new SessionManager<AdminData>({ secret });
await app.register(sessionPlugin<AdminData>(admins));
app.post('/admin', { preHandler: csrfPreHandler(admins) }, async () => ({ ok: true }));

// A manager whose data type lacks the app's keys cannot stand as `request.session`.
const unrelated = new SessionManager<{ visits: number }>({ secret });
// @ts-expect-error `request.session` says SessionData; this manager's sessions do not have its keys
sessionPlugin(unrelated);
