// The core types: `SessionData` is the default data type of Session and SessionManager, and an
// interface is accepted wherever a data type is.
import { type Session, type SessionData, SessionManager } from 'sessionflow';
import { type Exact, expectType } from './assert.js';

declare const session: Session;

// The default data type is the app's SessionData.
expectType<Exact<Session, Session<SessionData>>>();
expectType<Exact<SessionManager, SessionManager<SessionData>>>();
expectType<Exact<Awaited<ReturnType<SessionManager['load']>>, Session<SessionData>>>();

// Correct usage compiles, with the declared types.
const cart = session.get('cart', []);
expectType<Exact<typeof cart, string[]>>();
const user = session.get('user_id');
expectType<Exact<typeof user, number | undefined>>();
expectType<Exact<ReturnType<typeof session.keys>, string[]>>();
session
  .set('cart', [...cart, 'item3'])
  .set('user_id', 42)
  .set('theme', 'dark');
session.has('theme');
session.remove('theme');

// @ts-expect-error a key typo in get
session.get('crat');
// @ts-expect-error a key typo in set
session.set('user', 42);
// @ts-expect-error a key typo in has
session.has('userid');
// @ts-expect-error a key typo in remove
session.remove('them');
// @ts-expect-error a value of the wrong type
session.set('user_id', '42');
// @ts-expect-error a fallback of the wrong type
session.get('cart', 'item');
// @ts-expect-error a value outside a union
session.set('theme', 'blue');
// @ts-expect-error the value read has its declared type, not the one assumed
const id: string | undefined = session.get('user_id');

// An interface is a valid data type (TS2344 before), for a manager as for a session.
interface Preferences {
  locale: string;
  pageSize: number;
}
const preferences = new SessionManager<Preferences>({ secret: 'a-secret-of-at-least-32-characters!!' });
declare const prefs: Awaited<ReturnType<typeof preferences.load>>;
expectType<Exact<typeof prefs, Session<Preferences>>>();
const pageSize = prefs.get('pageSize', 20);
expectType<Exact<typeof pageSize, number>>();
prefs.set('locale', 'fr-FR');
// @ts-expect-error a key of the app's SessionData is not a key of Preferences
prefs.get('cart');
// @ts-expect-error a value of the wrong type
prefs.set('pageSize', '20');

export { id };
