import { describe, expect, it } from 'vitest';
import { newToken } from '../../src/crypto/ids.js';
import { KeyRing } from '../../src/crypto/keyring.js';
import { GuessDetector } from '../../src/features/throttle.js';
import { SessionError, SessionManager } from '../../src/index.js';
import { Browser, Clock, SECRET, setup } from '../helpers/session-kit.js';

/** Sends `count` requests with a random cookie from `ip`, signed (unknown ID) or not (invalid). */
async function guess(manager: SessionManager, ip: string, count: number, signed = false) {
  const ring = new KeyRing([SECRET]);
  for (let i = 0; i < count; i++) {
    const browser = new Browser(manager);
    browser.info.ip = ip;
    browser.cookie = signed ? ring.sign(manager.options.cookie.name, newToken()) : newToken();
    await browser.request();
  }
}

const suspicious = (events: { type: string }[]) => events.filter((e) => e.type === 'suspicious');

describe('SM-42: session-ID guessing is detected', () => {
  it('200 random cookies from one address within 10 s raise exactly one suspicious event', async () => {
    const { manager, clock, events } = setup();
    for (let i = 0; i < 200; i++) {
      clock.advance(40);
      await guess(manager, '198.51.100.66', 1);
    }
    expect(suspicious(events)).toEqual([
      expect.objectContaining({ type: 'suspicious', reason: 'invalid-session-cookies', ip: '198.51.100.66' }),
    ]);
    const index = events.findIndex((e) => e.type === 'suspicious');
    expect(events.slice(0, index).filter((e) => e.type === 'session_invalid_cookie')).toHaveLength(100);
  });

  it('unknown but correctly signed IDs count too', async () => {
    const { manager, events } = setup({ guessDetection: { limit: 5 } });
    await guess(manager, '198.51.100.66', 5, true);
    expect(suspicious(events)).toHaveLength(1);
  });

  it('the same number spread over several windows, or over several addresses, raises nothing', async () => {
    const { manager, clock, events } = setup({ guessDetection: { limit: 10, windowMs: 1000 } });
    for (let i = 0; i < 30; i++) {
      await guess(manager, '198.51.100.66', 9);
      clock.advance(1000);
    }
    for (let i = 0; i < 30; i++) await guess(manager, `198.51.100.${i}`, 9);
    expect(suspicious(events)).toEqual([]);
  });

  it('a later window reports again', async () => {
    const { manager, clock, events } = setup({ guessDetection: { limit: 3, windowMs: 1000 } });
    await guess(manager, '198.51.100.66', 10);
    clock.advance(1000);
    await guess(manager, '198.51.100.66', 10);
    expect(suspicious(events)).toHaveLength(2);
  });

  it('valid session cookies are not counted as guesses', async () => {
    const { manager, events } = setup({ guessDetection: { limit: 3 } });
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    for (let i = 0; i < 10; i++) await browser.request();
    expect(suspicious(events)).toEqual([]);
  });

  it('can be turned off', async () => {
    const { manager, events } = setup({ guessDetection: false });
    await guess(manager, '198.51.100.66', 150);
    expect(suspicious(events)).toEqual([]);
  });

  it('its options are validated', () => {
    const cases: [object, RegExp][] = [
      [{ limit: 0 }, /guessDetection\.limit must be a positive integer/],
      [{ limit: 2.5 }, /guessDetection\.limit/],
      [{ windowMs: Number.POSITIVE_INFINITY }, /guessDetection\.windowMs must be a positive, finite number/],
      [{ maxAddresses: -1 }, /guessDetection\.maxAddresses/],
    ];
    for (const [guessDetection, message] of cases) {
      expect(() => new SessionManager({ secret: SECRET, guessDetection })).toThrow(SessionError);
      expect(() => new SessionManager({ secret: SECRET, guessDetection })).toThrow(message);
    }
  });
});

describe('GuessDetector', () => {
  it('stays bounded: beyond maxAddresses the least recently seen address is forgotten', () => {
    const clock = new Clock();
    const detector = new GuessDetector({ limit: 3, windowMs: 10_000, maxAddresses: 2 }, clock.now);
    detector.record('a');
    detector.record('a');
    detector.record('b');
    detector.record('c'); // evicts 'a', the least recently seen
    expect(detector.record('a')).toBe(false); // 'a' starts over at 1
    expect(detector.record('a')).toBe(false);
    expect(detector.record('a')).toBe(true);
    expect(detector.record('a')).toBe(false); // reported once per window
  });
});
