/**
 * The data your application keeps in its sessions, declared once for the whole app by
 * declaration merging, as with express-session. It is the default data type of `Session`,
 * `SessionManager` and every integration (`req.session` in Express, `request.session` in
 * Fastify, `attachSession`, `withSession`, `withFetchSession`), so a key typo or a value of the
 * wrong type is a compile error everywhere:
 *
 * @example
 * declare module 'sessionflow' {
 *   interface SessionData {
 *     user_id: number;
 *     cart: string[];
 *   }
 * }
 *
 * While it declares no key, sessions take any key with values of type `unknown`. Prefer a type
 * per manager? `new SessionManager<MyData>(...)` types the sessions that manager loads.
 */
// biome-ignore lint/suspicious/noEmptyInterface: an extension point, filled by declaration merging.
export interface SessionData {}

/** {@link SessionData} once the application declares a key in it; any key until then. */
export type DefaultSessionData = [keyof SessionData] extends [never] ? Record<string, unknown> : SessionData;

/**
 * The data types a manager may have for its sessions to stand as the app-wide `req.session`
 * (Express) or `request.session` (Fastify): any, while {@link SessionData} declares no key;
 * then a type with at least SessionData's keys, so that `req.session` cannot misdescribe them.
 */
export type MountableSessionData = [keyof SessionData] extends [never] ? object : SessionData;
