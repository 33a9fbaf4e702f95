export { type ConformanceOptions, describeStoreConformance, type StoreUnderTest } from './conformance.js';
export { describeSessionInvariants, type InvariantOptions, type InvariantResult } from './invariants.js';
export type { HookRegistrar, SuiteRegistrar, TestRunner } from './runner.js';
