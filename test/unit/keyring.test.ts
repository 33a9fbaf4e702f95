import { createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { newToken } from '../../src/crypto/ids.js';
import { KeyRing } from '../../src/crypto/keyring.js';
import { Browser, flipAt, SECRET, SECRET_2, setup } from '../helpers/session-kit.js';

const ring = new KeyRing([SECRET]);

describe('signing', () => {
  it('verifies its own signature and names the key index', () => {
    const t = newToken();
    expect(ring.verify('id', ring.sign('id', t))).toEqual({ value: t, keyIndex: 0 });
  });

  it('binds the MAC to its purpose (the cookie name): a value signed for one name fails for another', () => {
    const signed = ring.sign('__Host-id', newToken());
    expect(ring.verify('other', signed)).toBeNull();
  });

  it('SM-15: MACs of another length return null without throwing', () => {
    const signed = ring.sign('id', newToken());
    for (const bad of [signed.slice(0, -1), `${signed}A`, `${signed.split('.')[0]}.`, '.', '', 'a.b']) {
      expect(() => ring.verify('id', bad)).not.toThrow();
      expect(ring.verify('id', bad)).toBeNull();
    }
  });
});

describe('SM-14: a tampered or unsigned cookie is no session, and the store is never asked', () => {
  const token = newToken();
  const signed = ring.sign('__Host-id', token);
  const [, mac] = signed.split('.') as [string, string];
  const variants: [string, string][] = [
    ['one MAC character flipped', flipAt(signed, signed.length - 10)],
    ['one token character flipped', flipAt(signed, 5)],
    ["'x' appended", `${signed}x`],
    ['MAC truncated by one character', signed.slice(0, -1)],
    ['MAC stripped', token],
    ['MAC stripped, dot kept', `${token}.`],
    ['MAC from another secret', new KeyRing([SECRET_2]).sign('__Host-id', token)],
    ['MAC for another cookie name', ring.sign('id', token)],
    ['MAC moved onto another token', `${newToken()}.${mac}`],
    ['unsigned random token', newToken()],
    ['signed but not a token', ring.sign('__Host-id', '../../etc/passwd')],
    ['300 characters', 'a'.repeat(300)],
    ['percent-broken', '%E0%A4%A'],
    ['SQL', "' OR '1'='1"],
  ];

  it.each(variants)('%s → fresh session, no store load, invalid-cookie event', async (_label, value) => {
    const { manager, store, events } = setup();
    const browser = new Browser(manager);
    browser.cookie = value;
    const { session, out } = await browser.request((s) => s.get('anything'));
    expect(session.isNew).toBe(true);
    expect(store.count('load')).toBe(0);
    expect(store.calls).toEqual([]);
    expect(out.setCookie).toEqual([]);
    expect(events.map((e) => e.type)).toEqual(['session_invalid_cookie']);
  });

  it('the untampered cookie does reach the store (the variants above are not vacuous)', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    store.reset();
    const { session } = await browser.request();
    expect(store.count('load')).toBe(1);
    expect(session.get('a')).toBe(1);
  });
});

describe('SM-17: key rotation', () => {
  it('a cookie issued under K1 is accepted by [K2, K1] and re-issued under K2, even on a read-only request', async () => {
    const k1 = setup({ secret: SECRET });
    const browser = new Browser(k1.manager);
    await browser.request((s) => s.set('cart', ['apple']));
    const issuedUnderK1 = browser.cookie!;

    const rotated = setup(
      { secret: undefined, secrets: [SECRET_2, SECRET], store: k1.store.inner },
      k1.clock,
    );
    browser.manager = rotated.manager;
    const { session, setCookie } = await browser.request((s) => s.get('cart'));
    expect(session.isNew).toBe(false);
    expect(session.get('cart')).toEqual(['apple']);
    expect(setCookie).toBeDefined();
    expect(rotated.store.ops()).toEqual(['load']); // re-signing costs no store write
    const reissued = browser.cookie!;
    expect(reissued.split('.')[0]).toBe(issuedUnderK1.split('.')[0]); // same session
    expect(new KeyRing([SECRET_2]).verify('__Host-id', reissued)).not.toBeNull();
    expect(new KeyRing([SECRET]).verify('__Host-id', reissued)).toBeNull();

    // Once re-issued, the next request sends nothing new.
    expect((await browser.request((s) => s.get('cart'))).setCookie).toBeUndefined();
  });

  it('a manager that dropped K1 rejects cookies signed with it, without a store lookup', async () => {
    const k1 = setup({ secret: SECRET });
    const browser = new Browser(k1.manager);
    await browser.request((s) => s.set('cart', ['apple']));
    const k2 = setup({ secret: SECRET_2, store: k1.store.inner }, k1.clock);
    browser.manager = k2.manager;
    const { session } = await browser.request();
    expect(session.isNew).toBe(true);
    expect(session.get('cart')).toBeUndefined();
    expect(k2.store.count('load')).toBe(0);
  });
});

