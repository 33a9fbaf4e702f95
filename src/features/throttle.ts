/** Settings of the session-ID guessing detector, resolved (see `guessDetection` in the manager options). */
export interface GuessDetectionSettings {
  /** Invalid or unknown session cookies from one address, within `windowMs`, that raise the alert. */
  limit: number;
  windowMs: number;
  /** Addresses tracked at once; the least recently seen is forgotten beyond it. */
  maxAddresses: number;
}

interface Window {
  start: number;
  count: number;
}

/**
 * Detects session-ID guessing (OWASP Session Management cheat sheet, "Session ID Guessing and
 * Brute Force Detection"): counts the invalid or unknown session cookies each client address
 * sends in a fixed window. An address reaching the limit is reported once per window, so a flood
 * gives one alert, not one per request. Memory is bounded: a flood of spoofed addresses evicts
 * the least recently seen ones instead of growing the map.
 */
export class GuessDetector {
  readonly #settings: GuessDetectionSettings;
  readonly #now: () => number;
  readonly #windows = new Map<string, Window>();

  constructor(settings: GuessDetectionSettings, now: () => number) {
    this.#settings = settings;
    this.#now = now;
  }

  /** Records one event from `address`; true exactly when this one reaches the limit. */
  record(address: string): boolean {
    return this.add(address) === this.#settings.limit;
  }

  /** Records one event from `address` and returns how many it has in the current window. */
  add(address: string): number {
    const { windowMs, maxAddresses } = this.#settings;
    const now = this.#now();
    let window = this.#windows.get(address);
    if (window === undefined || now - window.start >= windowMs) window = { start: now, count: 0 };
    // Map order is insertion order: re-inserting marks the address most recently seen.
    this.#windows.delete(address);
    this.#windows.set(address, window);
    if (this.#windows.size > maxAddresses) this.#windows.delete(this.#windows.keys().next().value!);
    window.count++;
    return window.count;
  }
}

/**
 * The per-address counters of a manager: ID guessing (SM-42, reported) and, with
 * `sessionCreationLimit`, stored sessions per address (refused beyond the limit).
 */
export class AddressGuard {
  readonly #guesses: GuessDetector | undefined;
  readonly #creations: GuessDetector | undefined;
  readonly #creationLimit: number;
  readonly #report: (reason: string, ip: string) => void;

  constructor(
    guessing: GuessDetectionSettings | false,
    creation: GuessDetectionSettings | false,
    now: () => number,
    report: (reason: string, ip: string) => void,
  ) {
    this.#guesses = guessing ? new GuessDetector(guessing, now) : undefined;
    this.#creations = creation ? new GuessDetector(creation, now) : undefined;
    this.#creationLimit = creation ? creation.limit : 0;
    this.#report = report;
  }

  /** An invalid or unknown session cookie: one more guess from this address. */
  guess(ip: string | undefined): void {
    if (this.#guesses && ip && this.#guesses.record(ip)) this.#report('invalid-session-cookies', ip);
  }

  /** One more stored session for this address; false (reported once a window) beyond the limit. */
  admitCreation(ip: string | undefined): boolean {
    if (!this.#creations || !ip) return true;
    const count = this.#creations.add(ip);
    if (count === this.#creationLimit + 1) this.#report('session-creation-rate', ip);
    return count <= this.#creationLimit;
  }
}
