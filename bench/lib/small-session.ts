/**
 * The small session the memory store's size target is set for (bench/README.md, "Targets"): one
 * value, and every tenth signed in. `bench/fill.ts` fills the stores with it and
 * test/stores/memory-size.test.ts holds the memory store's bytes for it.
 */
import { createHash } from 'node:crypto';
import type { SessionMeta, StoredSession } from '../../src/stores/store.js';

export const DAY = 86_400_000;
export const SIGNED_IN_EVERY = 10;

/** Session i's key in space `space`: SHA-256 of `<space>:<i>`, base64url (PostgreSQL computes the same). */
export function sessionKey(space: string, i: number): string {
  return createHash('sha256').update(`${space}:${i}`).digest('base64url');
}

/** Session i as the manager hands it to `create` (fresh strings and numbers, as per request). */
export function smallSession(space: string, i: number, now: number): StoredSession {
  const h = createHash('sha256').update(`h:${space}:${i}`).digest('base64url');
  const meta: SessionMeta =
    i % SIGNED_IN_EVERY === 0
      ? {
          createdAt: now,
          deadline: now + DAY,
          userId: `user-${i}`,
          authAt: now,
          lastSeenAt: now,
          h,
          idAt: now,
        }
      : { createdAt: now, deadline: now + DAY, lastSeenAt: now, h, idAt: now };
  return { meta, values: { 'v:k': JSON.stringify('hello') } };
}
