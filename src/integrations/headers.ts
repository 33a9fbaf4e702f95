import type { CommitOutcome } from '../manager.js';
import type { Session } from '../session.js';

/** The minimal header API every integration's response offers (node, Fetch, Fastify). */
export interface HeaderTarget {
  append(name: string, value: string): void;
  set(name: string, value: string): void;
  has(name: string): boolean;
}

/**
 * Writes the headers a commit asks for: the session cookies, `Clear-Site-Data` on logout, and
 * `Cache-Control: no-store` on responses that carry a session cookie (always) or show session
 * state or an authenticated user (unless the app chose its own caching).
 */
export function writeSessionHeaders(
  target: HeaderTarget,
  out: CommitOutcome,
  session: Session<object>,
): void {
  for (const cookie of out.setCookie) target.append('Set-Cookie', cookie);
  if (out.clearSiteData) target.set('Clear-Site-Data', out.clearSiteData);
  if (out.setCookie.length > 0) target.set('Cache-Control', 'no-store');
  else if ((out.noStore || session.userId !== undefined) && !target.has('Cache-Control')) {
    target.set('Cache-Control', 'no-store');
  }
}
