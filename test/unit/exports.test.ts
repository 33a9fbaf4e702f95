import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  exports: Record<string, string | { types: string; import: string }>;
  peerDependencies: Record<string, string>;
};

/** The source file a `./dist/x.js` export is built from. */
const sourceOf = (target: string) => join(root, target.replace('./dist/', 'src/').replace(/\.js$/, '.ts'));

/** Every package (not relative path) a source file reaches through static imports. */
function packagesReachedFrom(entry: string): Set<string> {
  const seen = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(
      /^\s*(?:import|export)\s[^'";]*?from\s+'([^']+)'|^\s*import\s+'([^']+)'/gm,
    )) {
      const spec = m[1] ?? m[2]!;
      if (m[0].includes('import type') || m[0].includes('export type')) continue;
      if (spec.startsWith('.')) visit(resolve(dirname(file), spec.replace(/\.js$/, '.ts')));
      else if (!spec.startsWith('node:'))
        packages.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
    }
  };
  visit(entry);
  return packages;
}

describe('package exports', () => {
  const entries = Object.entries(pkg.exports).filter(([name]) => name !== './package.json');

  it.each(entries)('%s points at a source module that exists and loads', async (_name, target) => {
    const file = sourceOf(typeof target === 'string' ? target : target.import);
    expect(existsSync(file), file).toBe(true);
    if (typeof target !== 'string') expect(target.types).toBe(target.import.replace(/\.js$/, '.d.ts'));
    const module = (await import(file)) as Record<string, unknown>;
    expect(Object.keys(module).length).toBeGreaterThan(0);
  });

  it('the root entry imports no driver and no framework: users install only what they use', () => {
    const reached = packagesReachedFrom(join(root, 'src/index.ts'));
    expect([...reached].sort()).toEqual(['cookie', 'proxy-addr']);
  });

  it('each store and integration subpath imports only its own driver, which is an optional peer', () => {
    const drivers = new Set(Object.keys(pkg.peerDependencies));
    for (const [name, target] of entries) {
      const file = sourceOf(typeof target === 'string' ? target : target.import);
      const reached = [...packagesReachedFrom(file)].filter((p) => p !== 'cookie' && p !== 'proxy-addr');
      for (const p of reached)
        expect(drivers.has(p), `${name} imports ${p}, which is not a peer dependency`).toBe(true);
      expect(reached.length, `${name} reaches ${reached.join(', ')}`).toBeLessThanOrEqual(1);
    }
  });
});