describe('sealing (encryption at rest)', () => {
  it('round-trips, and is bound to its additional data', () => {
    const sealed = ring.seal('{"a":1}', 'key\0v:a');
    expect(sealed).not.toContain('"a"');
    expect(ring.open(sealed, 'key\0v:a')).toBe('{"a":1}');
    expect(ring.open(sealed, 'key\0v:b')).toBeNull();
    expect(ring.open(sealed, 'other\0v:a')).toBeNull();
  });

  it('sealedLength predicts the sealed size exactly (it drives the maxSize check)', () => {
    for (const text of ['', 'a', 'ab', 'abc', 'x'.repeat(1000), 'zażółć 🍪'.repeat(7)]) {
      expect(ring.sealedLength(Buffer.byteLength(text)), text).toBe(ring.seal(text, 'aad').length);
    }
  });

  it('every seal uses a fresh IV', () => {
    expect(ring.seal('same', 'aad')).not.toBe(ring.seal('same', 'aad'));
  });

  it('opens values sealed under an older key of the ring, not under a removed one', () => {
    const old = new KeyRing([SECRET]).seal('v', 'aad');
    expect(new KeyRing([SECRET_2, SECRET]).open(old, 'aad')).toBe('v');
    expect(new KeyRing([SECRET_2]).open(old, 'aad')).toBeNull();
  });

  it('garbage and tampered ciphertexts return null without throwing', () => {
    const sealed = ring.seal('{"a":1}', 'aad');
    const tampered = flipAt(sealed, sealed.length - 3);
    for (const bad of ['', 'a1', 'a1.', 'a1.0.', 'a1.0.AAAA', 'zz.0.abc', '"plain json"', tampered]) {
      expect(() => ring.open(bad, 'aad')).not.toThrow();
      expect(ring.open(bad, 'aad'), bad).toBeNull();
    }
  });
});

describe('the MAC is HMAC-SHA256 as createHmac computes it', () => {
  // KeyRing computes HMAC from two one-shot hashes over precomputed pad blocks; any difference
  // from node's own HMAC would log every user out (their cookies would no longer verify).
  const macKey = Buffer.from(
    hkdfSync('sha256', Buffer.from(SECRET, 'utf8'), 'sessionflow', 'cookie-mac', 32),
  );
  const reference = (purpose: string, value: string) =>
    createHmac('sha256', macKey).update(purpose).update('\0').update(value).digest('base64url');
  const macOf = (signed: string) => signed.slice(signed.lastIndexOf('.') + 1);

  it('matches for tokens, cookie names, non-ASCII, lone surrogates, empty and long values', () => {
    const values = [
      `${newToken()}.${newToken()}`,
      '',
      'é',
      'ключ-сессии',
      '\u{1F36A} cookie',
      'lone \uD800 surrogate \uDFFF',
      '\0inside\0',
      'x'.repeat(1400 - '__Host-id'.length), // the longest input of the fast path
      'x'.repeat(1401 - '__Host-id'.length), // the first that takes createHmac
      '\u20AC'.repeat(1300), // 3 UTF-8 bytes a character
      '\u20AC'.repeat(1400), // with the empty purpose: the fast path's buffer filled to its last byte
      randomBytes(3000).toString('latin1'),
    ];
    for (const purpose of ['__Host-id', 'id', '', 'naïve']) {
      for (const value of values) expect(macOf(ring.sign(purpose, value))).toBe(reference(purpose, value));
    }
  });

  it('matches for 2,000 random values, each of another length than the one before', () => {
    for (let i = 0; i < 2000; i++) {
      const value = randomBytes(1 + (i % 97)).toString(i % 2 ? 'base64url' : 'latin1');
      const signed = ring.sign('__Host-id', value);
      expect(macOf(signed)).toBe(reference('__Host-id', value));
      expect(ring.verify('__Host-id', signed)).toEqual({ value, keyIndex: 0 });
    }
  });
});
