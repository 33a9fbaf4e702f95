import { afterAll, describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/index.js';
import { ALICE, csrfFrom, login, removeTempDirs, sessionFiles, startDemo } from '../helpers/demo.js';

/**
 * Issue 8, "Done means": against the demo, 10,000 anonymous GET /login (and HEAD /login) create
 * no stored record on the file and memory stores, and a signed-in user stays signed in.
 */
afterAll(removeTempDirs);

const VISITS = 10_000;

/** `count` requests, `parallel` at a time. */
async function hammer(count: number, parallel: number, one: (i: number) => Promise<void>) {
  let next = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < count) await one(next++);
    }),
  );
}

describe.each(['file', 'memory'] as const)('anonymous visitors on the %s store', (kind) => {
  it(`${VISITS} GET/HEAD /login store nothing; the signed-in user stays signed in`, async () => {
    const memory = new MemoryStore();
    const demo = await startDemo(kind === 'memory' ? { store: memory } : {});
    try {
      const alice = demo.client();
      expect((await login(alice, ALICE)).location).toBe('/dashboard');
      const stored = async () => (kind === 'memory' ? memory.size : (await sessionFiles(demo.dir!)).length);
      const before = await stored();
      expect(before).toBe(1);
      const started = Date.now();
      await hammer(VISITS, 16, async (i) => {
        const res = await fetch(`${demo.url}/login`, { method: i % 10 === 0 ? 'HEAD' : 'GET' });
        if (res.status !== 200) throw new Error(`GET /login answered ${res.status}`);
        if (i % 10 !== 0 && !csrfFrom(await res.text())) throw new Error('the login form has no CSRF token');
      });
      console.log(
        `${kind}: ${VISITS} anonymous visits in ${Date.now() - started} ms, records ${before} -> ${await stored()}`,
      );
      expect(await stored()).toBe(before);
      expect((await alice.get('/dashboard')).status).toBe(200);
    } finally {
      await demo.close();
    }
  }, 120_000);
});
