import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * The `sessionflow` bin however it is started: through npm's `.bin` symlink (what `npx
 * sessionflow` runs), `node <symlink>`, `node dist/cli/main.js`, `tsx src/cli/main.ts`, and a
 * symlink to the tsx-run source. The CLI is bundled into a scratch project as npm would install
 * it (`node_modules/sessionflow/dist/cli/main.js`, `node_modules/.bin/sessionflow ->
 * ../sessionflow/dist/cli/main.js`), with its own dependencies but none of the store drivers, so
 * that a missing driver is real, not simulated.
 */
const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const source = join(repo, 'src', 'cli', 'main.ts');
const DRIVERS = ['pg', 'redis', 'ioredis', 'memcached', 'mysql2', 'better-sqlite3'];

let project: string;
let bin: string;
let entry: string;

beforeAll(async () => {
  project = await mkdtemp(join(tmpdir(), 'sessionflow-bin-'));
  const pkg = join(project, 'node_modules', 'sessionflow');
  entry = join(pkg, 'dist', 'cli', 'main.js');
  const result = await build({
    entryPoints: [source],
    outfile: entry,
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    packages: 'external',
    metafile: true,
    logLevel: 'silent',
  });
  await writeFile(
    join(pkg, 'package.json'),
    JSON.stringify({
      name: 'sessionflow',
      version: '0.0.0-test',
      type: 'module',
      bin: { sessionflow: './dist/cli/main.js' },
    }),
  );
  await chmod(entry, 0o755);
  // The CLI's own dependencies, installed; the drivers, not.
  const external = new Set<string>();
  for (const output of Object.values(result.metafile.outputs)) {
    for (const i of output.imports) {
      if (i.external && !i.path.startsWith('node:')) external.add(i.path.split('/')[0]!);
    }
  }
  for (const name of external) {
    if (DRIVERS.includes(name)) continue;
    await symlink(join(repo, 'node_modules', name), join(project, 'node_modules', name), 'dir');
  }
  await mkdir(join(project, 'node_modules', '.bin'));
  bin = join(project, 'node_modules', '.bin', 'sessionflow');
  await symlink(relative(dirname(bin), entry), bin);
  await writeFile(
    join(project, 'package.json'),
    JSON.stringify({ name: 'scratch', private: true, dependencies: { sessionflow: '*' } }),
  );
}, 60_000);

afterAll(() => rm(project, { recursive: true, force: true }));

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

function exec(file: string, args: string[], cwd = project): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      { cwd, timeout: 30_000, env: { ...process.env, NO_COLOR: '1' } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

describe('the sessionflow bin, however it is started', () => {
  it('through the .bin symlink, as npx runs it: --help prints the usage, exit code 0', async () => {
    for (const argv of [['--help'], ['gc', '--help']]) {
      const r = await exec(bin, argv);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^usage: sessionflow/);
    }
  });

  it('with node: the symlink, the built file, the built file without its extension', async () => {
    for (const target of [bin, entry, entry.replace(/\.js$/, '')]) {
      const r = await exec(process.execPath, [target, 'stats', '--help']);
      expect(r.code, `${target}: ${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/^usage: sessionflow stats/);
    }
  });

  it('npx sessionflow in a project that has it installed', async () => {
    const npx = join(dirname(process.execPath), 'npx');
    const r = await exec(npx, ['--no-install', 'sessionflow', '--help']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^usage: sessionflow/);
  });

  it('from source with tsx, directly and through a symlink', async () => {
    const link = join(project, 'sessionflow-dev');
    await symlink(source, link);
    const tsx = join(repo, 'node_modules', '.bin', 'tsx');
    for (const [file, args] of [
      [tsx, [source, '--help']],
      [process.execPath, ['--import', 'tsx', source, '--help']],
      [process.execPath, ['--import', 'tsx', link, '--help']],
    ] as const) {
      const r = await exec(file, [...args], repo);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/^usage: sessionflow/);
    }
  });

  it('exit codes reach the shell: 2 for usage, 3 for a store that is not there', async () => {
    const usage = await exec(bin, ['frobnicate']);
    expect(usage.code).toBe(2);
    expect(usage.stdout).toBe('');
    expect(usage.stderr).toMatch(/unknown command "frobnicate"[\s\S]*usage: sessionflow/);
    const missing = await exec(bin, ['stats', '--store', `file:${join(project, 'typo')}`, '--json']);
    expect(missing.code).toBe(3);
    expect(JSON.parse(missing.stderr)).toMatchObject({ error: { exitCode: 3, reason: 'not-found' } });
  });

  it('imported as a module, it runs nothing', async () => {
    const r = await exec(process.execPath, [
      '--input-type=module',
      '-e',
      `await import(${JSON.stringify(`file://${entry}`)}); console.log('imported');`,
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('imported\n');
  });

  it('a missing driver names the package to install, exit code 3', async () => {
    const cases: [string, string][] = [
      ['postgres://postgres@127.0.0.1:5432/test', 'pg'],
      ['mysql://root@127.0.0.1:3306/test', 'mysql2'],
      ['redis://127.0.0.1:6379', 'redis'],
      ['redis-cluster://127.0.0.1:7101', 'ioredis'],
      ['memcached://127.0.0.1:11211', 'memcached'],
      [`sqlite:${join(project, 'x.db')}`, 'better-sqlite3'],
    ];
    for (const [url, pkg] of cases) {
      const r = await exec(bin, ['sessions', '--store', url, '--user', '1']);
      expect(r.code, url).toBe(3);
      expect(r.stderr, url).toContain(`install the '${pkg}' package (npm install ${pkg})`);
      expect(r.stderr, url).not.toMatch(/ERR_MODULE_NOT_FOUND|at .*\(/);
    }
  });
});
