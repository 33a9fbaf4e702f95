import type { ResolvedOptions } from '../options.js';
import type { SessionSummary } from '../stores/store.js';

type Limit = Exclude<ResolvedOptions['maxSessionsPerUser'], false>;

/** What a login over the limit leads to: refuse it, or evict these sessions. */
export type LimitVerdict = { refuse: true } | { refuse: false; evict: SessionSummary[] };

/** Oldest first, by time of authentication (else creation); ties broken by key, so every observer agrees. */
export function byAge(a: SessionSummary, b: SessionSummary): number {
  const age = (a.meta.authAt ?? a.meta.createdAt) - (b.meta.authAt ?? b.meta.createdAt);
  if (age !== 0) return age;
  if (a.meta.createdAt !== b.meta.createdAt) return a.meta.createdAt - b.meta.createdAt;
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

/**
 * Applies `maxSessionsPerUser` to a user who now holds the new session plus `others` (SM-38).
 * 'refuse' refuses whenever the total is over the limit: two logins racing for the last place
 * may then both be refused, never both admitted. 'evict-oldest' evicts the oldest of the others,
 * never the new session.
 */
export function sessionLimitVerdict(limit: Limit, others: readonly SessionSummary[]): LimitVerdict {
  const excess = others.length + 1 - limit.limit;
  if (excess <= 0) return { refuse: false, evict: [] };
  if (limit.onExceed === 'refuse') return { refuse: true };
  return { refuse: false, evict: [...others].sort(byAge).slice(0, excess) };
}
