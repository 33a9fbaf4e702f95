import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

/**
 * Runs a test file under `node --test` (through tsx, TAP reporter) and reads its summary: the
 * exit code, the TAP output, and the pass / fail / skipped counts it reports.
 */
export async function runNodeTest(file: string, cwd: string) {
  const run = promisify(execFile)(
    process.execPath,
    ['--import', 'tsx', '--test', '--test-reporter=tap', file],
    { cwd, env: { ...process.env, NODE_OPTIONS: '' }, maxBuffer: 16 * 1024 * 1024 },
  );
  const { stdout, code } = await run.then(
    (r) => ({ stdout: r.stdout, code: 0 }),
    (e: { stdout?: string; code?: number }) => ({ stdout: e.stdout ?? '', code: e.code ?? -1 }),
  );
  const count = (what: string) => Number(stdout.match(new RegExp(`^# ${what} (\\d+)$`, 'm'))?.[1] ?? NaN);
  return { code, stdout, pass: count('pass'), fail: count('fail'), skipped: count('skipped') };
}
