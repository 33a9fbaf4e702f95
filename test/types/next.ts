// Next.js App Router (`sessionflow/next`): route handlers, Server Actions and Server Components
// get a Session of the manager's data type, the app's SessionData by default.
import type { NextRequest } from 'next/server.js';
import { type Session, type SessionData, SessionManager } from 'sessionflow';
import { commitSession, getSession, withActionSession, withSession } from 'sessionflow/next';
import { type Exact, expectType } from './assert.js';

const secret = 'a-secret-of-at-least-32-characters!!';
const sessions = new SessionManager({ secret });

// app/api/cart/[id]/route.ts: the context's type comes from the handler, as Next declares it.
export const POST = withSession(
  sessions,
  async (_request, session, { params }: { params: Promise<{ id: string }> }) => {
    expectType<Exact<typeof session, Session<SessionData>>>();
    const { id } = await params;
    const cart = session.get('cart', []);
    expectType<Exact<typeof cart, string[]>>();
    session.set('cart', [...cart, id]);
    // @ts-expect-error a key typo
    session.get('crat');
    // @ts-expect-error a value of the wrong type
    session.set('user_id', '42');
    return Response.json(cart);
  },
  { csrf: { origin: 'https://app.example' } },
);
// Next calls it with a NextRequest (a Request) and the route's context.
declare const nextRequest: NextRequest;
export const called: Promise<Response> = POST(nextRequest, { params: Promise.resolve({ id: 'a' }) });
// @ts-expect-error the context must be the one the handler declared
POST(nextRequest, { params: { id: 1 } });

// A Server Action: load, change, commit.
export async function addToCart(item: string): Promise<void> {
  const session = await getSession(sessions);
  expectType<Exact<typeof session, Session<SessionData>>>();
  session.set('cart', [...session.get('cart', []), item]);
  // @ts-expect-error a value of the wrong type
  session.set('cart', item);
  await commitSession(sessions, session);
}

// The wrapped form: the action's own arguments are kept.
interface Counter {
  visits: number;
}
const counters = new SessionManager<Counter>({ secret });
export const visit = withActionSession(counters, (session, by: number) => {
  expectType<Exact<typeof session, Session<Counter>>>();
  session.set('visits', session.get('visits', 0) + by);
  // @ts-expect-error a key typo
  session.set('visit', 1);
  return session.get('visits', 0);
});
expectType<Exact<typeof visit, (by: number) => Promise<number>>>();
// @ts-expect-error the action takes a number
visit('1');
// @ts-expect-error a session of another data type
commitSession(sessions, {} as Session<Counter>);
