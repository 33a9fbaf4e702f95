import assert from 'node:assert/strict';
import { inspect } from 'node:util';

/** Registers a suite: `describe(name, body)`, as vitest, jest, mocha and `node:test` spell it. */
export type SuiteRegistrar = (name: string, body: () => void) => unknown;

/** Registers a hook that runs once around a suite (`beforeAll`/`afterAll`, `before`/`after`). */
export type HookRegistrar = (fn: () => Promise<void>) => unknown;

/**
 * The functions of your test runner the suites of `sessionflow/testing` register their cases
 * with. Pass them as they are: sessionflow imports no test runner, and checks with `node:assert`.
 *
 * - vitest, jest (imported), bun:test: `{ describe, it, beforeAll, afterAll }`
 * - `node:test`, mocha: `{ describe, it, before, after }`
 *
 * `describe.skip` is used for the `skip` option when the runner has it.
 */
export interface TestRunner {
  describe: SuiteRegistrar & { skip?: SuiteRegistrar };
  it: (name: string, fn: () => Promise<void>) => unknown;
  /** Once before the suite's cases (vitest, jest, bun). Give this one or `before`. */
  beforeAll?: HookRegistrar;
  /** Once after the suite's cases (vitest, jest, bun). Give this one or `after`. */
  afterAll?: HookRegistrar;
  /** Once before the suite's cases (`node:test`, mocha). */
  before?: HookRegistrar;
  /** Once after the suite's cases (`node:test`, mocha). */
  after?: HookRegistrar;
}

/** The runner's functions under one set of names. */
export interface ResolvedRunner {
  it: TestRunner['it'];
  beforeAll: HookRegistrar;
  afterAll: HookRegistrar;
}

const fn = (value: unknown) => (typeof value === 'function' ? value : undefined);

/**
 * `runner`, or the runner's globals (jest, mocha, vitest with `globals: true`) when none is given;
 * a TypeError naming the option when neither has what the suite needs.
 */
function resolveRunner(caller: string, runner: TestRunner | undefined) {
  const source = (runner ?? globalThis) as Partial<Record<keyof TestRunner, unknown>>;
  const describe = fn(source.describe) as TestRunner['describe'] | undefined;
  const it = fn(source.it) as TestRunner['it'] | undefined;
  const beforeAll = (fn(source.beforeAll) ?? fn(source.before)) as HookRegistrar | undefined;
  const afterAll = (fn(source.afterAll) ?? fn(source.after)) as HookRegistrar | undefined;
  if (!describe || !it || !beforeAll || !afterAll) {
    const missing = [
      describe ? '' : 'describe',
      it ? '' : 'it',
      beforeAll ? '' : 'beforeAll (or before)',
      afterAll ? '' : 'afterAll (or after)',
    ].filter(Boolean);
    throw new TypeError(
      `${caller} needs your test runner's functions in \`options.runner\` (missing: ${missing.join(', ')}): ` +
        "`{ runner: { describe, it, beforeAll, afterAll } }` from 'vitest', or " +
        "`{ runner: { describe, it, before, after } }` from 'node:test'.",
    );
  }
  return { describe, it, beforeAll, afterAll };
}

/**
 * Registers one suite named `title` on the runner; with `skip`, the suite is registered skipped
 * (its title says why), and nothing in it runs.
 */
export function defineSuite(
  caller: string,
  title: string,
  options: { runner?: TestRunner | undefined; skip?: string | false | undefined },
  body: (runner: ResolvedRunner) => void,
): void {
  const { describe, ...rest } = resolveRunner(caller, options.runner);
  if (!options.skip) {
    describe(title, () => body(rest));
    return;
  }
  const skipped = `${title} (skipped: ${options.skip})`;
  const skip = fn(describe.skip) as SuiteRegistrar | undefined;
  if (skip) skip.call(describe, skipped, () => body(rest));
  else describe(skipped, () => {});
}

/** Only the entries whose value is not undefined (vitest's `toEqual` ignores the others). */
function defined(value: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined));
}

/**
 * `actual` is an object with exactly the entries of `expected` (deep, strict), whatever its
 * prototype, entries holding undefined ignored on both sides: vitest's `toEqual` on a record.
 */
export function assertEntries(actual: unknown, expected: object, message?: string): void {
  assert.ok(
    typeof actual === 'object' && actual !== null,
    message ?? `expected an object, got ${inspect(actual)}`,
  );
  assert.deepStrictEqual(defined(actual), defined(expected), message);
}

/** `actual` is an object holding at least the entries of `expected`: vitest's `toMatchObject`. */
export function assertIncludes(actual: unknown, expected: object, message?: string): void {
  assert.ok(
    typeof actual === 'object' && actual !== null,
    message ?? `expected an object, got ${inspect(actual)}`,
  );
  const picked = Object.fromEntries(
    Object.keys(expected).map((key) => [key, (actual as Record<string, unknown>)[key]]),
  );
  assert.deepStrictEqual(picked, { ...expected }, message);
}
