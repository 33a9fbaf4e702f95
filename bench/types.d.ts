// Minimal typings for the benchmark's untyped peers: only what bench/ uses.

declare module 'autocannon' {
  /** An hdr-histogram-percentiles-obj summary (latency in ms, requests per second, bytes). */
  export interface Histogram {
    average: number;
    mean: number;
    stddev: number;
    min: number;
    max: number;
    total: number;
    p2_5: number;
    p50: number;
    p90: number;
    p97_5: number;
    p99: number;
  }

  export interface Client {
    setHeaders(headers: Record<string, string> | undefined): void;
  }

  export interface Options {
    url: string;
    connections?: number;
    duration?: number;
    /** Milliseconds between samples (default 1000); a run ends at the first sample after `duration`. */
    sampleInt?: number;
    pipelining?: number;
    timeout?: number;
    method?: string;
    headers?: Record<string, string>;
    setupClient?: (client: Client) => void;
    expectBody?: string;
  }

  export interface Result {
    requests: Histogram;
    latency: Histogram;
    throughput: Histogram;
    /** Seconds. */
    duration: number;
    errors: number;
    timeouts: number;
    mismatches: number;
    non2xx: number;
    '2xx': number;
  }

  export interface Instance extends PromiseLike<Result> {
    stop(): void;
  }

  function autocannon(options: Options): Instance;
  export default autocannon;
}

declare module 'express-session' {
  import type { RequestHandler } from 'express';

  export interface SessionData {
    [key: string]: unknown;
  }

  /** Base class of express-session stores (connect-redis and session-file-store extend it). */
  export class Store {}
  export class MemoryStore extends Store {}

  export interface SessionOptions {
    secret: string | string[];
    store?: Store;
    name?: string;
    resave?: boolean;
    saveUninitialized?: boolean;
    cookie?: { secure?: boolean; httpOnly?: boolean; sameSite?: 'lax' | 'strict' | 'none'; maxAge?: number };
  }

  interface SessionMiddlewareFactory {
    (options: SessionOptions): RequestHandler;
    Store: typeof Store;
    MemoryStore: typeof MemoryStore;
  }

  const session: SessionMiddlewareFactory;
  export default session;
}

declare module 'session-file-store' {
  import type session from 'express-session';
  import type { Store } from 'express-session';

  interface FileStoreOptions {
    path?: string;
    ttl?: number;
    retries?: number;
    reapInterval?: number;
    logFn?: (...args: unknown[]) => void;
  }

  /** CJS: `require('session-file-store')(session)` returns the store class. */
  function sessionFileStore(expressSession: typeof session): new (options?: FileStoreOptions) => Store;
  export default sessionFileStore;
}
