// Express (`sessionflow/express`): `req.session` is a Session<SessionData> in every handler,
// with no cast and no type argument.
import express, { Router } from 'express';
import { type Session, type SessionData, SessionManager } from 'sessionflow';
import { csrfProtection, session } from 'sessionflow/express';
import { type Exact, expectType } from './assert.js';

const secret = 'a-secret-of-at-least-32-characters!!';
const sessions = new SessionManager({ secret });
const app = express();
app.use(session(sessions));
app.use(csrfProtection(sessions));

app.get('/cart', (req, res) => {
  expectType<Exact<typeof req.session, Session<SessionData>>>();
  const cart = req.session.get('cart', []); // the README's example: typed string[]
  expectType<Exact<typeof cart, string[]>>();
  req.session.set('cart', [...cart, 'item3']);
  const user = req.session.get('user_id');
  expectType<Exact<typeof user, number | undefined>>();
  res.json(cart);
});

app.post('/login', async (req, res) => {
  await req.session.login(42);
  req.session.set('user_id', 42);
  req.session.flash.success('Welcome back!');
  // @ts-expect-error a key typo
  req.session.set('userId', 42);
  // @ts-expect-error a key typo
  req.session.get('carts');
  // @ts-expect-error a value of the wrong type
  req.session.set('user_id', '42');
  // @ts-expect-error a value of the wrong type
  req.session.set('cart', 'item3');
  // @ts-expect-error a fallback of the wrong type
  req.session.get('user_id', '0');
  res.redirect(303, '/cart');
});

// The same type on a Router's requests.
const router = Router();
router.post('/theme', (req, res) => {
  req.session.set('theme', 'dark');
  // @ts-expect-error a value outside the declared union
  req.session.set('theme', 'blue');
  res.end();
});
app.use(router);

// The generic form: a manager typed with an interface that has the app's keys (and more).
interface AdminData extends SessionData {
  impersonating: number | null;
}
const admins = new SessionManager<AdminData>({ secret });
app.use(session(admins));
app.use(session<AdminData>(admins));
app.use(csrfProtection(admins));
const adminSession = await admins.load({ cookieHeader: undefined, secure: true });
adminSession.set('impersonating', null);
// @ts-expect-error a key typo on the manager's own data type
adminSession.set('impersonate', 7);

// A manager whose data type lacks the app's keys cannot stand as `req.session`.
const unrelated = new SessionManager<{ visits: number }>({ secret });
// @ts-expect-error `req.session` says SessionData; this manager's sessions do not have its keys
app.use(session(unrelated));
// The CSRF middleware only reads the token, so any manager is accepted there.
app.use(csrfProtection(unrelated));
