/** Stable machine-readable codes carried by every {@link SessionError}. */
export type SessionErrorCode =
  | 'INVALID_OPTION'
  | 'WEAK_SECRET'
  | 'NOT_SERIALIZABLE'
  | 'INVALID_KEY'
  /** A session key name that no store can keep (empty, too long, NUL, lone surrogate). */
  | 'INVALID_KEY_NAME'
  /** A record or delta handed to a store that a load could not read back (a direct store call). */
  | 'INVALID_RECORD'
  | 'STORE_UNAVAILABLE'
  | 'STORE_CORRUPT'
  | 'VALUE_TOO_LARGE'
  | 'CSRF_INVALID'
  | 'NOT_SUPPORTED'
  | 'SESSION_LIMIT'
  | 'REAUTH_REQUIRED'
  | 'TOO_MANY_SESSIONS';

const STATUS: Record<SessionErrorCode, number> = {
  INVALID_OPTION: 500,
  WEAK_SECRET: 500,
  NOT_SERIALIZABLE: 500,
  INVALID_KEY: 500,
  INVALID_KEY_NAME: 500,
  INVALID_RECORD: 500,
  STORE_UNAVAILABLE: 503,
  STORE_CORRUPT: 500,
  VALUE_TOO_LARGE: 500,
  CSRF_INVALID: 403,
  NOT_SUPPORTED: 500,
  // 409, not 429: the login conflicts with the state of the account (its other live sessions)
  // and succeeds only once the user ends one of them; 429 means "slow down", invites automatic
  // retries after Retry-After, and is what rate limiters and ID-guessing throttles answer.
  SESSION_LIMIT: 409,
  REAUTH_REQUIRED: 401,
  // A client over `sessionCreationLimit`: slow down, then retry.
  TOO_MANY_SESSIONS: 429,
};

/**
 * The one error class of sessionflow. `code` is stable across versions; `status` is the HTTP
 * status an integration answers with (503 for a store outage, 403 for a CSRF failure).
 */
export class SessionError extends Error {
  readonly code: SessionErrorCode;
  readonly status: number;
  /** Express and other frameworks read `statusCode`/`status` to pick the response status. */
  readonly statusCode: number;
  /** Errors that may be shown to the client; internal details stay in `cause`. */
  readonly expose: boolean;

  constructor(code: SessionErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SessionError';
    this.code = code;
    this.status = STATUS[code];
    this.statusCode = this.status;
    this.expose = this.status < 500 || code === 'STORE_UNAVAILABLE';
  }
}

/**
 * Wraps a store driver failure so that the integration answers 503 and the user stays logged in.
 * A store's own SessionError (a value over the backend's item size, say) passes through as is.
 */
export function storeUnavailable(operation: string, cause: unknown): SessionError {
  if (cause instanceof SessionError) return cause;
  return new SessionError(
    'STORE_UNAVAILABLE',
    `The session store failed during ${operation}; the request was refused so no session data is lost. Check that the store is reachable.`,
    { cause },
  );
}

/** The 409 a login gets when `maxSessionsPerUser` refuses it; the message can be shown as is. */
export function sessionLimitReached(limit: number): SessionError {
  return new SessionError(
    'SESSION_LIMIT',
    `This account is already signed in on ${limit === 1 ? 'another device' : `${limit} devices`}, the most allowed. Sign out on one of them (or wait for its session to expire), then log in again.`,
  );
}
