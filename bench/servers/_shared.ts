/**
 * What every benchmark server shares: the routes' contract, the config handed over by the
 * parent, and the child side of the parent <-> server protocol (IPC).
 *
 * Routes, identical in every server so that rows compare like with like:
 *   GET /setup  writes `k = "hello"` into a new session (the response carries the cookie); without a
 *               cookie this is also the "create" row: a new visitor whose session is written
 *   GET /read   reads `k` and answers it; changes nothing (the "read" of the targets in bench/README.md)
 *   GET /write  sets `n` to a new number on every request
 *   GET /anon   answers "anon" and never touches the session
 */

import { rmSync } from 'node:fs';
import type { Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createClient } from 'redis';

/** One secret for everyone: 32+ characters, not a published sample. */
export const SECRET = 'sfbench-9d41c7e2a05b6f38-1e7a4c92d8b3f650-k';
export const STORED_VALUE = 'hello';
export const ANON_BODY = 'anon';
export const WRITE_BODY = 'ok';

export type StoreKind = 'memory' | 'file' | 'redis' | 'postgres';

/** Handed over by the parent as one JSON argument. */
export interface ServerConfig {
  store?: StoreKind;
  /** Directory for file stores (created and removed by the parent). */
  dir?: string;
  /** FileStore `fsync` (default true): false trades what a power cut can lose for write speed. */
  fsync?: boolean;
  redisUrl?: string;
  /** Key prefix for Redis stores (unique per run; the parent deletes its keys). */
  prefix?: string;
  /** PostgreSQL connection string and table (unique per run; the parent drops it). */
  pgUrl?: string;
  table?: string;
  /** Plain Express only: a middleware waits this many milliseconds (a timer) before each request. */
  waitMs?: number;
  /** Plain Express only: a first middleware puts `req` and `res` into V8's dictionary mode. */
  dictionaryMode?: boolean;
  /** The Redis and SQL stores' `timeoutMs`, and the pool's connection timeout (default: the stores' 1 s, 2 s). */
  storeTimeoutMs?: number;
}

/** Messages from a server to the parent. */
export type ServerMessage =
  | { type: 'ready'; port: number }
  | { type: 'unavailable'; reason: string }
  | { type: 'error'; message: string }
  | { type: 'cpu'; usage: NodeJS.CpuUsage };

/** Messages from the parent to a server. */
export type ParentMessage = { type: 'cpu' };

/** Thrown while starting when a scenario cannot run here (store missing, server unreachable). */
export class Unavailable extends Error {}

export interface Started {
  port: number;
  close?: () => Promise<void>;
}

function reply(message: ServerMessage, then?: () => void): void {
  if (process.send) process.send(message, undefined, {}, () => then?.());
  else then?.();
}

/**
 * Starts a server and reports its port to the parent. The server exits when told to (SIGTERM,
 * SIGINT) and on its own when the parent goes away (the IPC channel closes even on SIGKILL).
 */
export function serve(start: (config: ServerConfig) => Promise<Started>): void {
  const config = JSON.parse(process.argv[2] ?? '{}') as ServerConfig;
  let close: (() => Promise<void>) | undefined;
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), 2000).unref();
    Promise.resolve(close?.())
      .catch(() => undefined)
      .finally(() => {
        // The parent removes it too; this covers a parent that was killed outright.
        if (config.dir) rmSync(config.dir, { recursive: true, force: true });
        process.exit(0);
      });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('disconnect', stop);
  process.on('message', (message: ParentMessage) => {
    if (message?.type === 'cpu') reply({ type: 'cpu', usage: process.cpuUsage() });
  });
  start(config).then(
    (started) => {
      close = started.close;
      reply({ type: 'ready', port: started.port });
    },
    (err: unknown) => {
      const message: ServerMessage =
        err instanceof Unavailable
          ? { type: 'unavailable', reason: err.message }
          : { type: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) };
      reply(message, () => process.exit(err instanceof Unavailable ? 0 : 1));
    },
  );
}

/** Listens on an ephemeral loopback port. */
export async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return (server.address() as AddressInfo).port;
}

/** Closes a server, dropping keep-alive connections so it does not wait for the client. */
export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

export type Redis = ReturnType<typeof createClient>;

/** A connected node-redis client, or Unavailable if Redis does not answer. */
export async function connectRedis(url = 'redis://127.0.0.1:6379'): Promise<Redis> {
  const client = createClient({ url, socket: { connectTimeout: 2000, reconnectStrategy: false } });
  client.on('error', () => undefined); // connection errors surface through connect() and commands
  try {
    await client.connect();
    await client.ping();
  } catch (err) {
    throw new Unavailable(`redis not reachable at ${url}: ${(err as Error).message}`);
  }
  return client;
}

/** Deletes this scenario's keys (the parent does too) and closes the client. */
export async function closeRedis(client: Redis, prefix: string | undefined): Promise<void> {
  if (prefix) {
    for await (const keys of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) {
      if (keys.length > 0) await client.unlink(keys);
    }
  }
  await client.close();
}

/** Plain-text 200 response, written the same way by every node:http server. */
export function text(res: ServerResponse, body: string, status = 200): void {
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}
