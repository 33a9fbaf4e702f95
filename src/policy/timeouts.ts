import type { ResolvedOptions } from '../options.js';
import type { SessionMeta } from '../stores/store.js';

/** Why a stored session is dead at `now`, or undefined if it is alive. Enforced on the server. */
export function expiryReason(
  options: Pick<ResolvedOptions, 'idleTimeout'>,
  meta: SessionMeta,
  now: number,
): 'absolute' | 'idle' | undefined {
  if (!(now < meta.deadline)) return 'absolute';
  if (!(now - meta.lastSeenAt < options.idleTimeout)) return 'idle';
  return undefined;
}

/** Remaining lifetime of a session: the idle window, never past the absolute deadline. */
export function remainingTtl(
  options: Pick<ResolvedOptions, 'idleTimeout'>,
  meta: SessionMeta,
  now: number,
): number {
  return Math.min(meta.lastSeenAt + options.idleTimeout, meta.deadline) - now;
}

/**
 * The TTL handed to the store: the remaining lifetime plus `expiredRetention`. The manager
 * refuses a record by its metadata the moment the session expires (SM-28), so the margin never
 * extends a session; it keeps the record findable long enough to tell a returning client why its
 * session ended (`session_expired` with 'idle' or 'absolute') instead of "unknown ID".
 */
export function storeTtl(
  options: Pick<ResolvedOptions, 'idleTimeout' | 'expiredRetention'>,
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
