import { SessionError } from './errors.js';

function describe(value: unknown): string {
  if (typeof value === 'bigint') return 'a BigInt (store it as a string)';
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'symbol') return 'a symbol';
  if (typeof value === 'undefined') return 'undefined (use remove() to delete a key)';
  if (typeof value === 'number') return `the number ${value} (JSON cannot represent it)`;
  if (value instanceof Date) return 'a Date (store date.getTime() or date.toISOString())';
  if (value instanceof Map || value instanceof Set) return 'a Map or Set (store an array or a plain object)';
  const name = (value as object).constructor?.name;
  return `an instance of ${name ?? 'a class'} (store plain data, e.g. an id, not the object; see seed section 9.1)`;
}

/** A high surrogate not followed by a low one, or a low surrogate not preceded by a high one. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
// String.prototype.isWellFormed is in Node 20 but not in the ES2023 lib this package compiles against.
const nativeIsWellFormed = (String.prototype as { isWellFormed?: (this: string) => boolean }).isWellFormed;

/** True unless `text` holds a lone surrogate, which has no UTF-8 encoding. */
function isWellFormed(text: string): boolean {
  return nativeIsWellFormed ? nativeIsWellFormed.call(text) : !LONE_SURROGATE.test(text);
}

/** Longest key name, in UTF-16 code units. */
export const MAX_KEY_NAME_LENGTH = 256;

/**
 * Throws INVALID_KEY_NAME unless `name` can be a session key on every store: a non-empty string
 * of at most 256 UTF-16 code units, without U+0000 (PostgreSQL text and jsonb refuse it) and
 * without lone surrogates (no UTF-8 encoding: PostgreSQL and MySQL refuse them, Redis would
 * store U+FFFD instead and lose the key).
 */
export function checkKeyName(name: string): void {
  const fix = 'use a short ASCII name such as "cart" or "user_id".';
  if (typeof name !== 'string') {
    throw new SessionError(
      'INVALID_KEY_NAME',
      `session key names must be strings, not ${name === null ? 'null' : typeof name}; ${fix}`,
    );
  }
  if (name.length === 0) throw new SessionError('INVALID_KEY_NAME', `session key name is empty; ${fix}`);
  if (name.length > MAX_KEY_NAME_LENGTH) {
    throw new SessionError(
      'INVALID_KEY_NAME',
      `session key name ${JSON.stringify(`${name.slice(0, 32)}…`)} is ${name.length} UTF-16 code units long, over the limit of ${MAX_KEY_NAME_LENGTH}; ${fix}`,
    );
  }
  if (name.includes('\u0000')) {
    throw new SessionError(
      'INVALID_KEY_NAME',
      `session key name ${JSON.stringify(name)} contains a NUL character (U+0000), which SQL stores cannot keep; remove it or ${fix}`,
    );
  }
  if (!isWellFormed(name)) {
    throw new SessionError(
      'INVALID_KEY_NAME',
      `session key name ${JSON.stringify(name)} contains a lone surrogate (half of a UTF-16 pair, not valid Unicode), which stores cannot keep; check how the name was built (a string cut in the middle of an emoji?) or ${fix}`,
    );
  }
}

function check(value: unknown, path: string, seen: Set<object>): void {
  switch (typeof value) {
    case 'string':
      if (isWellFormed(value)) return;
      throw new SessionError(
        'NOT_SERIALIZABLE',
        `session value at ${path} is a string with a lone surrogate (half of a UTF-16 pair, not valid Unicode), which does not survive UTF-8 encoding; fix the string (was it cut in the middle of an emoji?) or call .toWellFormed() on it.`,
      );
    case 'boolean':
      return;
    case 'number':
      if (Number.isFinite(value)) return;
      break;
    case 'object': {
      if (value === null) return;
      if (seen.has(value)) {
        throw new SessionError(
          'NOT_SERIALIZABLE',
          `session value at ${path} contains a cycle; session values must be JSON trees.`,
        );
      }
      if (Array.isArray(value)) {
        seen.add(value);
        for (let i = 0; i < value.length; i++) check(value[i], `${path}[${i}]`, seen);
        seen.delete(value);
        return;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto === Object.prototype || proto === null) {
        seen.add(value);
        for (const k of Object.keys(value)) {
          if (!isWellFormed(k)) {
            throw new SessionError(
              'NOT_SERIALIZABLE',
              `session value at ${path} has a property name ${JSON.stringify(k)} with a lone surrogate (half of a UTF-16 pair, not valid Unicode), which does not survive UTF-8 encoding; rename the property.`,
            );
          }
          check((value as Record<string, unknown>)[k], `${path}.${k}`, seen);
        }
        seen.delete(value);
        return;
      }
      break;
    }
  }
  throw new SessionError(
    'NOT_SERIALIZABLE',
    `session value at ${path} is ${describe(value)}; session values must be JSON-serialisable.`,
  );
}

/** JSON text of a value, or a clear NOT_SERIALIZABLE error naming the offending path. */
export function toJson(value: unknown, key: string): string {
  check(value, key, new Set());
  return JSON.stringify(value);
}
