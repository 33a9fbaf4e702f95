import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const fixture = fileURLToPath(new URL('../fixtures/memory-size.ts', import.meta.url));

// The memory store's size target (bench/README.md, "Targets"): at most 600 bytes of heap a small
// session. `npm run bench:stores` measures it at 100k and 1M; this holds it at 50k on every
// test run, in a process of its own (full collections need --expose-gc). A change to how
// `create` copies a record once raised it to 723 bytes (thirtieth pass).
describe('MemoryStore: heap kept per small session', () => {
  it('is at most 600 bytes for 50,000 sessions of one value each, every tenth signed in', async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--expose-gc', '--import', 'tsx', fixture, '50000'],
      { env: { ...process.env, NODE_OPTIONS: '' } },
    );
    const { bytes } = JSON.parse(stdout) as { bytes: number };
    // A floor too, so that a fixture which kept nothing cannot pass.
    expect(bytes).toBeGreaterThan(200);
    expect(bytes).toBeLessThanOrEqual(600);
  });
});
