import { isBase64url } from '../crypto/ids.js';
import { SessionError } from '../errors.js';
import type { SessionDelta, SessionMeta, StoredSession } from './store.js';

/**
 * What every store shares: one storage-key check, one record codec and one rule for corrupt
 * records (reported, then treated as absent, never thrown at the request).
 */

/**
 * Record keys come from the manager: 43 base64url characters. Anything not base64url, or
 * outside 16 to 128 characters (custom keys of tests and tools), is refused.
 */
const MIN_KEY = 16;
const MAX_KEY = 128;

/** Throws INVALID_KEY unless `key` has the shape of a storage key (checked before any I/O). */
export function checkStorageKey(storeName: string, key: unknown): asserts key is string {
  if (typeof key !== 'string' || !isBase64url(key, MIN_KEY, MAX_KEY)) {
    throw new SessionError('INVALID_KEY', `${storeName} refused a storage key that is not base64url.`);
  }
}

/** The metadata fields every record must have. */
const REQUIRED = ['createdAt', 'lastSeenAt', 'deadline'] as const;
const NOT_META = 0;
const REQUIRED_NUMBER = 1;
const NUMBER = 2;
const STRING = 3;

/**
 * The type a store may be handed for a metadata field. A switch rather than `Set`s: the names
 * `Object.keys` returns are internalized strings, which the switch compares by identity.
 */
function metaKind(name: string): number {
  switch (name) {
    case 'createdAt':
    case 'lastSeenAt':
    case 'deadline':
      return REQUIRED_NUMBER;
    case 'authAt':
    case 'phUntil':
    case 'idAt':
    case 'persistUntil':
      return NUMBER;
    case 'userId':
    case 'ua':
    case 'ip':
    case 'h':
    case 'ph':
    case 'mac':
      return STRING;
    default:
      return NOT_META;
  }
}

function typeName(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'number') return Number.isFinite(value) ? 'a number' : String(value);
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

function refuse(storeName: string, problem: string): never {
  throw new SessionError('INVALID_RECORD', `${storeName} refused a write: ${problem}. Nothing was written.`);
}

/** Checks the metadata of a record (`partial`: of a delta, where `undefined` removes a field). */
function checkMeta(storeName: string, meta: unknown, partial: boolean, where: string): void {
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta)) {
    refuse(storeName, `${where} must be an object, not ${typeName(meta)}`);
  }
  const fields = meta as Record<string, unknown>;
  let required = 0;
  for (const name of Object.keys(fields)) {
    const value = fields[name];
    // The field's name is spelled out only for a refusal: most writes pass every field.
    const kind = metaKind(name);
    if (kind === REQUIRED_NUMBER || kind === NUMBER) {
      if (typeof value === 'number' && Number.isFinite(value)) {
        if (kind === REQUIRED_NUMBER) required++;
        continue;
      }
      if (value === undefined && partial && kind === NUMBER) continue;
      refuse(storeName, `${where}.${name} must be a finite number, not ${typeName(value)}`);
    } else if (kind === STRING) {
      if (typeof value === 'string' || (value === undefined && partial)) continue;
      refuse(storeName, `${where}.${name} must be a string, not ${typeName(value)}`);
    } else {
      refuse(storeName, `${where}.${name} is not a session metadata field`);
    }
  }
  // Own keys are distinct, so three valid required fields are the three of them.
  if (!partial && required !== REQUIRED.length) {
    const missing = REQUIRED.find((name) => !Object.hasOwn(fields, name));
    refuse(storeName, `${where}.${missing} is missing`);
  }
}

function checkStrings(storeName: string, values: unknown, where: string): void {
  if (values === null || typeof values !== 'object' || Array.isArray(values)) {
    refuse(storeName, `${where} must be an object of strings, not ${typeName(values)}`);
  }
  for (const name of Object.keys(values)) {
    const value = (values as Record<string, unknown>)[name];
    if (typeof value !== 'string')
      refuse(storeName, `the value of field "${name}" is ${typeName(value)}, not a string`);
  }
}

function checkNames(storeName: string, names: unknown, where: string): void {
  if (!Array.isArray(names) || !names.every((n) => typeof n === 'string')) {
    refuse(storeName, `${where} must be an array of field names`);
  }
}

/**
 * Throws INVALID_RECORD, before any I/O, unless `record` is one that a later load can read back:
 * metadata with its three times as finite numbers and the optional fields of their types, and
 * values that are all strings (encoded by the manager). The manager never writes anything else;
 * this is for code that calls a store itself. The message names the field, never a value.
 */
