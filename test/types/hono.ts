// Hono (`sessionflow/hono`): `c.get('session')` is a Session<SessionData> in every handler of an
// app that puts SessionEnv (or SessionVariables) in its generic, or chains `.use(session(...))`.
import type { HttpBindings } from '@hono/node-server';
import { Hono } from 'hono';
import { type Session, type SessionData, SessionManager } from 'sessionflow';
import { csrfProtection, type SessionEnv, type SessionVariables, session } from 'sessionflow/hono';
import { type Exact, expectType } from './assert.js';

const secret = 'a-secret-of-at-least-32-characters!!';
const sessions = new SessionManager({ secret });

const app = new Hono<SessionEnv>();
app.use(session(sessions));
app.use(csrfProtection(sessions));

app.get('/cart', (c) => {
  const s = c.get('session');
  expectType<Exact<typeof s, Session<SessionData>>>();
  const cart = s.get('cart', []); // the README's example: typed string[]
  expectType<Exact<typeof cart, string[]>>();
  s.set('cart', [...cart, 'item3']);
  const user = s.get('user_id');
  expectType<Exact<typeof user, number | undefined>>();
  return c.json(cart);
});

app.post('/login', async (c) => {
  const s = c.get('session');
  await s.login(42);
  s.set('user_id', 42);
  s.flash.success('Welcome back!');
  // @ts-expect-error a key typo
  s.set('userId', 42);
  // @ts-expect-error a key typo
  s.get('carts');
  // @ts-expect-error a value of the wrong type
  s.set('user_id', '42');
  // @ts-expect-error a value of the wrong type
  s.set('cart', 'item3');
  // @ts-expect-error a fallback of the wrong type
  s.get('user_id', '0');
  // @ts-expect-error a value outside the declared union
  s.set('theme', 'blue');
  // @ts-expect-error the variable is `session`, not a typo of it
  c.get('sesion');
  return c.redirect('/cart', 303);
});

// With the node server's bindings next to the variables.
const onNode = new Hono<{ Bindings: HttpBindings; Variables: SessionVariables }>();
onNode.use(session(sessions, { peerAddress: (c) => c.req.header('x-real-ip') }));
onNode.get('/', (c) => {
  const s = c.get('session');
  expectType<Exact<typeof s, Session<SessionData>>>();
  s.set('theme', 'dark');
  return c.text(c.env.incoming.socket.remoteAddress ?? '');
});

// The chained form: `.use(session(...))` adds the variable to the routes that follow.
new Hono().use(session(sessions)).get('/', (c) => {
  const s = c.get('session');
  expectType<Exact<typeof s, Session<SessionData>>>();
  // @ts-expect-error a key typo
  s.set('user', 1);
  return c.text('ok');
});

// The generic form: a manager typed with an interface; the session has that type.
interface Counter {
  visits: number;
}
const counters = new SessionManager<Counter>({ secret });
const counted = new Hono<SessionEnv<Counter>>();
counted.use(session(counters));
counted.use(csrfProtection(counters));
counted.get('/', (c) => {
  const s = c.get('session');
  expectType<Exact<typeof s, Session<Counter>>>();
  s.set('visits', s.get('visits', 0) + 1);
  // @ts-expect-error a key typo on the manager's own data type
  s.set('visit', 1);
  // @ts-expect-error a value of the wrong type
  s.set('visits', '1');
  return c.text('ok');
});

// An app that did not declare the variable has no `session` to read.
new Hono().get('/', (c) => {
  // @ts-expect-error `session` is not among this app's variables
  c.get('session');
  return c.text('ok');
});
