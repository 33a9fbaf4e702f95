import { join } from 'node:path';
import { type SelectedStore, type StoreFromUrlOptions, storeFromUrl } from '../../src/cli/store-from-url.js';

/**
 * The eight stores by the URL `storeFromUrl` (the demo's SESSION_STORE) takes, servers overridable
 * by environment: what the suites that run "on every store" iterate over.
 */
export function storeUrlCases(scratch: string): Array<[label: string, url: string]> {
  return [
    ['file', 'file'],
    ['memory', 'memory'],
    ['sqlite', `sqlite:${join(scratch, 'sessions.db')}`],
    ['redis', process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'],
    [
      'redis cluster',
      `redis-cluster://${process.env.REDIS_CLUSTER_NODES ?? '127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103'}`,
    ],
    ['memcached', `memcached://${process.env.MEMCACHED_SERVERS ?? '127.0.0.1:11211,127.0.0.1:11212'}`],
    ['postgres', process.env.PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test'],
    ['mariadb', process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'],
  ];
}

/**
 * The store `url` selects, once one real read has proved its server is there (clients connect
 * lazily). If the read fails, the store is closed before the error is thrown: a client left open
 * would keep reconnecting, and logging so, for the rest of the file.
 */
export async function openReachable(url: string, options: StoreFromUrlOptions = {}): Promise<SelectedStore> {
  const opened = await storeFromUrl(url, options);
  try {
    await opened.store.load('A'.repeat(43));
  } catch (err) {
    await opened.close().catch(() => undefined);
    throw err;
  }
  return opened;
}
