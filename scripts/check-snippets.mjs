#!/usr/bin/env node
// Type-checks every ```ts fence of README.md and docs/**/*.md, as a user would compile it:
// `sessionflow` and its subpaths map to src/ through the `paths` of tsconfig.types.json, every
// other import resolves from node_modules. Each fence is an ES module of its own, written to a
// temp dir; each document is one program, so a `declare module 'sessionflow'` in one fence
// holds for the document's later fences, as for its reader, but not for other documents.
//
// A fence that is deliberately partial opts out with, on the line right before it:
//   <!-- snippet: skip (why) -->
//
// Usage: node scripts/check-snippets.mjs [--keep] [file.md ...]   (--keep leaves the temp dir)
import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
const ts = createRequire(join(root, 'package.json'))('typescript');

const FENCE_OPEN = /^(\s*)```(?:ts|typescript)(?:\s.*)?$/;
const FENCE_CLOSE = /^\s*```\s*$/;
const SKIP = /^\s*<!--\s*snippet:\s*skip\b\s*(.*?)\s*-->\s*$/;

/** The Markdown files to check: the arguments, or README.md and every .md under docs/. */
function documents(args) {
  if (args.length > 0) return args.map((a) => resolve(a));
  const found = [join(root, 'README.md')];
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
      a.name.localeCompare(b.name),
    )) {
      if (entry.isDirectory()) walk(join(dir, entry.name));
      else if (entry.name.endsWith('.md')) found.push(join(dir, entry.name));
    }
  };
  walk(join(root, 'docs'));
  return found;
}

/** The ```ts fences of a Markdown text: code, line of the opening fence (1-based), why skipped. */
function fences(text) {
  const lines = text.split(/\r?\n/);
  const out = [];
  for (let i = 0; i < lines.length; i++) {
    const open = FENCE_OPEN.exec(lines[i]);
    if (!open) continue;
    const indent = open[1].length;
    const start = i + 1;
    const body = [];
    for (i++; i < lines.length && !FENCE_CLOSE.test(lines[i]); i++) body.push(lines[i].slice(indent));
    if (i === lines.length) throw new Error(`unclosed \`\`\`ts fence at line ${start}`);
    const skip = start >= 2 ? SKIP.exec(lines[start - 2]) : null;
    out.push({ code: body.join('\n'), line: start, skip: skip ? skip[1] || 'no reason given' : undefined });
  }
  return out;
}

const args = process.argv.slice(2);
const keep = args.includes('--keep');
const docs = documents(args.filter((a) => a !== '--keep'));

const config = ts.getParsedCommandLineOfConfigFile(
  join(root, 'tsconfig.types.json'),
  {},
  {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => {
      throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
    },
  },
);
// Snippets live outside the project: no rootDir, nothing emitted.
const options = { ...config.options, rootDir: undefined, outDir: undefined, noEmit: true };

const dir = mkdtempSync(join(tmpdir(), 'sessionflow-snippets-'));
// ESM like the package and its users; bare imports resolve from the project's node_modules.
writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n');
symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'), 'dir');

// Parsed library files are shared by the programs of all documents.
const host = ts.createCompilerHost(options);
const parsed = new Map();
const getSourceFile = host.getSourceFile;
host.getSourceFile = (name, language, ...rest) => {
  if (name.startsWith(dir)) return getSourceFile.call(host, name, language, ...rest);
  const key = `${name}\0${typeof language === 'object' ? language.impliedNodeFormat : ''}`;
  if (!parsed.has(key)) parsed.set(key, getSourceFile.call(host, name, language, ...rest));
  return parsed.get(key);
};

let checked = 0;
const skipped = [];
const errors = [];
try {
  for (const doc of docs) {
    const name = relative(root, doc);
    const sub = join(dir, name.replace(/[^A-Za-z0-9]+/g, '_'));
    const files = new Map(); // temp file -> opening line of its fence
    for (const [n, fence] of fences(readFileSync(doc, 'utf8')).entries()) {
      if (fence.skip !== undefined) {
        skipped.push(`${name}:${fence.line} ${fence.skip}`);
        continue;
      }
      const file = `${sub}_${String(n + 1).padStart(2, '0')}.ts`;
      // Appended, not prepended, so that lines match: every fence is a module of its own.
      writeFileSync(file, `${fence.code}\nexport {};\n`);
      files.set(file, fence.line);
    }
    if (files.size === 0) continue;
    checked += files.size;
    const program = ts.createProgram([...files.keys()], options, host);
    const diagnostics = [...program.getOptionsDiagnostics(), ...program.getGlobalDiagnostics()];
    for (const file of files.keys()) {
      const source = program.getSourceFile(file);
      diagnostics.push(...program.getSyntacticDiagnostics(source), ...program.getSemanticDiagnostics(source));
    }
    for (const d of diagnostics) {
      const message = ts.flattenDiagnosticMessageText(d.messageText, '\n  ');
      const fenceLine = d.file && files.get(d.file.fileName);
      if (fenceLine === undefined) {
        errors.push(`${name}: error TS${d.code}: ${message}`);
        continue;
      }
      const { line, character } = d.file.getLineAndCharacterOfPosition(d.start ?? 0);
      const code = d.file.text.split('\n')[line] ?? '';
      errors.push(
        `${name}:${fenceLine + 1 + line}:${character + 1} - error TS${d.code}: ${message}\n    ${code.trim()}`,
      );
    }
  }
} finally {
  if (keep) console.log(`snippets kept in ${dir}`);
  else rmSync(dir, { recursive: true, force: true }); // removes the node_modules link, not its target
}

for (const e of errors) console.error(e);
const summary = [
  `${checked} TypeScript snippet(s) in ${docs.length} document(s) type-checked, ${skipped.length} skipped`,
  ...skipped.map((s) => `  skipped: ${s}`),
].join('\n');
if (errors.length > 0) {
  console.error(`\n${errors.length} error(s); ${summary}`);
  process.exit(1);
}
console.log(summary);
