import { serialize } from 'cookie';
import { describe, expect, it } from 'vitest';
import { CookieCodec } from '../../src/core/cookie-codec.js';
import { newToken } from '../../src/crypto/ids.js';
import { KeyRing } from '../../src/crypto/keyring.js';
import { resolveOptions, type SessionManagerOptions } from '../../src/options.js';
import { flipAt } from '../helpers/session-kit.js';

const secret = 'cookie-codec-test-secret-0123456789abcdef';

describe('SM-04: the session cookie, written without the general serializer on the hot path', () => {
  const shapes: SessionManagerOptions['cookie'][] = [
    { secure: false },
    { secure: true, sameSite: 'strict' },
    { secure: true, sameSite: 'none', partitioned: true },
    { secure: true, name: '__Secure-sid', domain: 'example.com', path: '/app', maxAge: 3_600_000 },
    { secure: false, name: 'sid', maxAge: 90_500 },
  ];
  for (const cookie of shapes) {
    it(`is byte for byte what the cookie package writes: ${JSON.stringify(cookie)}`, () => {
      const options = resolveOptions({ secret, cookie });
      const keys = new KeyRing([secret]);
      const codec = new CookieCodec(keys, options);
      const sid = newToken();
      const token = newToken();
      const now = 1_800_000_000_000;
      const deadline = now + 7_200_000;
      for (const maxAge of [undefined, 60_000, 10_000_000]) {
        const c = options.cookie;
        const lifetime = maxAge ?? c.maxAge;
        const expected = serialize(c.name, keys.sign(c.name, `${sid}.${token}`), {
          httpOnly: true,
          secure: c.secure,
          sameSite: c.sameSite,
          path: c.path,
          ...(c.domain === undefined ? {} : { domain: c.domain }),
          ...(lifetime === undefined
            ? {}
            : { maxAge: Math.floor(Math.min(lifetime, deadline - now) / 1000) }),
          ...(c.partitioned ? { partitioned: true } : {}),
        });
        expect(codec.issue(sid, token, deadline, now, maxAge)).toBe(expected);
      }
    });
  }
});

describe('SM-14: the per-connection entry answers only for the header and value it holds', () => {
  const options = resolveOptions({ secret, cookie: { secure: true } });
  const keys = new KeyRing([secret]);
  const name = options.cookie.name;
  const signed = () => keys.sign(name, `${newToken()}.${newToken()}`);

  it('verify() of a value other than the one read() kept checks that value', () => {
    const codec = new CookieCodec(keys, options);
    const connection = {};
    const first = signed();
    const second = signed();
    expect(codec.read(`${name}=${first}`, connection)).toBe(first);
    expect(codec.verify(first, connection)?.sid).toBe(first.split('.')[0]);
    expect(codec.verify(second, connection)?.sid).toBe(second.split('.')[0]);
    expect(codec.verify(flipAt(first, first.length - 1), connection)).toBeNull();
  });

  it('readPre() of a header other than the one read() kept reads that header', () => {
    const codec = new CookieCodec(keys, options);
    const connection = {};
    const nonce1 = newToken();
    const nonce2 = newToken();
    const pre1 = codec.issuePre(nonce1).split(';')[0]!;
    const pre2 = codec.issuePre(nonce2).split(';')[0]!;
    expect(codec.read(pre1, connection)).toBeUndefined();
    expect(codec.readPre(pre1, connection)).toBe(nonce1);
    expect(codec.readPre(pre2, connection)).toBe(nonce2);
    expect(codec.readPre(`${pre2}x`, connection)).toBeUndefined();
    expect(codec.readPre(undefined, connection)).toBeUndefined();
  });
});
