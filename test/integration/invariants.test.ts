import { appendFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { storeFromUrl } from '../../src/cli/store-from-url.js';
import { describeSessionInvariants, type InvariantResult } from '../../src/testing/invariants.js';
import { serverAvailable } from '../helpers/servers.js';
import { openReachable, storeUrlCases } from '../helpers/store-urls.js';

/**
 * Issue-6 invariants on all eight stores, through a real SessionManager: logout, revoke and
 * revokeAll are final whatever ID changes run concurrently, acknowledged writes survive an ID
 * change, losers fail closed. Each race: both deterministic orders, then 100 random interleavings.
 * With INVARIANTS_REPORT=<file>, one JSON line per race (store, race, trials, survivors) is
 * appended there.
 */
const scratch = await mkdtemp(join(tmpdir(), 'sessionflow-invariants-'));
const results: InvariantResult[] = [];
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
  const file = process.env.INVARIANTS_REPORT;
  if (file) for (const r of results) appendFileSync(file, `${JSON.stringify(r)}\n`);
});

const cases = storeUrlCases(scratch);

for (const [label, url] of cases) {
  const skip = await serverAvailable(`${label} store`, async () => {
    await (await openReachable(url, { dataDir: join(scratch, label.replace(/\W/g, '-')) })).close();
  });
  describeSessionInvariants(
    label,
    async () => {
      const s = await storeFromUrl(url, { dataDir: join(scratch, label.replace(/\W/g, '-')) });
      return { store: s.store, cleanup: () => s.close() };
    },
    { skip, trials: 100, report: (r) => results.push(r), runner: { describe, it, beforeAll, afterAll } },
  );
}
