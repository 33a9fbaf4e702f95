import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  hash,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto';
import { SessionError } from '../errors.js';

/** Secrets shorter than this are refused: HMAC-SHA256 wants at least 256 bits of key. */
export const MIN_SECRET_BYTES = 32;

/** Sample secrets copied from READMEs and tutorials; refused even when long enough. */
const KNOWN_SAMPLES = new Set(
  [
    'keyboard cat',
    'secret',
    'changeme',
    'change me',
    'your-secret-key',
    'complex_password_at_least_32_characters_long',
    'a-very-long-secret-that-is-at-least-32-characters',
    'a secret with minimum length of 32 characters',
    'cookie-secret-must-be-at-least-32-characters',
    'replace-me-with-a-real-secret-of-32-chars',
    '00000000000000000000000000000000',
    'abcdefghijklmnopqrstuvwxyz012345',
    'this-is-a-secret-key-change-it-in-production',
  ].map((s) => s.toLowerCase()),
);

interface Key {
  mac: Buffer;
  enc: Buffer;
  /** The MAC key's HMAC blocks, see {@link HmacPads}. */
  pads: HmacPads;
}

/** SHA-256's block size: HMAC pads its key to one block. */
const BLOCK = 64;
/**
 * Longest `purpose` + `value`, in UTF-16 units, that {@link hmacSha256} hashes in its buffer (with
 * the zero byte between them, in the `+ 1` of the buffer's size): at most 3 UTF-8 bytes each. A
 * cookie is at most 4096 bytes; longer input takes `createHmac`.
 */
const MAX_PADDED_INPUT = 1400;

/**
 * HMAC-SHA256 (RFC 2104) of one key, ready to use: `inner` starts with the key XOR ipad and has
 * room for a message after it, `outer` is the key XOR opad followed by room for the inner digest.
 * `createHmac` builds and tears down an OpenSSL MAC context per call, which looks the digest up
 * by name in OpenSSL 3's provider tables every time (measured: about 28k instructions per
 * cookie signature, about 10k of them SHA-256's five blocks); two one-shot `hash` calls over
 * these buffers compute the same MAC with about 9k fewer per new session (bench/README.md,
 * twenty-fifth pass).
 */
interface HmacPads {
  inner: Buffer;
  outer: Buffer;
}

function hmacPads(key: Buffer): HmacPads {
  // A key longer than a block would be hashed first (RFC 2104); the derived keys are 32 bytes.
  if (key.length > BLOCK) throw new Error('an HMAC key here is at most one block');
  const inner = Buffer.alloc(BLOCK + 1 + 3 * MAX_PADDED_INPUT);
  const outer = Buffer.alloc(BLOCK + 32);
  for (let i = 0; i < BLOCK; i++) {
    const k = key[i] ?? 0;
    inner[i] = k ^ 0x36;
    outer[i] = k ^ 0x5c;
  }
  return { inner, outer };
}

/**
 * HMAC-SHA256 of `purpose`, a zero byte and `value` (UTF-8), base64url: what
 * `createHmac('sha256', key).update(purpose).update('\0').update(value).digest('base64url')`
 * returns, byte for byte (test/unit/keyring.test.ts compares the two). Synchronous from the
 * first write to the last, so one buffer per key serves every call; the message is wiped from
 * it afterwards, as `newToken` wipes its pool.
 */
function hmacSha256(key: Key, purpose: string, value: string): string {
  if (purpose.length + value.length > MAX_PADDED_INPUT) {
    return createHmac('sha256', key.mac).update(purpose).update('\0').update(value).digest('base64url');
  }
  const { inner, outer } = key.pads;
  // One write of the whole message (a zero byte is '\0' in UTF-8): a write into a Buffer is a
  // call into C++ of about 1,000 instructions, whatever its length.
  const end = BLOCK + inner.write(`${purpose}\0${value}`, BLOCK, 'utf8');
  // The inner digest as a latin1 ('binary') string: one character per byte, written back as
  // the same 32 bytes.
  const digest = hash('sha256', inner.subarray(0, end), 'binary');
  inner.fill(0, BLOCK, end);
  outer.write(digest, BLOCK, 'latin1');
  return hash('sha256', outer, 'base64url');
}

