import { createHash, hash, randomFillSync } from 'node:crypto';

/** Bytes of entropy in a session token: 256 bits, well above OWASP's 64-bit floor. */
export const TOKEN_BYTES = 32;
/** base64url length of a 32-byte token (no padding). */
export const TOKEN_LENGTH = 43;

/**
 * A character outside base64url's 64 (`\w` is `[A-Za-z0-9_]` without the `u` and `i` flags).
 * Searching for one bad character, with the length checked apart, is about 40 % cheaper than
 * matching `^[A-Za-z0-9_-]{16,128}$` (71 against 115 ns for a 43-character key; a loop over
 * `charCodeAt` measured 120-165 ns: bench/README.md, twenty-eighth pass), and every load, write
 * and creation checks a storage key.
 */
const NOT_BASE64URL = /[^\w-]/;

/** True if `value` is `min` to `max` characters, all of base64url's alphabet (no padding). */
export function isBase64url(value: string, min: number, max: number): boolean {
  return value.length >= min && value.length <= max && !NOT_BASE64URL.test(value);
}

// Tokens are cut from a buffer that the CSPRNG fills POOL_TOKENS at a time: one call into
// OpenSSL per 64 tokens instead of one per token (as node's own randomUUID() caches entropy).
// Every byte is used once; the buffer lives in this process only, like the tokens themselves.
const POOL_TOKENS = 64;
const pool = Buffer.alloc(TOKEN_BYTES * POOL_TOKENS);
let poolOffset = pool.length;

/** A fresh session token from the operating system's CSPRNG, base64url-encoded. */
export function newToken(): string {
  if (poolOffset === pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const start = poolOffset;
  poolOffset += TOKEN_BYTES;
  const token = pool.toString('base64url', start, poolOffset);
  // Nothing of a token handed out stays behind in the pool.
  pool.fill(0, start, poolOffset);
  return token;
}

/** True if `value` has the exact shape of a token; checked before any other work. */
export function isWellFormedToken(value: string): boolean {
  return isBase64url(value, TOKEN_LENGTH, TOKEN_LENGTH);
}

/**
 * The storage key of a token: SHA-256, base64url. Stores only ever see this, so a dump of the
 * store cannot be replayed as cookies (the Rack CVE-2019-16782 lesson). The token carries 256
 * bits of entropy, so an unkeyed hash is enough and survives secret rotation.
 */
export function storageKey(token: string): string {
  // One-shot hash(): no Hash object per request (about five times faster than createHash).
  return hash('sha256', token, 'base64url');
}

/** A short, non-reversible tag of a storage key for logs and audit records (never the token). */
export function auditTag(key: string): string {
  return createHash('sha256').update(`audit:${key}`).digest('base64url').slice(0, 12);
}
