export { SessionBag } from './bag.js';
export { auditTag, isWellFormedToken, newToken, storageKey } from './crypto/ids.js';
export { KeyRing, MIN_SECRET_BYTES } from './crypto/keyring.js';
export { SessionError, type SessionErrorCode, storeUnavailable } from './errors.js';
export { type AuditEvent, type AuditEventType, type ClientInfo, jsonLinesAudit } from './features/audit.js';
export { Csrf, type CsrfPolicy, type CsrfRequest, csrfDecision, isSafeMethod } from './features/csrf.js';
export { escapeHtml, Flash, type FlashMessages, type FlashType } from './features/flash.js';
export { type GuessDetectionSettings, GuessDetector } from './features/throttle.js';
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
export { Session, type SessionStatus } from './session.js';
export { FileStore, type FileStoreOptions } from './stores/file.js';
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
