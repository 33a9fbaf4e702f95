/**
 * The store targets of issue 9, one after another, each in its own process: load latency as the
 * store fills (memory, Redis, PostgreSQL), gc under load (memory, file, the SQL stores). Each
 * script prints its own table and MET/MISSED lines; this one repeats those lines at the end.
 *
 *   npm run bench:stores [-- --only <substring>]...
 *
 * About 10 minutes in all; `--only fill`, `--only gc`, `--only postgres`, ... run a part.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({ options: { only: { type: 'string', multiple: true } } });
const HERE = fileURLToPath(new URL('.', import.meta.url));

const SUITES: { id: string; script: string; args: string[] }[] = [
  { id: 'fill memory', script: 'fill.ts', args: ['--store', 'memory'] },
  { id: 'fill redis', script: 'fill.ts', args: ['--store', 'redis'] },
  { id: 'fill postgres', script: 'fill.ts', args: ['--store', 'postgres'] },
  { id: 'gc memory', script: 'memory-gc.ts', args: [] },
  { id: 'gc file', script: 'file-gc.ts', args: ['100000'] },
  {
    id: 'gc sql postgres mysql sqlite',
    script: 'sql.ts',
    args: ['--mode', 'gc', '--store', 'postgres', '--store', 'mysql', '--store', 'sqlite'],
  },
];

const only = (args.only ?? []).map((s) => s.toLowerCase());
const picked = SUITES.filter((s) => only.length === 0 || only.some((o) => s.id.includes(o)));
if (picked.length === 0) {
  console.error(`--only matches nothing; suites: ${SUITES.map((s) => s.id).join(', ')}`);
  process.exit(2);
}

/** Runs one script with tsx, echoing its output; resolves with its verdict lines. */
function run(suite: (typeof SUITES)[number]): Promise<string[]> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', `${HERE}${suite.script}`, ...suite.args], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const verdicts: string[] = [];
    let rest = '';
    child.stdout.on('data', (chunk: Buffer) => {
      process.stdout.write(chunk);
      const lines = (rest + chunk.toString('utf8')).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) if (/^\s*(MET|MISSED|n\/a)\s/.test(line)) verdicts.push(line.trim());
    });
    child.on('close', (code) => {
      if (code !== 0) verdicts.push(`n/a     ${suite.id}: the script exited with code ${code}`);
      resolve(verdicts);
    });
  });
}

const summary: string[] = [];
for (const suite of picked) {
  console.log(`\n=== ${suite.id}: bench/${suite.script} ${suite.args.join(' ')}`);
  for (const line of await run(suite)) summary.push(`[${suite.id}] ${line}`);
}
console.log('\nStore targets:');
for (const line of summary) console.log(`  ${line}`);
