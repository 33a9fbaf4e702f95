import { join } from 'node:path';
import { FileStore } from '../stores/file.js';
import { MemoryStore } from '../stores/memory.js';
import type { SessionStore } from '../stores/store.js';

/** A store built from a URL, with a label safe to print (no password) and a way to close it. */
export interface SelectedStore {
  store: SessionStore;
  label: string;
  /** Closes the driver's connections (the store does not own the client it was given). */
  close: () => Promise<void>;
}

const nothing = async () => {};

/** `scheme://user:secret@host/…` -> `scheme://host/…`: a connection URL may carry a password. */
function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}

function hosts(url: string): string[] {
  return url
    .slice(url.indexOf('://') + 3)
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean);
}

/**
 * Builds a store from a URL, as the demo's `SESSION_STORE` and the admin CLI's `--store` take it
 * (drivers are imported only when chosen):
 * - `file` (default): one file per session in `<dataDir>/sessions`, kept across restarts;
 *   `file:/some/dir` names the directory itself;
 * - `memory`: in this process only, lost on restart;
 * - `redis://host:6379` (node-redis), `redis-cluster://host:7101,host:7102` (Cluster);
 * - `memcached://host:11211,host:11212`;
 * - `postgres://user@host/db`, `mysql://user@host/db`, `sqlite:/path/to/file.db`.
 */
export async function storeFromUrl(
  value: string | undefined,
  options: { dataDir: string },
): Promise<SelectedStore> {
  const choice = (value ?? '').trim() || 'file';
  const scheme = choice.includes(':') ? choice.slice(0, choice.indexOf(':')) : choice;
  switch (scheme) {
    case 'file': {
      const dir = choice.startsWith('file:')
        ? choice.replace(/^file:(\/\/)?/, '')
        : join(options.dataDir, 'sessions');
      return { store: new FileStore({ dir }), label: `file (${dir})`, close: nothing };
    }
    case 'memory':
      return { store: new MemoryStore(), label: 'memory (lost on restart)', close: nothing };
    case 'redis':
    case 'rediss': {
      const { createClient } = await import('redis');
      const { RedisStore } = await import('../stores/redis.js');
      const client = createClient({ url: choice });
      await client.connect();
      return {
        store: new RedisStore({ client }),
        label: `redis (${redact(choice)})`,
        close: async () => void (await client.quit()),
      };
    }
    case 'redis-cluster': {
      // ioredis, because node-redis 5's Cluster client does not re-route while a dead master
      // stays down (see docs/stores-redis.md); ioredis follows the replica's promotion.
      const { Cluster } = await import('ioredis');
      const { RedisStore } = await import('../stores/redis.js');
      const nodes = hosts(choice).map((h) => ({
        host: h.slice(0, h.lastIndexOf(':')),
        port: Number(h.slice(h.lastIndexOf(':') + 1)),
      }));
      const cluster = new Cluster(nodes);
      return {
        store: new RedisStore({ client: cluster }),
        label: `redis cluster (${hosts(choice).join(', ')})`,
        close: async () => void (await cluster.quit()),
      };
    }
    case 'memcached': {
      const { default: Memcached } = await import('memcached');
      const { MemcachedStore, recommendedMemcachedOptions } = await import('../stores/memcached.js');
      const client = new Memcached(hosts(choice), { ...recommendedMemcachedOptions });
      return {
        store: new MemcachedStore(client),
        label: `memcached (${hosts(choice).join(', ')})`,
        close: async () => client.end(),
      };
    }
    case 'postgres':
    case 'postgresql': {
      const { default: pg } = await import('pg');
      const { PostgresStore } = await import('../stores/postgres.js');
      const pool = new pg.Pool({ connectionString: choice });
      const store = new PostgresStore(pool);
      await store.migrate();
      return { store, label: `postgres (${redact(choice)})`, close: () => pool.end() };
    }
    case 'mysql':
    case 'mariadb': {
      const mysql = await import('mysql2/promise');
      const { MySqlStore } = await import('../stores/mysql.js');
      const pool = mysql.createPool(choice.replace(/^mariadb:/, 'mysql:'));
      const store = new MySqlStore(pool);
      await store.migrate();
      return { store, label: `mysql (${redact(choice)})`, close: () => pool.end() };
    }
    case 'sqlite': {
      const { default: Database } = await import('better-sqlite3');
      const { SqliteStore } = await import('../stores/sqlite.js');
      const file = choice.replace(/^sqlite:(\/\/)?/, '');
      const db = new Database(file);
      db.pragma('journal_mode = WAL');
      const store = new SqliteStore(db);
      await store.migrate();
      return { store, label: `sqlite (${file})`, close: async () => void db.close() };
    }
    default:
      throw new Error(
        `SESSION_STORE=${JSON.stringify(redact(choice))} is not supported; use file (default), memory, redis://, redis-cluster://, memcached://, postgres://, mysql:// or sqlite:<path>.`,
      );
  }
}
