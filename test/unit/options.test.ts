import { describe, expect, it } from 'vitest';
import {
  DEFAULT_ABSOLUTE_TIMEOUT,
  DEFAULT_IDLE_TIMEOUT,
  MemoryStore,
  SessionError,
  SessionManager,
  type SessionManagerOptions,
} from '../../src/index.js';
import { Browser, cookiePair, HOUR, MINUTE, SECRET, SECRET_2 } from '../helpers/session-kit.js';

const store = new MemoryStore();

function build(options: Partial<SessionManagerOptions>) {
  return new SessionManager({ store, secret: SECRET, ...options } as SessionManagerOptions);
}

/** Constructing with `options` throws a SessionError of `code` whose message matches `advice`. */
function expectRefused(options: Partial<SessionManagerOptions>, code: string, advice: RegExp): void {
  let error: unknown;
  try {
    build(options);
  } catch (err) {
    error = err;
  }
  expect(error, JSON.stringify(options)).toBeInstanceOf(SessionError);
  expect((error as SessionError).code).toBe(code);
  expect((error as SessionError).message).toMatch(advice);
}

describe('SM-18: secrets', () => {
  it('a missing secret is refused with a message saying what to pass', () => {
    expectRefused({ secret: undefined }, 'WEAK_SECRET', /pass `secret` \(at least 32 random bytes\)/);
    expectRefused({ secret: undefined, secrets: [] }, 'WEAK_SECRET', /at least one secret/);
  });

  it('a 16-byte secret is refused, naming its length and how to generate one', () => {
    expectRefused({ secret: '0123456789abcdef' }, 'WEAK_SECRET', /16 bytes; use at least 32.*openssl rand/);
  });

  it("'keyboard cat' is refused", () => {
    expectRefused({ secret: 'keyboard cat' }, 'WEAK_SECRET', /at least 32/);
  });

  it.each([
    'this-is-a-secret-key-change-it-in-production',
    'complex_password_at_least_32_characters_long',
    'A-Very-Long-Secret-That-Is-At-Least-32-Characters',
    'a'.repeat(48),
  ])('the known long sample %j is refused although long enough', (secret) => {
    expectRefused(
      { secret },
      'WEAK_SECRET',
      /published sample or a repeated character; generate a random one/,
    );
  });

  it('a weak secret anywhere in the key ring is refused and named by position', () => {
    expectRefused({ secret: undefined, secrets: [SECRET, 'short'] }, 'WEAK_SECRET', /secret #2/);
  });

  it('two strong secrets are accepted', () => {
    expect(build({ secret: undefined, secrets: [SECRET, SECRET_2] }).options.secrets).toEqual([
      SECRET,
      SECRET_2,
    ]);
  });
});

describe('SM-02: cookie prefixes and attributes', () => {
  it('__Host- with a Domain is refused', () => {
    expectRefused(
      { cookie: { domain: 'example.org' } },
      'INVALID_OPTION',
      /remove cookie\.domain.*__Secure-/,
    );
  });

  it('__Host- with a Path other than / is refused', () => {
    expectRefused({ cookie: { path: '/app' } }, 'INVALID_OPTION', /Path=\/: remove cookie\.path/);
  });

  it('__Host- without Secure is refused', () => {
    expectRefused(
      { cookie: { name: '__Host-id', secure: false } },
      'INVALID_OPTION',
      /must be Secure: set cookie\.secure to true/,
    );
  });

  it('__Secure- without Secure, and a subdomain cookie without __Secure-, are refused', () => {
    expectRefused({ cookie: { name: '__Secure-id', secure: false } }, 'INVALID_OPTION', /__Secure-/);
    expectRefused(
      { cookie: { name: 'sid', domain: 'example.org' } },
      'INVALID_OPTION',
      /__Secure- name prefix/,
    );
  });

  it('a subdomain cookie with the __Secure- prefix is accepted', () => {
    const m = build({ cookie: { name: '__Secure-sid', domain: 'example.org' } });
    expect(m.options.cookie.domain).toBe('example.org');
  });

  it("SameSite 'none' without Secure is refused", () => {
    expectRefused(
      { cookie: { name: 'sid', secure: false, sameSite: 'none' } },
      'INVALID_OPTION',
      /secure true/,
    );
  });

  it('SM-50: attribute injection through the name, path or domain is refused', () => {
    expectRefused({ cookie: { name: 'id=x; Max-Age=999; a' } }, 'INVALID_OPTION', /RFC 6265/);
    expectRefused({ cookie: { name: 'sid', secure: false, path: '/;Domain=evil' } }, 'INVALID_OPTION', /";"/);
    expectRefused({ cookie: { name: 'sid', secure: false, path: '/\r\nX: y' } }, 'INVALID_OPTION', /control/);
    expectRefused(
      { cookie: { name: '__Secure-sid', domain: 'example.org; Path=/evil' } },
      'INVALID_OPTION',
      /not a valid domain/,
    );
  });
});

describe('SM-31: timeouts are mandatory and bounded', () => {
  const invalid: [string, unknown][] = [
    ['undefined (present)', undefined],
    ['0', 0],
    ['Infinity', Number.POSITIVE_INFINITY],
    ['NaN', Number.NaN],
    ['negative', -1],
    ['a string', '1800000'],
  ];
  for (const name of ['idleTimeout', 'absoluteTimeout', 'touchInterval'] as const) {
    it.each(invalid)(`${name} = %s is refused with a message naming it`, (_label, value) => {
      expectRefused(
        { [name]: value } as Partial<SessionManagerOptions>,
        'INVALID_OPTION',
        new RegExp(`^${name} must be a positive, finite number of milliseconds.*Omit it to use the default`),
      );
    });
  }

  it('an idle timeout longer than the absolute one is refused', () => {
    expectRefused({ idleTimeout: 2 * HOUR, absoluteTimeout: HOUR }, 'INVALID_OPTION', /cannot be longer/);
  });

  it('a touch interval as long as the idle timeout is refused (sessions would die while in use)', () => {
    expectRefused(
      { idleTimeout: MINUTE, touchInterval: MINUTE },
      'INVALID_OPTION',
      /shorter than idleTimeout/,
    );
  });

  it('cookie.maxAge and maxSize must be positive and finite too, in their own units', () => {
    expectRefused(
      { cookie: { maxAge: Number.POSITIVE_INFINITY } },
      'INVALID_OPTION',
      /cookie\.maxAge .*milliseconds/,
    );
    expectRefused({ maxSize: -5 }, 'INVALID_OPTION', /maxSize must be a positive, finite number of bytes/);
  });

  it('defaults: idle 30 min and absolute 12 h, both inside NIST SP 800-63B AAL2 (1 h / 24 h)', () => {
    const o = build({}).options;
    expect(o.idleTimeout).toBe(30 * MINUTE);
    expect(o.absoluteTimeout).toBe(12 * HOUR);
    expect(DEFAULT_IDLE_TIMEOUT).toBe(o.idleTimeout);
    expect(DEFAULT_ABSOLUTE_TIMEOUT).toBe(o.absoluteTimeout);
    expect(o.idleTimeout).toBeLessThanOrEqual(HOUR);
    expect(o.absoluteTimeout).toBeLessThanOrEqual(24 * HOUR);
    expect(o.touchInterval).toBe(3 * MINUTE);
  });

  it('a persistent cookie lifetime is capped by the absolute timeout', () => {
    expect(build({ absoluteTimeout: HOUR, cookie: { maxAge: 30 * 24 * HOUR } }).options.cookie.maxAge).toBe(
      HOUR,
    );
  });
});

describe('other options', () => {
  it("trustProxy takes what Express's trust proxy takes (proxy-addr); anything else is refused, not ignored", () => {
    for (const trustProxy of [true, false, 1, 'loopback', 'loopback, 10.0.0.0/8', ['10.0.0.1', 'fc00::/7']]) {
      expect(() => build({ trustProxy })).not.toThrow();
    }
    expectRefused({ trustProxy: 'not-an-ip' }, 'INVALID_OPTION', /trustProxy: .*not-an-ip/);
    expectRefused({ trustProxy: -1 }, 'INVALID_OPTION', /hop count/);
    expectRefused(
      { trustProxy: { loopback: true } as unknown as string },
      'INVALID_OPTION',
      /trustProxy must be/,
    );
  });

  it('keepOnLogin must be an array (a string would silently keep single letters)', () => {
    expectRefused(
      { keepOnLogin: 'cart' as unknown as string[] },
      'INVALID_OPTION',
      /keepOnLogin must be an array/,
    );
  });

  it('binding prefixes and action are validated', () => {
    expectRefused({ binding: { ip: { v4Prefix: 40 } } }, 'INVALID_OPTION', /0-32/);
    expectRefused({ binding: { action: 'ignore' as 'log' } }, 'INVALID_OPTION', /'destroy' or 'log'/);
  });

  it('every option error is a SessionError with HTTP status 500 and is not exposed to clients', () => {
    try {
      build({ idleTimeout: 0 });
      expect.unreachable();
    } catch (err) {
      expect(err).toMatchObject({ name: 'SessionError', status: 500, expose: false });
    }
  });
});

describe('SM-01/SM-02/SM-04: the default cookie', () => {
  it('is __Host-id, Secure, HttpOnly, SameSite=Lax, Path=/, no Domain and not persistent', async () => {
    const browser = new Browser(build({}));
    const { setCookie } = await browser.request((s) => s.set('k', 1));
    expect(cookiePair(setCookie!).name).toBe('__Host-id');
    const attributes = setCookie!
      .split(';')
      .slice(1)
      .map((a) => a.trim().toLowerCase());
    expect(attributes.sort()).toEqual(['httponly', 'path=/', 'samesite=lax', 'secure']);
  });

  it('a persistent cookie carries Max-Age in seconds, never beyond the absolute timeout', async () => {
    const browser = new Browser(build({ absoluteTimeout: HOUR, cookie: { maxAge: 2 * HOUR } }));
    const { setCookie } = await browser.request((s) => s.set('k', 1));
    expect(setCookie).toMatch(/Max-Age=3600(;|$)/);
  });
});
