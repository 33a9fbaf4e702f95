#!/usr/bin/env node
// Writes the CommonJS entry points named by package.json's exports map; `npm run build` runs it
// after `tsc` has built dist/.
//
// sessionflow is written and built as ES modules. Node 20.19+ loads an ES module with require()
// (require(esm)), so each `require` condition points at a small CommonJS file that re-exports
// the ES module, with a `.d.cts` beside it that says the same to TypeScript. Under Node there is
// one module instance whether an app imports or requires: no dual-package hazard (instanceof,
// module state).
//
// Jest runs CommonJS tests through a module registry of its own, which cannot load ES modules
// with require() on Node before 24.9 (Jest 30.2+ says so by reporting
// process.features.require_module as false; Jest 29 throws a SyntaxError on `export`). For it,
// dist/cjs/lib/ holds a CommonJS copy of dist/ (esbuild, file by file, no bundling; the CLI,
// which is ES-only and never required, left out), and each entry falls back to that copy when
// require(esm) is unavailable. Inside Jest every require then reaches the copy, so there too a
// test sees one instance.
//
// The exports map is the single source: every subpath has `import` -> ./dist/**/*.js and
// `require` -> { types: ./dist/cjs/<name>.d.cts, default: ./dist/cjs/<name>.cjs }. The script
// fails, naming the entry, when one does not (e.g. a new subpath added with `import` only).
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const problems = [];
let written = 0;

/** What the file `from` passes to require() to load `to` (both package-relative paths). */
function requireSpec(from, to) {
  const spec = posix.relative(posix.dirname(from), to);
  return spec.startsWith('.') ? spec : `./${spec}`;
}

for (const [subpath, target] of Object.entries(pkg.exports)) {
  if (typeof target === 'string') continue; // ./package.json
  const esm = typeof target.import === 'string' ? target.import : target.import?.default;
  const cjs = target.require?.default;
  if (!esm?.startsWith('./dist/') || !esm.endsWith('.js')) {
    problems.push(`${subpath}: "import" must be a ./dist/**/*.js file`);
    continue;
  }
  if (!cjs?.startsWith('./dist/cjs/') || !cjs.endsWith('.cjs')) {
    problems.push(
      `${subpath}: "require" must be { "types": "./dist/cjs/<name>.d.cts", "default": "./dist/cjs/<name>.cjs" }`,
    );
    continue;
  }
  const types = cjs.replace(/\.cjs$/, '.d.cts');
  if (target.require.types !== types) {
    problems.push(`${subpath}: "require.types" must be ${types}`);
    continue;
  }
  const spec = requireSpec(cjs, esm);
  const file = join(root, cjs);
  mkdirSync(dirname(file), { recursive: true });
  const copy = requireSpec(cjs, posix.join('./dist/cjs/lib', posix.relative('./dist', esm)));
  const loader = requireSpec(cjs, './dist/cjs/load.cjs');
  writeFileSync(
    file,
    `'use strict';\n// require('${pkg.name}${subpath.slice(1)}'): the ES module itself (require(esm), Node 20.19+), else\n// its CommonJS copy (Jest's module registry; see load.cjs).\nmodule.exports = require('${loader}')(\n  () => require('${spec}'),\n  () => require('${copy}'),\n);\n`,
  );
  writeFileSync(join(root, types), `export * from '${spec}';\n`);
  written++;
}

if (problems.length > 0) {
  console.error(
    `cjs-entries: package.json's exports map is not in the expected shape:\n  ${problems.join('\n  ')}`,
  );
  process.exit(1);
}
writeFileSync(
  join(root, 'dist/cjs/load.cjs'),
  `'use strict';
// The module through require(esm) when this runtime can load ES modules with require(), else its
// CommonJS copy in ./lib. Jest's registry cannot before Node 24.9: Jest 30.2+ reports
// process.features.require_module as false, Jest 29 throws a SyntaxError on the first \`export\`.
// Any other error (one thrown while the module runs) is not swallowed.
module.exports = function load(esm, copy) {
  if (process.features.require_module !== false) {
    try {
      return esm();
    } catch (err) {
      const esmRefused =
        err?.code === 'ERR_REQUIRE_ESM' ||
        (err?.name === 'SyntaxError' && /\\b(export|import)\\b/.test(String(err.message)));
      if (!esmRefused) throw err;
    }
  }
  return copy();
};
`,
);

// The CommonJS copy of dist/ (all but the CLI and dist/cjs itself), for load.cjs's fallback.
const dist = join(root, 'dist');
const lib = join(dist, 'cjs', 'lib');
rmSync(lib, { recursive: true, force: true });
const sources = readdirSync(dist, { recursive: true })
  .map(String)
  .filter((f) => f.endsWith('.js') && !/^(cli|cjs)[\\/]/.test(f));
await build({
  entryPoints: sources.map((f) => join(dist, f)),
  outdir: lib,
  outbase: dist,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  bundle: false,
  logLevel: 'warning',
});
// dist/ is "type": "module" (package.json); the copy's .js files are CommonJS.
writeFileSync(join(lib, 'package.json'), '{ "type": "commonjs" }\n');

console.log(
  `cjs-entries: ${written} CommonJS entry points in dist/cjs/, ${sources.length} modules copied as CommonJS to dist/cjs/lib/`,
);
