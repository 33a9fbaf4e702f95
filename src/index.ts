/**
 * sessionflow's public API: the manager, the session types, the two built-in stores and what a
 * custom store needs. Integrations, the other stores and the test suites have their own entry
 * points (`sessionflow/express`, `sessionflow/stores/redis`, `sessionflow/testing`, ...).
 */
export type { SessionBag } from './bag.js';
export { SessionError, type SessionErrorCode } from './errors.js';
export { type AuditEvent, type AuditEventType, type ClientInfo, jsonLinesAudit } from './features/audit.js';
export type { Csrf } from './features/csrf.js';
export { escapeHtml, type Flash, type FlashMessages, type FlashType } from './features/flash.js';
export type {
  LoginThrottle,
  LoginThrottleOptions,
  ThrottleVerdict,
} from './features/login-throttle.js';
export type { GuessDetectionSettings } from './features/throttle.js';
export { type CommitOutcome, type RequestInfo, SessionManager } from './manager.js';
export {
  type BindingOptions,
  type CookieOptions,
  DEFAULT_ABSOLUTE_TIMEOUT,
  DEFAULT_EXPIRED_RETENTION,
  DEFAULT_IDLE_TIMEOUT,
  type RenewalOptions,
  type ResolvedOptions,
  type SessionLimitOptions,
  type SessionManagerOptions,
} from './options.js';
export { Session, type SessionData, type SessionStatus } from './session.js';
export { FileStore, type FileStoreOptions } from './stores/file.js';
export { checkDelta, checkRecord } from './stores/kit.js';
export { MemoryStore, type MemoryStoreOptions } from './stores/memory.js';
export {
  applyDelta,
  type CommitGuard,
  type CommitResult,
  cloneRecord,
  guardHolds,
  isLiveTtl,
  type SessionDelta,
  type SessionMeta,
  type SessionStore,
  type SessionSummary,
  type StoreCapabilities,
  type StoredSession,
} from './stores/store.js';
