/**
 * What the standalone Redis and the Redis Cluster suites share: both client libraries, records,
 * unique key prefixes, and the SM-64 conformance and `RedisStore specifics` suites per client,
 * each file supplying how to connect to its deployment and how to clean up after it.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe } from 'vitest';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import { type RedisClientLike, RedisStore } from '../../src/stores/redis.js';
import type { SessionMeta, StoredSession } from '../../src/stores/store.js';
import { describeStoreConformance } from '../../src/testing/conformance.js';

export const HOUR = 3_600_000;
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const newKey = () => storageKey(newToken());
export const uniquePrefix = (tag: string) => `sftest:${tag}:${randomBytes(6).toString('hex')}:`;

export function record(values: Record<string, string>, extra: Partial<SessionMeta> = {}): StoredSession {
  const now = Date.now();
  return { meta: { createdAt: now, lastSeenAt: now, deadline: now + HOUR, ...extra }, values };
}

/** Every suite runs once per client library. */
export const kinds = ['node-redis', 'ioredis'] as const;
export type Kind = (typeof kinds)[number];

export interface Connected {
  client: RedisClientLike;
  close: () => Promise<void>;
}

export type RedisStoreOptions = ConstructorParameters<typeof RedisStore>[0];

/** A Redis deployment under test. */
export interface RedisTarget {
  /** As the suite names show it: `standalone` or `Cluster`. */
  topology: string;
  /** Why the suites are skipped (from `serverAvailable`), or false. */
  skip: string | false;
  /** A connected client of `kind`. */
  connect(kind: Kind): Promise<Connected>;
  /** Deletes every key under `prefix`, through connections of its own. */
  deleteKeys(prefix: string): Promise<void>;
  /** The tag in the key prefixes of one client's stores (they are unique anyway; it says whose keys). */
  prefixTag(kind: Kind): string;
}

/** The SM-64 conformance suite, once per client. */
export function describeRedisConformance(target: RedisTarget): void {
  for (const kind of kinds) {
    describeStoreConformance(
      `RedisStore (${kind}, ${target.topology})`,
      async () => {
        const { client, close } = await target.connect(kind);
        const prefix = uniquePrefix(target.prefixTag(kind));
        return {
          store: new RedisStore({ client, prefix }),
          cleanup: async () => {
            await close();
            await target.deleteKeys(prefix);
          },
        };
      },
      { skip: target.skip },
    );
  }
}

/** What the tests of one `RedisStore specifics` suite get. */
export interface RedisSpecifics {
  kind: Kind;
  /**
   * A store on the suite's client; its prefix (a unique one unless given) is cleaned up after
   * the suite. The client is connected in `beforeAll`, so call this from a hook or a test.
   */
  storeWith(options?: Partial<RedisStoreOptions>): RedisStore;
}

/** `RedisStore specifics (<kind>, <topology>)`, once per client, on one connected client each. */
export function describeRedisSpecifics(target: RedisTarget, tests: (suite: RedisSpecifics) => void): void {
  const suite = target.skip ? describe.skip : describe;
  for (const kind of kinds) {
    suite(`RedisStore specifics (${kind}, ${target.topology})${target.skip ? ` (skipped: ${target.skip})` : ''}`, () => {
      let conn: Connected;
      const prefixes: string[] = [];
      const storeWith = (options: Partial<RedisStoreOptions> = {}) => {
        const prefix = options.prefix ?? uniquePrefix(target.prefixTag(kind));
        prefixes.push(prefix);
        return new RedisStore({ client: conn.client, ...options, prefix });
      };

      beforeAll(async () => {
        conn = await target.connect(kind);
      });
      afterAll(async () => {
        await conn?.close();
        for (const p of prefixes) await target.deleteKeys(p);
      });

      tests({ kind, storeWith });
    });
  }
}
