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

function check(value: unknown, path: string, seen: Set<object>): void {
  switch (typeof value) {
    case 'string':
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
        for (const k of Object.keys(value))
          check((value as Record<string, unknown>)[k], `${path}.${k}`, seen);
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
