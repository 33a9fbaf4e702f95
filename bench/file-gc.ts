/**
 * FileStore gc under load: N sessions, half of them expired, collected while a load runs every
 * millisecond; prints the time, how many were removed and the event-loop delay (p99, max) seen
 * while gc ran (issue 8: gc must never block the event loop more than 20 ms).
 *
 *   npx tsx bench/file-gc.ts [N=10000]
 */

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';

const { FileStore } = await import('../src/stores/file.js');
let t = Date.now();
const now = () => t;
const dir = mkdtempSync(join(tmpdir(), 'sessionflow-gc-bench-'));
const store = new FileStore({ dir, fsync: false, now });
const N = Number(process.argv[2] ?? 10000);
const key = (i: number) => (i.toString(36).padStart(8, '0') + 'x'.repeat(43)).slice(0, 43);
for (let i = 0; i < N; i += 100) {
  await Promise.all(
    Array.from({ length: 100 }, (_, j) => {
      const ttl = (i + j) % 2 === 0 ? 60_000 : 3_600_000;
      return store.create(
        key(i + j),
        { meta: { createdAt: t, lastSeenAt: t, deadline: t + 7_200_000 }, values: { 'v:a': '"x"' } },
        ttl,
      );
    }),
  );
}
t += 10 * 60_000; // half expired
const delay = monitorEventLoopDelay({ resolution: 1 });
delay.enable();
let reads = 0;
const load = setInterval(() => {
  store.load(key(1)).then(() => reads++);
}, 1);
const start = performance.now();
const removed = await store.gc(t);
const ms = performance.now() - start;
clearInterval(load);
delay.disable();
console.log(
  `files ${N}, removed ${removed} in ${ms.toFixed(0)} ms, event-loop delay p99 ${(delay.percentile(99) / 1e6).toFixed(1)} ms, max ${(delay.max / 1e6).toFixed(1)} ms, concurrent loads ${reads}`,
);
await store.close();
