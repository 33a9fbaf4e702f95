/**
 * The contract every integration adapter of the scenario matrix implements. Each file in
 * `./adapters/` default-exports one {@link MatrixAdapter}; `matrix.test.ts` loads them all and
 * runs the same scenarios against each, unchanged. An adapter is the smallest idiomatic app of its
 * framework serving the routes below with sessionflow's integration for that framework.
 *
 * Routes (every body is JSON; the session cookie is the manager's, see `MATRIX_COOKIE`):
 *
 * - `GET /form` → 200 `{ token }`: the session's CSRF token (`session.csrf.token()`).
 * - `POST /login` (CSRF-protected; body JSON or `application/x-www-form-urlencoded`:
 *   `{ user, name, _csrf? }`, the token in the `_csrf` field or the `x-csrf-token` header) →
 *   `await session.login(user)`, `session.set('profile', { name, plan: 'free' })`,
 *   `session.flash.success(`welcome ${name}`)`, then 303 `Location: /me` (or 200).
 * - `GET /me` → `{ user, profile, cart }` (`user`: `session.userId ?? null`, `profile`:
 *   `session.get('profile') ?? null` — a typed read, `cart`: `session.bag('cart').all()`);
 *   status 200 when logged in, 401 otherwise (same body).
 * - `POST /cart` (CSRF-protected; JSON `{ item, qty }`) → `session.bag('cart').set(item, qty)`
 *   (a typed write of one key), 200 `{ ok: true }`.
 * - `GET /flash` → 200 `{ messages }`: `session.flash.messages('success')` (consumed: shown once).
 * - `POST /logout` (CSRF-protected) → `await session.logout()`, 200 `{ ok: true }` (or 303).
 *
 * Errors: a CSRF refusal (a `CsrfError`) answers 403 `{ code: 'CSRF_INVALID', reason }`;
 * a store outage answers 503 without any `Set-Cookie` (the integration's own rendering, or
 * the framework's error handler given the SessionError's status).
 */

import type { Server } from 'node:http';
import { serve } from '@hono/node-server';
import type { CsrfRefusal } from '../../../src/features/csrf.js';
import type { SessionManager } from '../../../src/index.js';

/** The typed session data of the matrix app (passed as the manager's type argument). */
export interface MatrixData {
  profile: { name: string; plan: 'free' | 'pro' };
}

/** The body of `GET /me`. */
export interface MeBody {
  user: string | null;
  profile: MatrixData['profile'] | null;
  cart: Record<string, number>;
}

/** The body of a refused request (CSRF: 403). */
export interface RefusalBody {
  code: string | null;
  reason?: CsrfRefusal;
}

/** The session cookie name every matrix manager uses. */
export const MATRIX_COOKIE = 'sid';

/** A running adapter app. */
export interface StartedApp {
  /** Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash). */
  url: string;
  close(): Promise<void>;
}

export interface MatrixAdapter {
  /** Shown in the test names: `node:http`, `express4`, `hono`, `next`… */
  name: string;
  /**
   * Serves the app above over HTTP on 127.0.0.1 (port 0) with `manager`'s sessions. The
   * manager is built by the matrix (store, cookie `secure: false`, name {@link MATRIX_COOKIE});
   * the adapter must not wrap or replace it.
   */
  start(manager: SessionManager<MatrixData>): Promise<StartedApp>;
  /**
   * Scenarios this integration cannot run yet, by scenario id (see `matrix.test.ts`), each
   * with the reason; they are reported as skipped, never silently dropped.
   */
  skip?: Partial<Record<string, string>>;
}

/**
 * Serves a Fetch handler on 127.0.0.1 through @hono/node-server used only as a plain
 * Fetch-to-node:http bridge (globals untouched), for the adapters whose apps are Fetch handlers.
 */
export async function serveFetch(
  fetch: (request: Request) => Response | Promise<Response>,
  bridgeOnly = true,
): Promise<StartedApp> {
  const server = await new Promise<Server>((resolve) => {
    const s = serve(
      { fetch, port: 0, hostname: '127.0.0.1', ...(bridgeOnly ? { overrideGlobalObjects: false } : {}) },
      () => resolve(s as Server),
    );
  });
  const address = server.address();
  return {
    url: `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
