// Unit tests that use only the feature modules themselves (no SessionManager, no Session), so
// they run whatever state the manager is in.
import { describe, expect, it } from 'vitest';
import { SessionError } from '../../src/errors.js';
import { type AuditEvent, cleanHeaderValue, jsonLinesAudit } from '../../src/features/audit.js';
import { Csrf, type CsrfRequest, csrfDecision } from '../../src/features/csrf.js';
import { Flash } from '../../src/features/flash.js';
import { checkKeyName, MAX_KEY_NAME_LENGTH, toJson } from '../../src/serialize.js';

/** Internal session data kept as JSON text, as a Session keeps it. */
function jsonHost(initial: Record<string, string> = {}) {
  const fields = new Map<string, string>(Object.entries(initial));
  return {
    fields,
    readInternal: (name: string): unknown => {
      const json = fields.get(name);
      return json === undefined ? undefined : JSON.parse(json);
    },
    writeInternal: (name: string, value: unknown): void => {
      if (value === undefined) fields.delete(name);
      else fields.set(name, toJson(value, name));
    },
  };
}

const PROTOTYPE_NAMES = [
  'constructor',
  'toString',
  '__proto__',
  'hasOwnProperty',
  'valueOf',
  'isPrototypeOf',
];

describe('flash lookups see only the messages that were queued, never Object.prototype', () => {
  it('an empty flash has no message of a type named like an Object.prototype member', () => {
    const flash = new Flash(jsonHost());
    for (const type of PROTOTYPE_NAMES) {
      expect(flash.has(type), type).toBe(false);
      expect(flash.peek(type)[type], type).toEqual([]);
      expect(flash.messages(type), type).toEqual([]);
    }
    expect(flash.has()).toBe(false);
    expect(flash.output()).toBe('');
  });

  it('a flash holding other types still answers false and [] for prototype names', () => {
    const host = jsonHost();
    const flash = new Flash(host);
    flash.success('Saved.');
    for (const type of PROTOTYPE_NAMES) {
      expect(flash.has(type), type).toBe(false);
      expect(flash.messages(type), type).toEqual([]);
    }
    expect(flash.messages()).toEqual({ success: ['Saved.'] });
  });

  it('types named constructor and tostring are ordinary types: queued, peeked, consumed', () => {
    const host = jsonHost();
    const flash = new Flash(host);
    flash.message('constructor', 'one');
    flash.message('constructor', 'two');
    flash.message('tostring', 'three');
    expect(flash.has('constructor')).toBe(true);
    expect(flash.has('toString')).toBe(false);
    expect(flash.peek('constructor')).toEqual({ constructor: ['one', 'two'] });
    expect(flash.messages('constructor')).toEqual(['one', 'two']);
    expect(flash.has('constructor')).toBe(false);
    expect(flash.output()).toBe('<div class="flash flash-tostring" role="status">three</div>\n');
    expect(host.fields.size).toBe(0);
  });

  it('a stored own "__proto__" entry is data, not a prototype; returned objects have no prototype', () => {
    const host = jsonHost({ flash: '{"__proto__":["from storage"],"notice":["n"]}' });
    const flash = new Flash(host);
    expect(flash.has('__proto__')).toBe(true);
    const all = flash.peek();
    expect(Object.getPrototypeOf(all)).toBe(null);
    expect(Object.getPrototypeOf(flash.peek('notice'))).toBe(null);
    expect(Object.keys(all).sort()).toEqual(['__proto__', 'notice']);
    expect(flash.messages('__proto__')).toEqual(['from storage']);
    expect(flash.messages()).toEqual({ notice: ['n'] });
  });
});

