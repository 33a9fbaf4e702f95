import { createHash } from 'node:crypto';
import type { ResolvedOptions } from '../options.js';
import type { SessionDelta, SessionMeta, StoredSession } from '../stores/store.js';

/** Renewal settings once resolved (renewal on). */
export type Renewal = Exclude<ResolvedOptions['renewal'], false>;

/** When the record's current ID was issued: its last regeneration, else its creation. */
export function idIssuedAt(meta: SessionMeta): number {
  return meta.idAt ?? meta.createdAt;
}

/** A scheduled renewal is due once the ID is `interval` old (SM-24). */
export function renewalDue(renewal: Renewal, meta: SessionMeta, now: number): boolean {
  return now - idIssuedAt(meta) >= renewal.interval;
}

/** The record was renewed away: it only points to its successor now (and later, a tombstone). */
export function isRenewedAway(meta: SessionMeta): meta is SessionMeta & { renewedAt: number } {
  return meta.renewedAt !== undefined;
}

/** Within the grace window a renewed-away ID still stands for its successor. */
export function withinGrace(grace: number, meta: SessionMeta & { renewedAt: number }, now: number): boolean {
  return now - meta.renewedAt < grace;
}

/**
 * The store key of the renewal claim for `key`. The store contract's only atomic conditional
 * write is `create`, so concurrent requests that all find the same ID due elect one renewer by
 * creating this record; the losers read it to learn the successor. Derived with a domain prefix,
 * so no token can hash to it and it never collides with a session key.
 */
export function renewalClaimKey(key: string): string {
  return createHash('sha256').update(`sessionflow:renewal\0${key}`).digest('base64url');
}

/** The claim record: a pointer to the successor, alive for the grace window only. */
export function renewalClaim(successor: string, now: number, grace: number): StoredSession {
  return {
    meta: { createdAt: now, lastSeenAt: now, deadline: now + grace, renewedAt: now, successor },
    values: {},
  };
}

/**
 * Turns the old record into a pointer to its successor. Its values are dropped: nothing reads
 * them any more (requests with the old ID are served from the successor), and a dead ID should
 * not keep data. `userId` stays, so a reuse after the grace window can be tied to the user.
 */
export function renewedAwayDelta(successor: string, now: number, fields: readonly string[]): SessionDelta {
  return { set: {}, unset: [...fields], meta: { renewedAt: now, successor } };
}
