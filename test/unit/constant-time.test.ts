/**
 * SM-15: every secret comparison goes through `crypto.timingSafeEqual`. An ESM namespace cannot
 * be spied on in place, so node:crypto is replaced by itself with `timingSafeEqual` wrapped in a
 * spy that still calls the real function: behaviour is unchanged, calls are counted.
 */
import * as crypto from 'node:crypto';
import { beforeEach, describe, expect, it, vi } from 'vitest';

vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  return { ...actual, timingSafeEqual: vi.fn(actual.timingSafeEqual) };
});

const { KeyRing } = await import('../../src/crypto/keyring.js');
const { newToken } = await import('../../src/crypto/ids.js');
const { Browser, SECRET, SECRET_2, setup } = await import('../helpers/session-kit.js');

const spy = vi.mocked(crypto.timingSafeEqual);

beforeEach(() => {
  spy.mockClear();
});

describe('SM-15: constant-time comparisons', () => {
  it('cookie verification compares the MAC with timingSafeEqual, for a valid and a forged MAC', () => {
    const ring = new KeyRing([SECRET]);
    const signed = ring.sign('id', newToken());
    expect(ring.verify('id', signed)).not.toBeNull();
    expect(spy).toHaveBeenCalledTimes(1);
    const forged = `${signed.slice(0, -2)}${signed.endsWith('AA') ? 'BB' : 'AA'}`;
    expect(ring.verify('id', forged)).toBeNull();
    expect(spy).toHaveBeenCalledTimes(2);
  });

  it('with a key ring, every key is compared in constant time', () => {
    const signedWithOld = new KeyRing([SECRET]).sign('id', newToken());
    spy.mockClear();
    expect(new KeyRing([SECRET_2, SECRET]).verify('id', signedWithOld)?.keyIndex).toBe(1);
    expect(spy).toHaveBeenCalledTimes(2);
  });

  it('loading a session verifies its cookie in constant time', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    spy.mockClear();
    await browser.request();
    expect(spy).toHaveBeenCalled();
  });

  it('CSRF verification compares tokens with timingSafeEqual, for the right and a wrong token', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    let token = '';
    await browser.request((s) => {
      token = s.csrf.token();
    });
    await browser.request((s) => {
      spy.mockClear();
      expect(s.csrf.verify(token)).toBe(true);
      expect(s.csrf.verify(newToken())).toBe(false);
      expect(spy).toHaveBeenCalledTimes(2);
    });
  });
});
