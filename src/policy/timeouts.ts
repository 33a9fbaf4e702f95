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

/** Remaining lifetime for the store's TTL: the idle window, never past the absolute deadline. */
export function remainingTtl(
  options: Pick<ResolvedOptions, 'idleTimeout'>,
  meta: SessionMeta,
  now: number,
): number {
  return Math.min(meta.lastSeenAt + options.idleTimeout, meta.deadline) - now;
}

/** A throttled touch is due when the idle timer was last refreshed at least `touchInterval` ago. */
export function shouldTouch(
  options: Pick<ResolvedOptions, 'touchInterval'>,
  meta: SessionMeta,
  now: number,
): boolean {
  return now - meta.lastSeenAt >= options.touchInterval;
}
