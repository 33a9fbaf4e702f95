/** Builds sessionflow's manager and store for a scenario, exactly as an application would. */
import type { SessionManager, SessionStore } from '../../src/index.js';
import { core, postgresStore, redisStore } from './_dist.js';
import { closeRedis, connectRedis, SECRET, type ServerConfig, Unavailable } from './_shared.js';

/** The data the benchmark keeps in a session. */
export interface BenchData extends Record<string, unknown> {
  k: string;
  n: number;
}

async function createStore(
  config: ServerConfig,
): Promise<{ store: SessionStore; close: () => Promise<void> }> {
  switch (config.store) {
    case 'memory':
      // Room for every session the benchmark creates, so none is evicted mid-run.
      return { store: new core.MemoryStore({ maxEntries: 1_000_000 }), close: async () => {} };
    case 'file':
      if (!config.dir) throw new Error('the file store needs config.dir');
      return {
        store: new core.FileStore({ dir: config.dir, fsync: config.fsync !== false }),
        close: async () => {},
      };
    case 'redis': {
      const { RedisStore } = await redisStore();
      const client = await connectRedis(config.redisUrl);
      const store = new RedisStore({
        client,
        prefix: config.prefix ?? 'sfbench:',
        ...(config.storeTimeoutMs ? { timeoutMs: config.storeTimeoutMs } : {}),
      });
      return { store, close: () => closeRedis(client, config.prefix) };
    }
    case 'postgres': {
      const { default: pg } = await import('pg');
      const { PostgresStore } = await postgresStore();
      const pool = new pg.Pool({
        connectionString: config.pgUrl,
        max: 10,
        connectionTimeoutMillis: config.storeTimeoutMs ?? 2000,
      });
      pool.on('error', () => undefined);
      try {
        await pool.query('SELECT 1');
      } catch (err) {
        await pool.end().catch(() => undefined);
        throw new Unavailable(`postgres not reachable at ${config.pgUrl}: ${(err as Error).message}`);
      }
      const store = new PostgresStore(pool, {
        table: config.table!,
        ...(config.storeTimeoutMs ? { timeoutMs: config.storeTimeoutMs } : {}),
      });
      await store.migrate();
      return { store, close: () => pool.end() };
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
  const manager = new core.SessionManager<BenchData>({ secret: SECRET, cookie: { secure: false }, store });
  return {
    manager,
    close: async () => {
      await manager.close();
      await close();
    },
  };
}
