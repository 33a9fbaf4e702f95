export {
  type CookieSource,
  cookieHeader,
  type ManagerOf,
  readSession,
  type SeededSession,
  type SessionSeed,
  type SessionSnapshot,
  type SetCookieHeaders,
  seedSession,
  sessionCookie,
  type TestClient,
  TestClock,
} from './app.js';
export { type ConformanceOptions, describeStoreConformance, type StoreUnderTest } from './conformance.js';
export { describeSessionInvariants, type InvariantOptions, type InvariantResult } from './invariants.js';
export type { HookRegistrar, SuiteRegistrar, TestRunner } from './runner.js';
