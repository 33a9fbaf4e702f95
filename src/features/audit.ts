/**
 * Audit events, named after the OWASP Logging Vocabulary where one exists. Records never carry
 * a token or a storage key: `sid` is a short one-way tag of the storage key.
 */
export type AuditEventType =
  | 'session_created'
  | 'session_renewed'
  | 'session_expired'
  | 'session_logout'
  | 'session_destroyed'
  | 'session_invalid_cookie'
  | 'session_unknown_id'
  | 'session_binding_mismatch'
  | 'session_revoked'
  | 'authn_login_success'
  | 'authn_login_fail'
  | 'malicious_csrf'
  | 'store_corrupt'
  /** A renewed-away session ID was presented after its grace window (SM-24). */
  | 'session_use_after_expire'
  /** A login took a user over `maxSessionsPerUser` (SM-38); `reason` says what was done. */
  | 'excess_sessions_exceeded'
  /** Many invalid or unknown session cookies from one address: ID guessing (SM-42). */
  | 'suspicious';

export interface AuditEvent {
  type: AuditEventType;
  /** UTC ISO-8601 time. */
  time: string;
  /** Short hash of the storage key (never the token). */
  sid?: string;
  userId?: string;
  ip?: string;
  userAgent?: string;
  /** Why: e.g. 'idle' or 'absolute' for session_expired, 'user-agent' for a binding mismatch. */
  reason?: string;
}

/** Client facts the manager attaches to events. */
export interface ClientInfo {
  ip?: string;
  userAgent?: string;
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point.
const CONTROL = /[\u0000-\u001f\u007f]/g;

/** Header values are attacker-controlled: drop control characters and bound the length. */
export function cleanHeaderValue(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  return value.replace(CONTROL, '\uFFFD').slice(0, 256);
}

/**
 * A sink that writes one JSON object per line to a stream (stdout, a file). JSON escaping keeps
 * every event on exactly one line, whatever the user agent contains.
 * @example new SessionManager({ secret, audit: jsonLinesAudit(process.stdout) })
 */
export function jsonLinesAudit(stream: { write(chunk: string): unknown }): (event: AuditEvent) => void {
  return (event) => {
    stream.write(`${JSON.stringify(event)}\n`);
  };
}
