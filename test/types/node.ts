// node:http (`sessionflow/node`): the session has the manager's data type, the app's
// SessionData by default, or any type (an interface too) given to the manager.
import { createServer } from 'node:http';
import { type Session, type SessionData, SessionManager } from 'sessionflow';
import { attachSession, withSession } from 'sessionflow/node';
import { type Exact, expectType } from './assert.js';

const secret = 'a-secret-of-at-least-32-characters!!';
const sessions = new SessionManager({ secret });

createServer(async (req, res) => {
  const session = await attachSession(sessions, req, res);
  expectType<Exact<typeof session, Session<SessionData>>>();
  const cart = session.get('cart', []);
  expectType<Exact<typeof cart, string[]>>();
  session.set('cart', [...cart, 'item3']);
  // @ts-expect-error a key typo
  session.get('crat');
  // @ts-expect-error a value of the wrong type
  session.set('user_id', '42');
  res.end();
});

createServer(
  withSession(sessions, async (_req, res, session) => {
    expectType<Exact<typeof session, Session<SessionData>>>();
    session.set('user_id', 42);
    // @ts-expect-error a key typo
    session.set('userid', 42);
    // @ts-expect-error a value of the wrong type
    session.set('theme', 'blue');
    res.end();
  }),
);

// The generic form: the data type flows from the manager, an interface included.
interface Counter {
  visits: number;
}
const counters = new SessionManager<Counter>({ secret });

createServer(async (req, res) => {
  const session = await attachSession(counters, req, res);
  expectType<Exact<typeof session, Session<Counter>>>();
  session.set('visits', session.get('visits', 0) + 1);
  // @ts-expect-error a key typo
  session.get('visit');
  // @ts-expect-error a value of the wrong type
  session.set('visits', '1');
  // @ts-expect-error a key of SessionData is not a key of this manager's data
  session.get('cart');
  res.end();
});

createServer(
  withSession(counters, async (_req, res, session) => {
    expectType<Exact<typeof session, Session<Counter>>>();
    session.set('visits', 1);
    // @ts-expect-error a value of the wrong type
    session.set('visits', null);
    res.end();
  }),
);
