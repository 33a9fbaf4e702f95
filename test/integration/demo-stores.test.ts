import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type SelectedStore, storeFromUrl } from '../../src/cli/store-from-url.js';
import { ALICE, credentials, startDemo } from '../helpers/demo.js';
import { serverAvailable } from '../helpers/servers.js';

/**
 * The demo runs on every store by configuration (`SESSION_STORE=...`), and the seed's whole
 * workflow (login, dashboard, parallel writes, logout) behaves the same on each.
 */
const scratch = await mkdtemp(join(tmpdir(), 'sessionflow-demo-stores-'));
afterAll(() => rm(scratch, { recursive: true, force: true }));

const cases: Array<[label: string, url: string]> = [
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

const csrfOf = (html: string) => /name="_csrf" value="([^"]+)"/.exec(html)?.[1] ?? '';

describe.each(cases)('the demo on SESSION_STORE=%s', async (label, url) => {
  let selected: SelectedStore | undefined;
  const skip = await serverAvailable(`${label} store`, async () => {
    selected = await storeFromUrl(url, { dataDir: join(scratch, label.replace(/\W/g, '-')) });
  });

  it.skipIf(skip)('login, dashboard, 10 parallel writes, logout: the whole workflow holds', async () => {
    const demo = await startDemo({ store: selected!.store });
    try {
      const c = demo.client();
      const loginToken = csrfOf((await c.get('/login')).body);
      const login = await c.post('/login', { _csrf: loginToken, ...credentials(ALICE) });
      expect(login.status).toBe(303);
      expect(login.location).toBe('/dashboard');
      const dashboard = await c.get('/dashboard');
      expect(dashboard.status).toBe(200);
      expect(dashboard.body).toContain('Welcome back!');
      const token = csrfOf(dashboard.body);
      const writes = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          c.post('/transfer', { _csrf: token, to: 'bob', amount: '1', ref: `t${i}` }),
        ),
      );
      expect(writes.map((w) => w.status)).toEqual(Array(10).fill(200));
      const after = (await c.get('/dashboard')).body;
      for (let i = 0; i < 10; i++) expect(after).toContain(`t${i}`);
      const stolen = c.jar.clone();
      expect((await c.post('/logout', { _csrf: token })).status).toBe(303);
      expect((await demo.client(stolen).get('/dashboard')).status).toBe(303);
    } finally {
      await demo.close();
      await selected?.close();
    }
  });
});