function deriveKey(secret: string, index: number): Key {
  const bytes = Buffer.byteLength(secret, 'utf8');
  if (bytes < MIN_SECRET_BYTES) {
    throw new SessionError(
      'WEAK_SECRET',
      `secret #${index + 1} is ${bytes} bytes; use at least ${MIN_SECRET_BYTES} random bytes, e.g. the output of \`openssl rand -base64 48\`.`,
    );
  }
  if (KNOWN_SAMPLES.has(secret.toLowerCase()) || /^(.)\1+$/.test(secret)) {
    throw new SessionError(
      'WEAK_SECRET',
      `secret #${index + 1} is a published sample or a repeated character; generate a random one, e.g. \`openssl rand -base64 48\`.`,
    );
  }
  // Separate subkeys per purpose so a MAC key is never also an encryption key.
  const ikm = Buffer.from(secret, 'utf8');
  const mac = Buffer.from(hkdfSync('sha256', ikm, 'sessionflow', 'cookie-mac', 32));
  const enc = Buffer.from(hkdfSync('sha256', ikm, 'sessionflow', 'value-aead', 32));
  return { mac, enc, pads: hmacPads(mac) };
}

/** Result of verifying a signed value: which key matched, so the caller can re-sign with the newest. */
export interface Verified {
  value: string;
  /** Index of the key that verified it; 0 is the newest. */
  keyIndex: number;
}

const MAC_LENGTH = 43; // base64url of 32 bytes
const SEAL_VERSION = 'a1';
const SEAL_PREFIX = `${SEAL_VERSION}.0.`;
const IV_BYTES = 12;
const TAG_BYTES = 16;

/**
 * An ordered set of secrets: the first signs and encrypts, all verify and decrypt, so secrets
 * can rotate without logging anyone out. Key material is derived once, at construction.
 */
export class KeyRing {
  readonly #keys: Key[];

  constructor(secrets: readonly string[]) {
    if (secrets.length === 0) {
      throw new SessionError('WEAK_SECRET', 'at least one secret is required; pass `secret` or `secrets`.');
    }
    this.#keys = secrets.map((s, i) => deriveKey(s, i));
  }

  get size(): number {
    return this.#keys.length;
  }

  /** `value.mac`, where the MAC also covers `purpose` (the cookie name) so values cannot be swapped. */
  sign(purpose: string, value: string): string {
    return `${value}.${hmacSha256(this.#keys[0]!, purpose, value)}`;
  }

  /**
   * Verifies `value.mac` in constant time against every key. Anything after the MAC, a truncated
   * MAC or a MAC of the wrong length fails (the cookie-signature #40 lesson).
   */
  verify(purpose: string, signed: string): Verified | null {
    const dot = signed.lastIndexOf('.');
    if (dot <= 0 || signed.length - dot - 1 !== MAC_LENGTH) return null;
    const value = signed.slice(0, dot);
    const given = Buffer.from(signed.slice(dot + 1), 'utf8');
    for (let i = 0; i < this.#keys.length; i++) {
      const expected = Buffer.from(hmacSha256(this.#keys[i]!, purpose, value), 'utf8');
      if (expected.length === given.length && timingSafeEqual(expected, given)) return { value, keyIndex: i };
    }
    return null;
  }

  /**
   * Encrypts with AES-256-GCM under the newest key. `aad` binds the ciphertext to its place
   * (session + value name), so it cannot be moved to another session or key.
   */
  seal(plaintext: string, aad: string): string {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.#keys[0]!.enc, iv);
    cipher.setAAD(Buffer.from(aad, 'utf8'));
    const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
    const tag = cipher.getAuthTag();
    return `${SEAL_PREFIX}${Buffer.concat([iv, tag, body]).toString('base64url')}`;
  }

  /** Length of what {@link seal} returns for a plaintext of `bytes` UTF-8 bytes (IV + tag + body, base64url). */
  sealedLength(bytes: number): number {
    return SEAL_PREFIX.length + Math.ceil(((IV_BYTES + TAG_BYTES + bytes) * 4) / 3);
  }

  /** Decrypts a value sealed by {@link seal} with any key of the ring; null if it does not verify. */
  open(sealed: string, aad: string): string | null {
    if (!sealed.startsWith(`${SEAL_VERSION}.`)) return null;
    const payload = sealed.slice(sealed.indexOf('.', SEAL_VERSION.length + 1) + 1);
    const raw = Buffer.from(payload, 'base64url');
    if (raw.length < IV_BYTES + TAG_BYTES) return null;
    const iv = raw.subarray(0, IV_BYTES);
    const tag = raw.subarray(IV_BYTES, IV_BYTES + TAG_BYTES);
    const body = raw.subarray(IV_BYTES + TAG_BYTES);
    for (const key of this.#keys) {
      try {
        const decipher = createDecipheriv('aes-256-gcm', key.enc, iv);
        decipher.setAAD(Buffer.from(aad, 'utf8'));
        decipher.setAuthTag(tag);
        return Buffer.concat([decipher.update(body), decipher.final()]).toString('utf8');
      } catch {
        // wrong key or tampered: try the next key
      }
    }
    return null;
  }
}
