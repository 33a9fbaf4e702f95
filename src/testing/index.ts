export { type ConformanceOptions, describeStoreConformance, type StoreUnderTest } from './conformance.js';
