import type { ResolvedOptions } from '../options.js';
import type { SessionMeta } from '../stores/store.js';

/** Renewal settings once resolved (renewal on). */
export type Renewal = Exclude<ResolvedOptions['renewal'], false>;

/** When the record's current handle was issued: its last ID change, else its creation. */
export function idIssuedAt(meta: SessionMeta): number {
  return meta.idAt ?? meta.createdAt;
}

/** A scheduled renewal is due once the ID is `interval` old (SM-24). */
export function renewalDue(renewal: Renewal, meta: SessionMeta, now: number): boolean {
  return now - idIssuedAt(meta) >= renewal.interval;
}

/**
 * How a cookie's handle relates to the record it names:
 * - 'current': it is the record's handle;
 * - 'grace': it is the handle the last renewal replaced, still within its grace window (a
 *   request that was in flight, or a browser that has not seen the renewing response yet);
 * - 'replaced': it is the handle the last ID change replaced, past its grace (or an explicit ID
 *   change, which has none): a reuse of a retired ID;
 * - 'foreign': it matches neither (an older handle, or a guess).
 */
export type HandleAccess = 'current' | 'grace' | 'replaced' | 'foreign';

/**
 * `String.prototype.charCodeAt`, called through `.call`: `a.charCodeAt(i)` is a property lookup
 * on the string, and with handles from the cookie (sliced strings) and from the record (flat
 * ones) V8's optimized code made it a generic IC call, 86 of them per request (callgrind: about
 * 10,000 instructions, a third of sessionflow's work on a read). Called on a constant function,
 * the optimizing compiler inlines the character load.
 */
const charCodeAt = String.prototype.charCodeAt;

/** Constant-time equality of two hash strings (no allocation: this runs on every request). */
function same(a: string | undefined, b: string): boolean {
  if (a === undefined || a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= charCodeAt.call(a, i) ^ charCodeAt.call(b, i);
  return diff === 0;
}

export function handleAccess(meta: SessionMeta, handle: string, now: number): HandleAccess {
  if (same(meta.h, handle)) return 'current';
  if (!same(meta.ph, handle)) return 'foreign';
  return meta.phUntil !== undefined && now < meta.phUntil ? 'grace' : 'replaced';
}

/**
 * The metadata of an ID change: the new handle, the one it replaces (kept to recognise a reuse)
 * and, for a scheduled renewal, the grace window during which the replaced one still works.
 */
export function rotatedMeta(
  newHandle: string,
  oldHandle: string | null,
  now: number,
  grace: number,
): Partial<SessionMeta> {
  return {
    h: newHandle,
    ph: oldHandle ?? undefined,
    phUntil: grace > 0 ? now + grace : undefined,
    idAt: now,
  };
}
