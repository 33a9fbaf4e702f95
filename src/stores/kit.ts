import { SessionError } from '../errors.js';
import type { SessionMeta, StoredSession } from './store.js';

/**
 * What every store shares: one storage-key check, one record codec and one rule for corrupt
 * records (reported, then treated as absent, never thrown at the request).
 */

/** Record keys come from the manager: 43 base64url characters. Anything else is refused. */
const STORAGE_KEY = /^[A-Za-z0-9_-]{16,128}$/;

/** Throws INVALID_KEY unless `key` has the shape of a storage key (checked before any I/O). */
export function checkStorageKey(storeName: string, key: unknown): asserts key is string {
  if (typeof key !== 'string' || !STORAGE_KEY.test(key)) {
    throw new SessionError('INVALID_KEY', `${storeName} refused a storage key that is not base64url.`);
  }
}

/** True if `key` has the shape of a storage key (for scans that skip foreign names). */
export function isStorageKey(key: string): boolean {
  return STORAGE_KEY.test(key);
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
