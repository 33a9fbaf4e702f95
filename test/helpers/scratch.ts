/**
 * A test file's scratch space for store tests that run real processes: temporary store
 * directories and child processes running a fixture under tsx. Call `scratch()` at the top of the
 * test file; after the file, the children still running are killed and the directories removed.
 */
import { type ChildProcess, type StdioOptions, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll } from 'vitest';

export function scratch(prefix: string) {
  const roots: string[] = [];
  const children: ChildProcess[] = [];
  afterAll(async () => {
    for (const child of children)
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await Promise.all(roots.map((root) => rm(root, { recursive: true, force: true })));
  });
  return {
    /** A store directory (`<new temp dir>/sessions`), not made yet: the store makes it. */
    async tempDir(): Promise<string> {
      const root = await mkdtemp(join(tmpdir(), `sessionflow-${prefix}-`));
      roots.push(root);
      return join(root, 'sessions');
    },
    /** `test/fixtures/<name>` in a child process (node --import tsx), from the repository's root. */
    fixture(name: string, args: string[], stdio: StdioOptions = ['ignore', 'pipe', 'pipe']): ChildProcess {
      const path = fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));
      const child = spawn(process.execPath, ['--import', 'tsx', path, ...args], {
        cwd: fileURLToPath(new URL('../..', import.meta.url)),
        stdio,
      });
      children.push(child);
      return child;
    },
  };
}
