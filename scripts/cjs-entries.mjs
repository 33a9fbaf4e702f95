#!/usr/bin/env node
// Writes the CommonJS entry points named by package.json's exports map; `npm run build` runs it
// after `tsc` has built dist/.
//
// sessionflow ships one build, in ES modules. Node 20.19+ loads an ES module with require()
// (require(esm)), so each `require` condition points at a two-line CommonJS file that re-exports
// the ES module, with a `.d.cts` beside it that says the same to TypeScript. Either way there is
// one module instance: no dual-package hazard (instanceof, module state), and no second build.
//
// The exports map is the single source: every subpath has `import` -> ./dist/**/*.js and
// `require` -> { types: ./dist/cjs/<name>.d.cts, default: ./dist/cjs/<name>.cjs }. The script
// fails, naming the entry, when one does not (e.g. a new subpath added with `import` only).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const problems = [];
let written = 0;

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
  let spec = posix.relative(posix.dirname(cjs), esm);
  if (!spec.startsWith('.')) spec = `./${spec}`;
  const file = join(root, cjs);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(
    file,
    `'use strict';\n// require('${pkg.name}${subpath.slice(1)}'): Node 20.19+ loads the ES module itself (require(esm)).\nmodule.exports = require('${spec}');\n`,
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
console.log(`cjs-entries: ${written} CommonJS entry points in dist/cjs/`);