export function checkRecord(storeName: string, record: unknown): asserts record is StoredSession {
  if (record === null || typeof record !== 'object') refuse(storeName, `the record is ${typeName(record)}`);
  const { meta, values } = record as { meta?: unknown; values?: unknown };
  checkMeta(storeName, meta, false, 'meta');
  checkStrings(storeName, values, 'values');
}

/** The same check for a commit's delta: what it sets, removes, keeps and changes in the metadata. */
export function checkDelta(storeName: string, delta: unknown): asserts delta is SessionDelta {
  if (delta === null || typeof delta !== 'object') refuse(storeName, `the delta is ${typeName(delta)}`);
  const { set, unset, meta, retain } = delta as Partial<Record<keyof SessionDelta, unknown>>;
  checkStrings(storeName, set, 'delta.set');
  checkNames(storeName, unset, 'delta.unset');
  if (retain !== undefined) checkNames(storeName, retain, 'delta.retain');
  if (meta !== undefined) checkMeta(storeName, meta, true, 'delta.meta');
}

/** True if `key` has the shape of a storage key (for scans that skip foreign names). */
export function isStorageKey(key: string): boolean {
  return isBase64url(key, MIN_KEY, MAX_KEY);
}

/** The one JSON form of a record, for stores that keep a record as one string. */
export function encodeRecord(record: StoredSession): string {
  return JSON.stringify(record);
}

function isMeta(value: unknown): value is SessionMeta {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const m = value as Record<string, unknown>;
  return (
    typeof m.createdAt === 'number' && typeof m.lastSeenAt === 'number' && typeof m.deadline === 'number'
  );
}

/** Checks a parsed meta object; null when it is not one. */
export function asMeta(value: unknown): SessionMeta | null {
  return isMeta(value) ? value : null;
}

/** Checks parsed values; a null-prototype copy, or null when any value is not a string. */
export function asValues(value: unknown): Record<string, string> | null {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return null;
  const out: Record<string, string> = Object.create(null);
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'string') return null;
    out[k] = v;
  }
  return out;
}

/** Parses a record written by {@link encodeRecord}; null (corrupt) for anything else. */
export function decodeRecord(text: string): StoredSession | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return null;
  }
  if (parsed === null || typeof parsed !== 'object') return null;
  const meta = asMeta((parsed as { meta?: unknown }).meta);
  const values = asValues((parsed as { values?: unknown }).values);
  return meta && values ? { meta: { ...meta }, values } : null;
}

/**
 * Freezes a record as a store hands it out: loads may share one object (MemoryStore, FileStore's
 * files kept open), and the manager only reads it.
 */
export function freezeRecord(record: StoredSession): Readonly<StoredSession> {
  if (!Object.isFrozen(record.meta)) Object.freeze(record.meta);
  if (!Object.isFrozen(record.values)) Object.freeze(record.values);
  return Object.freeze(record);
}

/**
 * Where a store reports a corrupt record: the store's own `onCorrupt` option if given, else the
 * manager's `warn` once the manager has attached it, else `console.warn`. The message names the
 * store and the place, never the record's content.
 */
export class CorruptLog {
  readonly #custom: ((where: string, reason: string) => void) | undefined;
  #warn: ((message: string) => void) | undefined;

  constructor(custom?: (where: string, reason: string) => void) {
    this.#custom = custom;
  }

  attach(warn: (message: string) => void): void {
    this.#warn = warn;
  }

  report(storeName: string, where: string, reason: string): void {
    if (this.#custom) {
      this.#custom(where, reason);
      return;
    }
    const message = `${storeName}: corrupt session record at ${where} (${reason}); treated as absent.`;
    if (this.#warn) this.#warn(message);
    else console.warn(`[sessionflow] ${message}`);
  }
}

/**
 * A Redis `HGETALL` reply as field, value, field, value…: a flat array as RESP2 (and a script)
 * gives it, a map as RESP3 does (a `Map`, or an object with node-redis's default type mapping);
 * an absent key's nil as nothing.
 */
export function flatHash(reply: unknown): unknown[] {
  if (reply instanceof Map) return [...reply].flat();
  if (typeof reply === 'object' && reply !== null && !Array.isArray(reply) && !Buffer.isBuffer(reply)) {
    return Object.entries(reply).flat();
  }
  return list(reply);
}

/** A Redis array reply; nil as an empty one. */
export function list(value: unknown): unknown[] {
  if (Array.isArray(value)) return value;
  if (value === null || value === undefined) return [];
  throw new Error(`unexpected reply from Redis: ${typeof value}`);
}
