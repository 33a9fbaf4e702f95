/** Builds sessionflow's manager and store for a scenario, exactly as an application would. */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { FileStore, MemoryStore, SessionManager, type SessionStore } from '../../src/index.js';
import { closeRedis, connectRedis, SECRET, type ServerConfig, Unavailable } from './_shared.js';

/** The data the benchmark keeps in a session. */
export interface BenchData extends Record<string, unknown> {
  k: string;
  n: number;
}

// The Redis store is optional: its module may not exist yet in this checkout.
const REDIS_STORE_URL = new URL('../../src/stores/redis.ts', import.meta.url);

interface RedisStoreModule {
  RedisStore: new (options: { client: unknown; prefix?: string }) => SessionStore;
}

/** True if sessionflow's RedisStore module exists in this checkout. */
export function redisStoreAvailable(): boolean {
  return existsSync(fileURLToPath(REDIS_STORE_URL));
}

async function createStore(
  config: ServerConfig,
): Promise<{ store: SessionStore; close: () => Promise<void> }> {
  switch (config.store) {
    case 'memory':
      // Room for every session the benchmark creates, so none is evicted mid-run.
      return { store: new MemoryStore({ maxEntries: 1_000_000 }), close: async () => {} };
    case 'file':
      if (!config.dir) throw new Error('the file store needs config.dir');
      return { store: new FileStore({ dir: config.dir }), close: async () => {} };
    case 'redis': {
      if (!redisStoreAvailable()) throw new Unavailable('store not available');
      const mod = (await import(REDIS_STORE_URL.href)) as RedisStoreModule;
      const client = await connectRedis(config.redisUrl);
      const store = new mod.RedisStore({ client, prefix: config.prefix ?? 'sfbench:' });
      return { store, close: () => closeRedis(client, config.prefix) };
    }
    default:
      throw new Error(`unknown store ${String(config.store)}`);
  }
}

/** A SessionManager for plain HTTP (cookie.secure off), with the benchmark's secret. */
export async function sessionflow(
  config: ServerConfig,
): Promise<{ manager: SessionManager<BenchData>; close: () => Promise<void> }> {
  const { store, close } = await createStore(config);
  const manager = new SessionManager<BenchData>({ secret: SECRET, cookie: { secure: false }, store });
  return {
    manager,
    close: async () => {
      await manager.close();
      await close();
    },
  };
}
