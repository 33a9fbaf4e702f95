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

/** What the limiter needs from the manager. */
export interface LimitContext {
  /** The user's live sessions (throws NOT_SUPPORTED / STORE_UNAVAILABLE). */
  list(userId: string): Promise<SessionSummary[]>;
  /** Revokes one session (with its audit event). */
  revoke(sid: string, reason: string, userId: string): Promise<void>;
  /** Emits `excess_sessions_exceeded`. */
  report(sid: string | null, userId: string, reason: string): void;
  warn(message: string): void;
}

/**
 * `maxSessionsPerUser` (SM-38): checked before a login with 'refuse' (so the handler can answer
 * "too many sessions" itself), and enforced once the login has committed.
 */
export class SessionLimiter {
  readonly #limit: Limit;
  readonly #ctx: LimitContext;

  constructor(limit: Limit, ctx: LimitContext) {
    this.#limit = limit;
    this.#ctx = ctx;
  }

  /** Before a login: true if 'refuse' turns it down. `current` is the session logging in. */
  async refuses(userId: string, current: string | null): Promise<boolean> {
    if (this.#limit.onExceed !== 'refuse') return false;
    const others = (await this.#ctx.list(userId)).filter((s) => s.key !== current);
    const refused = sessionLimitVerdict(this.#limit, others).refuse;
    if (refused) this.#ctx.report(current, userId, `refused: limit of ${this.#limit.limit}`);
    return refused;
  }

  /**
   * After the login of `sid` committed: evicts the oldest others over the limit, or answers
   * true ('refuse': a concurrent login took the last place; the caller ends `sid`).
   */
  async enforce(sid: string, userId: string): Promise<boolean> {
    const limit = this.#limit;
    let others: SessionSummary[];
    try {
      others = (await this.#ctx.list(userId)).filter((s) => s.key !== sid);
    } catch (err) {
      // Refusing fails closed; evicting is housekeeping that must not cost the user the login.
      if (limit.onExceed === 'refuse') throw err;
      this.#ctx.warn(`could not enforce maxSessionsPerUser: ${(err as Error).message}`);
      return false;
    }
    const verdict = sessionLimitVerdict(limit, others);
    if (verdict.refuse) {
      this.#ctx.report(sid, userId, `refused: limit of ${limit.limit}`);
      return true;
    }
    if (verdict.evict.length === 0) return false;
    this.#ctx.report(sid, userId, `evict-oldest: ${verdict.evict.length} over the limit of ${limit.limit}`);
    for (const s of verdict.evict) {
      try {
        await this.#ctx.revoke(s.key, 'session-limit', userId);
      } catch (err) {
        this.#ctx.warn(`could not evict a session over maxSessionsPerUser: ${(err as Error).message}`);
      }
    }
    return false;
  }
}
