import { UAParser } from 'ua-parser-js';
import type { ClientInfo } from '../../src/index.js';

/** What the demo remembers about the client of one signed-in session. */
export interface DeviceSeen {
  userId: string;
  /** The user agent the session signed in with (at most {@link MAX_USER_AGENT} characters). */
  userAgent: string | undefined;
  /** The client address of the latest request on the session. */
  ip: string | undefined;
  /** When this process last saw a request on the session (ms since epoch). */
  seenAt: number;
}

/** Longer user agents are cut: the header is attacker-controlled and only shown, never parsed twice. */
export const MAX_USER_AGENT = 512;

/**
 * DEMO ONLY: device and address of each signed-in session, keyed by the session's record id.
 *
 * The library's `sessionsOf` lists what it stores about a session (user, created, last seen,
 * authenticated at), not where it comes from, so the demo keeps the rest here, in this
 * process's memory: it is empty after a restart and not shared between processes, so the
 * sessions page shows "unknown device" for sessions it has not seen. Which sessions are alive
 * always comes from the store; this only decorates the list. A real application keeps such
 * facts in its own database (a "devices" table keyed by `session.id`), pruned the same way.
 *
 * Bounded: beyond `max` entries the least recently seen is dropped (it only loses its label).
 */
export class DeviceRegistry {
  readonly #entries = new Map<string, DeviceSeen>();
  readonly #max: number;

  constructor(max = 10_000) {
    this.#max = max;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** At login: the device the session signs in with. */
  signedIn(sid: string, userId: string, client: ClientInfo, now: number): void {
    this.#put(sid, { userId, userAgent: clip(client.userAgent), ip: clip(client.ip), seenAt: now });
  }

  /**
   * On every signed-in request: last address and time. A session this process has not seen
   * sign in (restart, another process) gets the request's user agent as its device.
   */
  seen(sid: string, userId: string, client: ClientInfo, now: number): void {
    const known = this.#entries.get(sid);
    const userAgent = known && known.userId === userId ? known.userAgent : clip(client.userAgent);
    this.#put(sid, { userId, userAgent, ip: clip(client.ip), seenAt: now });
  }

  get(sid: string): DeviceSeen | undefined {
    return this.#entries.get(sid);
  }

  forget(sid: string): void {
    this.#entries.delete(sid);
  }

  /** Drops the user's entries, except `except` (after "sign out other devices"). */
  forgetUser(userId: string, except?: string): void {
    for (const [sid, entry] of this.#entries) {
      if (entry.userId === userId && sid !== except) this.#entries.delete(sid);
    }
  }

  /** Drops the user's entries whose session is no longer alive (`live`: ids from `sessionsOf`). */
  prune(userId: string, live: ReadonlySet<string>): void {
    for (const [sid, entry] of this.#entries) {
      if (entry.userId === userId && !live.has(sid)) this.#entries.delete(sid);
    }
  }

  #put(sid: string, entry: DeviceSeen): void {
    // Re-insert so the Map's order is least recently seen first.
    this.#entries.delete(sid);
    this.#entries.set(sid, entry);
    while (this.#entries.size > this.#max) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
  }
}

function clip(value: string | undefined): string | undefined {
  if (value === undefined || value === '') return undefined;
  return value.length > MAX_USER_AGENT ? value.slice(0, MAX_USER_AGENT) : value;
}

/**
 * A person's name for a user agent: "Chrome 156 on Linux", "Mobile Safari 17 on iOS 17.4
 * (Apple iPhone)"; `known` is false when nothing could be recognised (curl, a bot, garbage).
 * Plain text: the caller escapes it like any other text.
 */
export function describeDevice(userAgent: string | undefined): { label: string; known: boolean } {
  if (!userAgent) return { label: 'Unknown device', known: false };
  const { browser, os, device } = UAParser(userAgent);
  const browserName = browser.name ? [browser.name, browser.major].filter(Boolean).join(' ') : undefined;
  const osName = os.name ? [os.name, os.version].filter(Boolean).join(' ') : undefined;
  const model = [device.vendor, device.model].filter(Boolean).join(' ');
  if (!browserName && !osName) return { label: 'Unknown device', known: false };
  const label = `${browserName ?? 'Unknown browser'}${osName ? ` on ${osName}` : ''}${model ? ` (${model})` : ''}`;
  return { label, known: true };
}
