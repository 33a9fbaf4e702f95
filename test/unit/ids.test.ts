import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { auditTag, isBase64url, isWellFormedToken, newToken, storageKey } from '../../src/crypto/ids.js';
import { KeyRing } from '../../src/crypto/keyring.js';
import { checkStorageKey, isStorageKey } from '../../src/stores/kit.js';
import { Browser, SECRET, setup } from '../helpers/session-kit.js';

afterEach(() => {
  vi.restoreAllMocks();
});

describe('SM-09: session tokens', () => {
  it('100,000 tokens are unique, 43 base64url characters, 32 bytes of entropy each', () => {
    const seen = new Set<string>();
    const firstChar = new Map<string, number>();
    const shape = /^[A-Za-z0-9_-]{43}$/;
    let misshapen = 0;
    for (let i = 0; i < 100_000; i++) {
      const t = newToken();
      if (!shape.test(t)) misshapen++;
      seen.add(t);
      firstChar.set(t[0]!, (firstChar.get(t[0]!) ?? 0) + 1);
    }
    expect(misshapen).toBe(0);
    expect(seen.size).toBe(100_000);
    expect(Buffer.from(newToken(), 'base64url')).toHaveLength(32);
    // Frequency smoke test: each of the 64 symbols leads ~1562 times; a biased source would not.
    expect(firstChar.size).toBe(64);
    for (const n of firstChar.values()) {
      expect(n).toBeGreaterThan(1200);
      expect(n).toBeLessThan(1950);
    }
  });

  it('does not depend on Math.random: tokens and whole sessions work with it stubbed to throw', async () => {
    vi.spyOn(Math, 'random').mockImplementation(() => {
      throw new Error('Math.random must not be used for session ids');
    });
    expect(isWellFormedToken(newToken())).toBe(true);
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => {
      s.set('a', 1);
      s.csrf.token();
    });
    await browser.request((s) => s.regenerateId());
    expect(browser.cookie).toBeDefined();
    expect(Math.random).not.toHaveBeenCalled();
  });

  it('only the exact token shape is well formed', () => {
    const t = newToken();
    expect(isWellFormedToken(t)).toBe(true);
    for (const bad of [
      t.slice(1),
      `${t}A`,
      `${t.slice(1)}+`,
      `${t.slice(1)}/`,
      `${t.slice(1)}=`,
      `${t.slice(1)}é`,
      '',
      '../../etc/passwd',
    ]) {
      expect(isWellFormedToken(bad), bad).toBe(false);
    }
  });
});

describe('SM-63: storage keys are refused unless base64url of 16 to 128 characters', () => {
  const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

  it('every UTF-16 code unit outside the 64 characters of base64url is refused, at any place', () => {
    const key = storageKey(newToken());
    const accepted: string[] = [];
    for (let code = 0; code < 0x10000; code++) {
      const c = String.fromCharCode(code);
      // First, middle and last place of an otherwise valid 43-character key.
      const places = [c + key.slice(1), key.slice(0, 21) + c + key.slice(22), key.slice(0, 42) + c];
      const verdicts = places.map((k) => isStorageKey(k));
      expect(new Set(verdicts).size, `U+${code.toString(16)}`).toBe(1);
      if (verdicts[0]) accepted.push(c);
    }
    expect(accepted.join('')).toBe([...ALPHABET].sort().join(''));
  });

  it('lengths 16 to 128 pass, 15 and 129 do not; tokens are exactly 43', () => {
    const long = 'A'.repeat(200);
    for (let n = 0; n <= 200; n++)
      expect(isStorageKey(long.slice(0, n)), `length ${n}`).toBe(n >= 16 && n <= 128);
    for (let n = 0; n <= 60; n++) expect(isWellFormedToken(long.slice(0, n)), `length ${n}`).toBe(n === 43);
    expect(isBase64url('', 0, 0)).toBe(true);
  });

  it('a refused key throws INVALID_KEY naming the store; a non-string key too', () => {
    expect(() => checkStorageKey('SomeStore', 'a/b'.repeat(8))).toThrow(
      expect.objectContaining({ code: 'INVALID_KEY', message: expect.stringContaining('SomeStore') }),
    );
    expect(() => checkStorageKey('SomeStore', 42)).toThrow(expect.objectContaining({ code: 'INVALID_KEY' }));
    expect(() => checkStorageKey('SomeStore', storageKey(newToken()))).not.toThrow();
  });
});

describe('SM-10: the cookie value is opaque', () => {
  it('carries no user id or e-mail, and two logins in the same millisecond share nothing', async () => {
    const { manager } = setup();
    const a = new Browser(manager);
    const b = new Browser(manager);
    await a.request((s) => s.login('alice@example.org'));
    await b.request((s) => s.login('alice@example.org'));
    for (const value of [a.cookie!, b.cookie!]) {
      expect(value).toMatch(/^[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}$/);
      expect(value).not.toContain('alice');
      expect(value).not.toContain('example');
    }
    let common = 0;
    while (a.cookie![common] === b.cookie![common]) common++;
    expect(common).toBeLessThan(4);
  });
});

describe('SM-16: stores see the record id and a SHA-256 of the token, never the token', () => {
  it('storageKey is the base64url SHA-256 of the token', () => {
    const t = newToken();
    expect(storageKey(t)).toBe(createHash('sha256').update(t).digest('base64url'));
    expect(storageKey(t)).not.toBe(t);
  });

  it('no store key and no stored byte contains the raw token', async () => {
    const { manager, store } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.login(7));
    await browser.request((s) => s.set('cart', ['x']));
    const [sid, token] = browser.cookie!.split('.') as [string, string];
    expect(store.calls.length).toBeGreaterThan(0);
    for (const call of store.calls) {
      expect(call.key).toBe(sid);
      expect(JSON.stringify(call)).not.toContain(token);
    }
    expect((await store.inner.load(sid))!.meta.h).toBe(storageKey(token));
  });

  it('a correctly signed cookie carrying the stored hash yields a fresh session, not the stored one', async () => {
    const { manager, store, events } = setup();
    const victim = new Browser(manager);
    await victim.request((s) => s.login(7));
    const key = victim.key;
    expect(await store.inner.load(key)).not.toBeNull();

    const attacker = new Browser(manager);
    // Someone who read the store (the record id and the stored hash) and even holds the secret.
    const stored = (await store.inner.load(key))!.meta.h!;
    attacker.cookie = new KeyRing([SECRET]).sign(manager.options.cookie.name, `${key}.${stored}`);
    const { session } = await attacker.request();
    expect(session.isNew).toBe(true);
    expect(session.userId).toBeUndefined();
    expect(session.id).not.toBe(key);
    expect(events.at(-1)?.type).toBe('session_unknown_id');
    expect(events.at(-1)?.reason).toBe('retired handle');
    expect((await store.inner.load(key))?.meta.userId).toBe('7');
  });
});

describe('audit tags', () => {
  it('are 12 characters and reveal neither the token nor the storage key', () => {
    const t = newToken();
    const tag = auditTag(storageKey(t));
    expect(tag).toMatch(/^[A-Za-z0-9_-]{12}$/);
    expect(storageKey(t)).not.toContain(tag);
    expect(t).not.toContain(tag);
  });
});
