#!/usr/bin/env bash
# Installs the packed tarball into a fresh project, as a user would, and checks that it works there:
# `npm i <tarball> express@4` without ERESOLVE, the `sessionflow` bin, require() and import() of
# every subpath (one module instance for both), a TypeScript consumer in CJS and ESM, and Jest 29
# and 30 requiring every subpath under globally faked timers.
#
#   bash scripts/pack-smoke.sh            # builds first
#   SKIP_BUILD=1 bash scripts/pack-smoke.sh
#
# Needs the npm registry (express@4 is installed from it). Takes well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n-- pack-smoke: %s\n' "$*"; }
fail() {
  printf 'pack-smoke: FAILED: %b\n' "$*" >&2
  exit 1
}

if [ -z "${SKIP_BUILD:-}" ]; then
  step "npm run build"
  npm run build --silent
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sessionflow-pack-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT

step "npm pack"
tarball="$work/$(npm pack --silent --pack-destination "$work" | tail -1)"
[ -f "$tarball" ] || fail "npm pack produced no tarball"
listing=$(tar -tzf "$tarball")
for needed in package/LICENSE package/README.md package/package.json package/dist/index.js \
  package/dist/index.d.ts package/dist/cjs/index.cjs package/dist/cjs/index.d.cts package/dist/cli/main.js; do
  grep -qx "$needed" <<<"$listing" || fail "$needed is not in the tarball"
done
if grep -qE '^package/(src|test|scripts|bench|examples|\.ci)/' <<<"$listing"; then
  fail "the tarball ships development files: $(grep -E '^package/(src|test|scripts|bench|examples|\.ci)/' <<<"$listing" | head -3 | tr '\n' ' ')"
fi
echo "$(basename "$tarball"): $(wc -l <<<"$listing") files, $(du -k "$tarball" | cut -f1) KB"

app="$work/app"
mkdir "$app"
cd "$app"
npm init -y >/dev/null

step "npm i <tarball> express@4"
# No --legacy-peer-deps / --force: a peer range conflict (ERESOLVE) must fail here.
npm install --no-audit --no-fund --loglevel=error "$tarball" express@4

# sessionflow/hono imports its framework when it loads (HTTPException), as a Hono app has it
# installed anyway; the other subpaths load their drivers only when a store is built.
step "npm i hono (for the sessionflow/hono subpath)"
npm install --no-audit --no-fund --loglevel=error hono@4

step "npx sessionflow --help"
set +e
# --no: never fetch a package of that name from the registry; `--` keeps --help for the bin.
help=$(npx --no -- sessionflow --help 2>&1)
status=$?
set -e
printf '%s\n' "$help" | head -5
[ "$status" -eq 0 ] || fail "npx sessionflow --help exited with $status"
grep -q '^usage: sessionflow' <<<"$help" || fail "npx sessionflow --help printed no usage (did the bin run its main?)"

# Every subpath of the exports map, from the installed package.json.
subpaths=$(node -p "Object.keys(require('sessionflow/package.json').exports).filter((s) => s !== './package.json').map((s) => 'sessionflow' + s.slice(1)).join(' ')")

step "require() of every subpath"
cat >check.cjs <<'EOF'
const assert = require('node:assert/strict');
const names = process.argv.slice(2);
for (const name of names) {
  const mod = require(name);
  assert.ok(Object.keys(mod).length > 0, `require('${name}') exported nothing`);
}
assert.equal(typeof require('sessionflow').SessionManager, 'function');
assert.equal(typeof require('sessionflow/express').session, 'function');
assert.equal(typeof require('sessionflow/stores/memory').MemoryStore, 'function');
console.log(`require(): ${names.length} entry points`);
EOF
node -e "require('sessionflow')"
# shellcheck disable=SC2086
out=$(node check.cjs $subpaths 2>&1) || fail "require() failed:\n$out"
echo "$out"
grep -q 'Warning' <<<"$out" && fail "require() printed a warning:\n$out"