describe('audit output never carries U+0085, U+2028 or U+2029 raw', () => {
  const LINE_BREAK = /\r\n|[\n\r\v\f\u0085\u2028\u2029]/;
  const event = (userAgent: string): AuditEvent => ({
    type: 'session_created',
    time: '2024-01-01T00:00:00.000Z',
    userAgent,
  });

  for (const [char, escaped] of [
    ['\u0085', '\\u0085'],
    ['\u2028', '\\u2028'],
    ['\u2029', '\\u2029'],
  ] as const) {
    it(`jsonLinesAudit writes ${escaped} in a user agent as the escape, on exactly one line`, () => {
      const chunks: string[] = [];
      const sink = jsonLinesAudit({ write: (chunk: string) => chunks.push(chunk) });
      const ua = `x${char}{"type":"authn_login_success","userId":"admin"}${char}y`;
      sink(event(ua));
      expect(chunks).toHaveLength(1);
      const chunk = chunks[0]!;
      expect(chunk.endsWith('\n')).toBe(true);
      expect(chunk.slice(0, -1).split(LINE_BREAK)).toHaveLength(1);
      expect(chunk).not.toContain(char);
      expect(chunk).toContain(`x${escaped}{\\"type\\"`);
      // Still the same JSON: a reader gets the user agent back exactly.
      expect((JSON.parse(chunk) as AuditEvent).userAgent).toBe(ua);
    });

    it(`cleanHeaderValue writes ${escaped} as text`, () => {
      const clean = cleanHeaderValue(`a${char}b`)!;
      expect(clean).toBe(`a${escaped}b`);
      expect(clean).not.toContain(char);
    });
  }

  it('cleanHeaderValue output stays within 256 characters and never ends in half an escape', () => {
    for (const ua of [
      '\u2028'.repeat(300),
      `${'A'.repeat(254)}\u2028\u2028`,
      `${'A'.repeat(255)}\u{1F600}`,
    ]) {
      const clean = cleanHeaderValue(ua)!;
      expect(clean.length).toBeLessThanOrEqual(256);
      expect(clean).not.toMatch(/\\u[0-9a-f]{0,3}$/);
      expect(clean).not.toMatch(/[\u0085\u2028\u2029]|[\uD800-\uDBFF]$/);
    }
    expect(cleanHeaderValue('\u2028'.repeat(300))).toBe('\\u2028'.repeat(42));
  });

  it('control characters still become U+FFFD and plain user agents pass unchanged', () => {
    expect(cleanHeaderValue('x\r\n\u0000\u001b\u007fy')).toBe('x\uFFFD\uFFFD\uFFFD\uFFFD\uFFFDy');
    expect(cleanHeaderValue('Mozilla/5.0 (X11; Linux x86_64)')).toBe('Mozilla/5.0 (X11; Linux x86_64)');
    expect(cleanHeaderValue(undefined)).toBeUndefined();
  });
});

describe('the CSRF origin derived from Host accepts only the request’s own scheme', () => {
  const names = { field: '_csrf', header: 'x-csrf-token' };
  const host = 'app.example.org';
  const csrf = new Csrf(jsonHost(), names.field);
  const token = csrf.token();
  const decide = (secure: boolean | undefined, headers: CsrfRequest['headers'], origin?: string) =>
    csrfDecision(
      csrf,
      {
        method: 'POST',
        headers: { host, 'x-csrf-token': token, ...headers },
        ...(secure === undefined ? {} : { secure }),
        ...(origin === undefined ? {} : { origin }),
      },
      names,
    );

  it('an https request with an http:// Origin or Referer is refused', () => {
    expect(decide(true, { origin: `http://${host}` })).toBe('origin-mismatch');
    expect(decide(true, { referer: `http://${host}/form` })).toBe('origin-mismatch');
  });

  it('an http request with an https:// Origin or Referer is refused', () => {
    expect(decide(false, { origin: `https://${host}` })).toBe('origin-mismatch');
    expect(decide(false, { referer: `https://${host}/form` })).toBe('origin-mismatch');
  });

  it('the same scheme is accepted, by Origin or by Referer', () => {
    expect(decide(true, { origin: `https://${host}` })).toBe('ok');
    expect(decide(true, { referer: `https://${host}/form` })).toBe('ok');
    expect(decide(false, { origin: `http://${host}` })).toBe('ok');
    expect(decide(false, { referer: `http://${host}/form` })).toBe('ok');
  });

  it('without secure and without a configured origin the app origin is unknown: refused, not guessed', () => {
    expect(decide(undefined, { origin: `https://${host}` })).toBe('origin-mismatch');
    expect(decide(undefined, { origin: `http://${host}` })).toBe('origin-mismatch');
  });

  it('a configured origin decides alone, whatever the request scheme', () => {
    expect(decide(false, { origin: `https://${host}` }, `https://${host}`)).toBe('ok');
    expect(decide(true, { origin: `http://${host}` }, `https://${host}`)).toBe('origin-mismatch');
  });
});

