#!/usr/bin/env node
// Prints, for each checklist ID (SM-01 … SM-66), the tests whose names mention it, as a
// markdown table: the evidence column of docs/security.md. Usage:
//   node scripts/checklist-coverage.mjs [path/to/security-checklist.md]
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const checklist = process.argv[2] ?? join(root, '..', 'shared', 'security-checklist.md');

function* files(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* files(path);
    else if (name.endsWith('.ts')) yield path;
  }
}

const tests = new Map();
for (const file of [...files(join(root, 'test')), join(root, 'src/testing/conformance.ts')]) {
  const text = readFileSync(file, 'utf8');
  for (const match of text.matchAll(/\b(?:it|test|describe|suite)(?:\.each\([^)]*\))?\(\s*(['"`])(.*?)\1/g)) {
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