step "an Express 4 app, written with require()"
# Two visits through an Express app on sessionflow's memory store: the texts of both answers and
# the session cookie of the first. The Jest step below runs the same app.
cat >visits.cjs <<'EOF'
const express = require('express');
const { SessionManager } = require('sessionflow');
const { session } = require('sessionflow/express');
const { MemoryStore } = require('sessionflow/stores/memory');
exports.twoVisits = async function twoVisits() {
  const sessions = new SessionManager({
    secret: 'pack-smoke-secret-0123456789-abcdefghijklmnopqrstuvwxyz',
    store: new MemoryStore(),
    cookie: { secure: false },
  });
  const app = express();
  app.use(session(sessions));
  app.get('/', (req, res) => {
    const visits = (req.session.get('visits') ?? 0) + 1;
    req.session.set('visits', visits);
    res.send(`visits: ${visits}`);
  });
  const server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  try {
    const url = `http://127.0.0.1:${server.address().port}/`;
    const first = await fetch(url);
    const cookie = first.headers.get('set-cookie')?.split(';')[0];
    const second = await fetch(url, cookie ? { headers: { cookie } } : {});
    return { first: await first.text(), cookie, second: await second.text() };
  } finally {
    server.close();
  }
};
EOF
cat >express4.cjs <<'EOF'
const assert = require('node:assert/strict');
const { twoVisits } = require('./visits.cjs');
const version = require('express/package.json').version;
assert.match(version, /^4\./);
twoVisits().then(
  ({ first, cookie, second }) => {
    assert.equal(first, 'visits: 1');
    assert.ok(cookie, 'the first response set no session cookie');
    assert.equal(second, 'visits: 2');
    console.log(`express@${version}: one session across two requests`);
  },
  (error) => {
    console.error(error);
    process.exitCode = 1;
  },
);
EOF
node express4.cjs || fail "the Express 4 app did not keep its session"

step "import() of every subpath, the same module instance as require()"
cat >check.mjs <<'EOF'
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const names = process.argv.slice(2);
for (const name of names) {
  const mod = await import(name);
  assert.ok(Object.keys(mod).length > 0, `import('${name}') exported nothing`);
  for (const [key, value] of Object.entries(mod))
    assert.equal(require(name)[key], value, `${name}: require().${key} is not import().${key}`);
}
console.log(`import(): ${names.length} entry points, each one instance with require()`);
EOF
node --input-type=module -e "await import('sessionflow')"
# shellcheck disable=SC2086
out=$(node check.mjs $subpaths 2>&1) || fail "import() failed:\n$out"
echo "$out"

step "TypeScript consumers (CommonJS and ES module, module nodenext)"
cat >consumer.cts <<'EOF'
import sessionflow = require('sessionflow');
import { MemoryStore } from 'sessionflow/stores/memory';
export const manager: sessionflow.SessionManager = new sessionflow.SessionManager({
  secret: 'a-long-enough-secret-for-the-smoke-test-0123456789',
  store: new MemoryStore(),
});
EOF
cat >consumer.mts <<'EOF'
import { SessionManager } from 'sessionflow';
import { MemoryStore } from 'sessionflow/stores/memory';
export const manager: SessionManager = new SessionManager({
  secret: 'a-long-enough-secret-for-the-smoke-test-0123456789',
  store: new MemoryStore(),
});
EOF
"$root/node_modules/.bin/tsc" --noEmit --strict --skipLibCheck --module nodenext --moduleResolution nodenext \
  --types node --typeRoots "$root/node_modules/@types" consumer.cts consumer.mts ||
  fail "a TypeScript consumer does not type-check"
echo "consumer.cts, consumer.mts: no errors"

step "Jest 29 and 30 (CommonJS tests, timers faked for the whole suite): every subpath, an Express app"
# Jest's module registry cannot require() an ES module on Node < 24.9: the entries fall back to
# the CommonJS copy in dist/cjs/lib (scripts/cjs-entries.mjs).
mkdir "$app/jest"
cat >"$app/jest/jest.config.cjs" <<'EOF'
module.exports = { testEnvironment: 'node', fakeTimers: { enableGlobally: true } };
EOF
cat >"$app/jest/app.test.cjs" <<'EOF'
const names = JSON.parse(process.env.SUBPATHS);
test('every subpath loads', () => {
  for (const name of names) expect(Object.keys(require(name)).length).toBeGreaterThan(0);
});
test('an Express app keeps its session across two requests, the clock never advanced', async () => {
  expect(Object.prototype.hasOwnProperty.call(setImmediate, 'clock')).toBe(true);
  const { first, cookie, second } = await require('../visits.cjs').twoVisits();
  expect(first).toBe('visits: 1');
  expect(cookie).toBeTruthy();
  expect(second).toBe('visits: 2');
}, 10000);
EOF
# shellcheck disable=SC2086
subpaths_json=$(node -p "JSON.stringify(process.argv.slice(1))" $subpaths)
for jest in 29 30; do
  npm install --no-audit --no-fund --loglevel=error "jest@$jest"
  out=$(cd "$app/jest" && SUBPATHS="$subpaths_json" npx --no -- jest --rootDir . --testMatch '**/*.test.cjs' 2>&1) ||
    fail "jest@$jest:\n$out"
  echo "jest@$(node -p "require('jest/package.json').version"): $(grep -E '^Tests:' <<<"$out")"
done

printf '\npack-smoke: OK\n'
