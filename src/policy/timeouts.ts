import type { ResolvedOptions } from '../options.js';
import type { SessionMeta } from '../stores/store.js';

type IdleOptions = Pick<ResolvedOptions, 'idleTimeout'> &
  Partial<Pick<ResolvedOptions, 'anonymousIdleTimeout'>>;

/**
 * The idle timeout that applies to a session: `anonymousIdleTimeout` until a user logs in (a
 * visitor's cart or flash need not outlive a short visit), `idleTimeout` after.
 */
export function idleTimeoutOf(options: IdleOptions, meta: SessionMeta): number {
  return meta.userId === undefined
    ? (options.anonymousIdleTimeout ?? options.idleTimeout)
    : options.idleTimeout;
}

/** Why a stored session is dead at `now`, or undefined if it is alive. Enforced on the server. */
export function expiryReason(
  options: IdleOptions,
  meta: SessionMeta,
  now: number,
): 'absolute' | 'idle' | undefined {
  if (!(now < meta.deadline)) return 'absolute';
  if (!(now - meta.lastSeenAt < idleTimeoutOf(options, meta))) return 'idle';
  return undefined;
}

/** Remaining lifetime of a session: the idle window, never past the absolute deadline. */
export function remainingTtl(options: IdleOptions, meta: SessionMeta, now: number): number {
  return Math.min(meta.lastSeenAt + idleTimeoutOf(options, meta), meta.deadline) - now;
}

/**
 * The TTL handed to the store: the remaining lifetime plus `expiredRetention`. The manager
 * refuses a record by its metadata the moment the session expires (SM-28), so the margin never
 * extends a session; it keeps the record findable long enough to tell a returning client why its
 * session ended (`session_expired` with 'idle' or 'absolute') instead of "unknown ID".
 */
export function storeTtl(
  options: IdleOptions & Pick<ResolvedOptions, 'expiredRetention'>,
  meta: SessionMeta,
  now: number,
): number {
  return remainingTtl(options, meta, now) + options.expiredRetention;
}

/** A throttled touch is due when the idle timer was last refreshed at least `touchInterval` ago. */
export function shouldTouch(
  options: Pick<ResolvedOptions, 'touchInterval'>,
  meta: SessionMeta,
  now: number,
): boolean {
  return now - meta.lastSeenAt >= options.touchInterval;
}