describe('checkKeyName refuses key names that a store cannot keep', () => {
  const refused = (name: unknown): SessionError => {
    try {
      checkKeyName(name as string);
    } catch (err) {
      expect(err).toBeInstanceOf(SessionError);
      expect(err).toMatchObject({ code: 'INVALID_KEY_NAME', status: 500, expose: false });
      return err as SessionError;
    }
    throw new Error(`checkKeyName accepted ${JSON.stringify(name)}`);
  };

  it('non-strings are refused', () => {
    for (const name of [undefined, null, 42, Symbol('k'), {}, ['a']]) {
      expect(refused(name).message).toMatch(/must be strings/);
    }
  });

  it('the empty name is refused', () => {
    expect(refused('').message).toMatch(/empty/);
  });

  it('a NUL anywhere is refused', () => {
    for (const name of ['\u0000', 'a\u0000', '\u0000a', 'a\u0000b']) {
      expect(refused(name).message).toMatch(/NUL character \(U\+0000\)/);
    }
  });

  it('a lone surrogate, high or low, anywhere, is refused', () => {
    for (const name of ['\uD800', '\uDC00', 'a\uD83D', '\uDE00a', 'a\uDE00\uD83Db', '\u{1F600}\uD800']) {
      expect(refused(name).message).toMatch(/lone surrogate/);
    }
  });

  it(`a name over ${MAX_KEY_NAME_LENGTH} UTF-16 code units is refused; ${MAX_KEY_NAME_LENGTH} is accepted`, () => {
    expect(MAX_KEY_NAME_LENGTH).toBe(256);
    expect(refused('k'.repeat(257)).message).toMatch(/257 UTF-16 code units long, over the limit of 256/);
    expect(refused('\u{1F600}'.repeat(129)).message).toMatch(/258 UTF-16 code units/);
    expect(() => checkKeyName('k'.repeat(256))).not.toThrow();
  });

  it('every message says what to do', () => {
    for (const name of [undefined, '', 'a\u0000', '\uD800', 'k'.repeat(300)]) {
      expect(refused(name).message).toContain('use a short ASCII name');
    }
  });

  it('ordinary names, Unicode and well-formed surrogate pairs included, are accepted', () => {
    for (const name of ['cart', 'user_id', 'a.b:c', ' ', 'é', '日本語', '\u{1F600}', 'k'.repeat(256)]) {
      expect(() => checkKeyName(name), name).not.toThrow();
    }
  });
});

describe('toJson refuses strings with lone surrogates inside values', () => {
  const code = (fn: () => unknown): string | undefined => {
    try {
      fn();
    } catch (err) {
      return (err as SessionError).code;
    }
    return undefined;
  };

  it('a top-level string with a lone surrogate is NOT_SERIALIZABLE, naming the key', () => {
    expect(() => toJson('abc\uD800', 'title')).toThrow(SessionError);
    expect(code(() => toJson('abc\uD800', 'title'))).toBe('NOT_SERIALIZABLE');
    expect(() => toJson('\uDC00', 'title')).toThrow(
      /session value at title is a string with a lone surrogate/,
    );
  });

  it('a nested string is refused with its path', () => {
    expect(() => toJson({ a: ['ok', 'x\uDFFF'] }, 'k')).toThrow(
      /at k\.a\[1\] is a string with a lone surrogate/,
    );
    expect(code(() => toJson([[{ deep: '\uD83D' }]], 'k'))).toBe('NOT_SERIALIZABLE');
  });

  it('a property name with a lone surrogate is refused', () => {
    expect(code(() => toJson({ 'a\uD800': 1 }, 'k'))).toBe('NOT_SERIALIZABLE');
    expect(() => toJson({ x: { '\uDC00': 1 } }, 'k')).toThrow(/at k\.x has a property name/);
  });

  it('the message says how to fix it', () => {
    expect(() => toJson('\uD800', 'k')).toThrow(/toWellFormed\(\)/);
  });

  it('well-formed Unicode, emoji and escapes-looking text pass and round-trip', () => {
    const value = { emoji: '\u{1F600}', text: '日本語 é', literal: '\\ud800', list: ['\u{10FFFF}'] };
    expect(JSON.parse(toJson(value, 'k'))).toEqual(value);
  });
});
