import { randomBytes, type ScryptOptions, scrypt, timingSafeEqual } from 'node:crypto';

/**
 * The demo's user "model" (seed §24: the session stores only the user id; the page looks the
 * user up on each request). Passwords are kept as scrypt hashes only; the plain passwords below
 * appear in the README and the startup banner because this is a demo, never in a session or log.
 */
export interface User {
  readonly id: string;
  readonly username: string;
  readonly displayName: string;
}

/** The demo accounts: username / password. */
export const DEMO_CREDENTIALS: ReadonlyArray<{ username: string; password: string }> = [
  { username: 'alice', password: 'wonderland-42' },
  { username: 'bob', password: 'builder-1337' },
];

// `scrypt$N$r$p$salt$hash`, salt and hash base64url; computed offline with a random 16-byte salt.
const SEED: ReadonlyArray<User & { hash: string }> = [
  {
    id: 'u1',
    username: 'alice',
    displayName: 'Alice Liddell',
    hash: 'scrypt$16384$8$1$Lnp8NCtWLdDDPi006JA6jA$hGFd5dmrUqJpGrtEsbSkRqGO7x0XoLrw3iBHm-qJn1c',
  },
  {
    id: 'u2',
    username: 'bob',
    displayName: 'Bob the Builder',
    hash: 'scrypt$16384$8$1$PyMmI2BYOrJd98SmSQHsUg$BnaDmJIG1RUnllGcw3PFA9LDng3LF-KGy2OIZhbG0lc',
  },
];

// Verified against when the username is unknown, so a miss costs as much time as a wrong password.
const DUMMY_HASH = 'scrypt$16384$8$1$jxnbpCtm5Pv-AARWAe3fTg$5jOQTmhRJqeS04e3IID4wQd_uLnHUti9Ol6An-uTxvQ';

const N = 16_384;
const R = 8;
const P = 1;
const KEY_LENGTH = 32;
/** Longer inputs are refused before hashing: scrypt cost does not depend on it, but memory does. */
export const MAX_PASSWORD_LENGTH = 256;
export const MIN_PASSWORD_LENGTH = 8;

function derive(password: string, salt: Buffer, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, KEY_LENGTH, options, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** Hashes a password as `scrypt$N$r$p$salt$hash`. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await derive(password, salt, { N, r: R, p: P });
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

/** Checks a password against a stored hash; the comparison runs in constant time. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [scheme, n, r, p, salt, hash] = stored.split('$');
  if (scheme !== 'scrypt' || !salt || !hash) return false;
  const expected = Buffer.from(hash, 'base64url');
  const actual = await derive(password, Buffer.from(salt, 'base64url'), {
    N: Number(n),
    r: Number(r),
    p: Number(p),
  });
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}

/**
 * The demo's user table. Each app gets its own copy, so a password changed in one test (or one
 * server run) does not leak into another. Nothing is persisted: a restart restores the seed.
 */
export class UserDirectory {
  readonly #byId = new Map<string, User & { hash: string }>();
  readonly #emails = new Map<string, string>();

  constructor(seed: ReadonlyArray<User & { hash: string }> = SEED) {
    for (const user of seed) this.#byId.set(user.id, { ...user });
  }

  /** The model lookup of seed §24: `Users::findFirst($session->get('user_id'))`. */
  findUserById(id: string | undefined): User | undefined {
    if (id === undefined) return undefined;
    const user = this.#byId.get(id);
    return user && { id: user.id, username: user.username, displayName: user.displayName };
  }

  /**
   * Checks a login attempt. `user` is the account the username names (for the audit log), `ok`
   * whether the password matched. Costs one scrypt whether or not the username exists.
   */
  async authenticate(username: string, password: string): Promise<{ ok: boolean; user: User | undefined }> {
    const entry = [...this.#byId.values()].find((u) => u.username === username);
    const user = entry && this.findUserById(entry.id);
    if (password.length > MAX_PASSWORD_LENGTH) return { ok: false, user };
    const ok = await verifyPassword(password, entry?.hash ?? DUMMY_HASH);
    return { ok: ok && user !== undefined, user };
  }

  /** Checks the password of a signed-in user (re-authentication, password change). */
  async checkPassword(id: string, password: string): Promise<boolean> {
    const entry = this.#byId.get(id);
    if (!entry || password.length > MAX_PASSWORD_LENGTH) return false;
    return verifyPassword(password, entry.hash);
  }

  /** Changes a user's email address (kept in memory only). */
  setEmail(id: string, email: string): void {
    const entry = this.#byId.get(id);
    if (!entry) throw new Error(`no user ${id}`);
    this.#emails.set(id, email);
  }

  /** The user's email address, once set. */
  emailOf(id: string): string | undefined {
    return this.#emails.get(id);
  }

  /** Replaces a user's password (kept in memory only). */
  async setPassword(id: string, password: string): Promise<void> {
    const entry = this.#byId.get(id);
    if (!entry) throw new Error(`no user ${id}`);
    entry.hash = await hashPassword(password);
  }
}
