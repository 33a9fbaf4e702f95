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
  /** Failed logins reached the throttle's limit for an account or address; `reason` says which. */
  | 'authn_login_fail_max'
  /** A login was refused (429) because the account or address is throttled. */
  | 'authn_login_lock'
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
/**
 * NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR: JSON.stringify leaves them as they are, yet many
 * log viewers and JSON-lines readers treat them as line breaks, so a user agent could forge a line.
 */
const LINE_BREAKS = /[\u0085\u2028\u2029]/g;

function escapeLineBreak(char: string): string {
  return `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`;
}

const MAX_HEADER_LENGTH = 256;
/** Anything {@link cleanHeaderValue} would change: a control character or a line break. */
const UNCLEAN = new RegExp(`${CONTROL.source}|${LINE_BREAKS.source}`);
/** What a cut at MAX_HEADER_LENGTH may leave at the end: half an escape, or half a surrogate pair. */
const CUT_TAIL = /\\u[0-9a-f]{0,3}$|[\uD800-\uDBFF]$/;

/**
 * Header values are attacker-controlled: replace control characters with U+FFFD, write U+0085,
 * U+2028 and U+2029 as the text `\u0085`, `\u2028`, `\u2029` (so that no sink, plain text or
 * JSON, shows them as line breaks), and bound the result to 256 characters.
 */
export function cleanHeaderValue(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  // Every request comes here, and nearly every header value is already clean: one scan, no copy.
  if (value.length <= MAX_HEADER_LENGTH && !UNCLEAN.test(value)) return value;
  const clean = value
    .slice(0, MAX_HEADER_LENGTH)
    .replace(CONTROL, '\uFFFD')
    .replace(LINE_BREAKS, escapeLineBreak);
  const cut = value.length > MAX_HEADER_LENGTH || clean.length > MAX_HEADER_LENGTH;
  return cut ? clean.slice(0, MAX_HEADER_LENGTH).replace(CUT_TAIL, '') : clean;
}

/**
 * A sink that writes one JSON object per line to a stream (stdout, a file). JSON escaping, plus
 * `\u0085`, `\u2028` and `\u2029` escapes (JSON.stringify leaves those characters raw), keeps
 * every event on exactly one line, whatever the user agent contains.
 * @example new SessionManager({ secret, audit: jsonLinesAudit(process.stdout) })
 */
export function jsonLinesAudit(stream: { write(chunk: string): unknown }): (event: AuditEvent) => void {
  return (event) => {
    // Those characters can only occur inside JSON strings, where the escape means the same text.
    stream.write(`${JSON.stringify(event).replace(LINE_BREAKS, escapeLineBreak)}\n`);
  };
}
