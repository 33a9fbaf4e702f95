// Fetch API (`sessionflow/fetch`): the handler's session has the manager's data type, the app's
// SessionData by default, or any type (an interface too) given to the manager.
import { type Session, type SessionData, SessionManager } from 'sessionflow';
import { withFetchSession, withSessionHeaders } from 'sessionflow/fetch';
import { type Exact, expectType } from './assert.js';

const secret = 'a-secret-of-at-least-32-characters!!';
const sessions = new SessionManager({ secret });

export const cartRoute = withFetchSession(sessions, async (_request, session) => {
  expectType<Exact<typeof session, Session<SessionData>>>();
  const cart = session.get('cart', []);
  expectType<Exact<typeof cart, string[]>>();
  session.set('cart', [...cart, 'item3']);
  // @ts-expect-error a key typo
  session.get('crat');
  // @ts-expect-error a key typo
  session.set('userId', 42);
  // @ts-expect-error a value of the wrong type
  session.set('user_id', '42');
  // @ts-expect-error a fallback of the wrong type
  session.get('cart', null);
  return Response.json(cart);
});

// The generic form: the data type flows from the manager, an interface included.
interface Counter {
  visits: number;
}
const counters = new SessionManager<Counter>({ secret });

export const counterRoute = withFetchSession(counters, async (request, session) => {
  expectType<Exact<typeof session, Session<Counter>>>();
  const visits = session.get('visits', 0) + 1;
  session.set('visits', visits);
  // @ts-expect-error a key typo
  session.set('visit', visits);
  // @ts-expect-error a value of the wrong type
  session.set('visits', String(visits));
  // Lower-level use, as in a framework adapter: load, commit, copy the headers.
  const info = { cookieHeader: request.headers.get('cookie') ?? undefined, secure: true };
  const other = await counters.load(info);
  expectType<Exact<typeof other, Session<Counter>>>();
  return withSessionHeaders(new Response(String(visits)), await counters.commit(other, info), other);
});
