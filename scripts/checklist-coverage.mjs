#!/usr/bin/env node
// Prints, for each ID of docs/security-checklist.md (SM-01 … SM-66), the tests whose names
// mention it, as a markdown table: the "Checklist coverage" section of docs/security.md. Usage:
//   node scripts/checklist-coverage.mjs [path/to/checklist.md]   (default: docs/security-checklist.md)
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const checklist = process.argv[2] ?? join(root, 'docs', 'security-checklist.md');

function* files(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* files(path);
    else if (name.endsWith('.ts')) yield path;
  }
}

// A test's or suite's name: the first argument of it/test/describe/suite, or a suite title built
// once into a `title` variable and handed to a runner (src/testing/conformance.ts does this).
const NAMES = [
  /\b(?:it|test|describe|suite)(?:\.each\([^)]*\))?\(\s*(['"`])(.*?)\1/g,
  /\b(?:const|let)\s+\w*[tT]itle\s*=\s*(['"`])(.*?)\1/g,
];

const tests = new Map();
for (const file of [...files(join(root, 'test')), join(root, 'src/testing/conformance.ts')]) {
  const text = readFileSync(file, 'utf8');
  for (const match of NAMES.flatMap((pattern) => [...text.matchAll(pattern)])) {
    for (const id of match[2].matchAll(/SM-(\d{2})/g)) {
      const key = `SM-${id[1]}`;
      if (!tests.has(key)) tests.set(key, new Set());
      tests.get(key).add(relative(root, file));
    }
  }
}

const ids = [...readFileSync(checklist, 'utf8').matchAll(/^\| (SM-\d{2}) \| ([^|]+)\|/gm)];
console.log('| ID | requirement | tests (files) |');
console.log('|---|---|---|');
let covered = 0;
for (const [, id, requirement] of ids) {
  const where = tests.get(id);
  if (where) covered++;
  const short = requirement.trim().replace(/\s+/g, ' ').slice(0, 90);
  console.log(
    `| ${id} | ${short}${requirement.trim().length > 90 ? '…' : ''} | ${where ? [...where].sort().join(', ') : '**none**'} |`,
  );
}
console.log(`\n${covered} of ${ids.length} checklist IDs have at least one named test.`);
