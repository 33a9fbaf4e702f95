import assert from 'node:assert/strict';
import type { CommitOutcome, RequestInfo } from '../manager.js';
import { SessionManager } from '../manager.js';
import type { SessionManagerOptions } from '../options.js';
import type { SessionStore } from '../stores/store.js';
import type { StoreUnderTest } from './conformance.js';
import { defineSuite, type TestRunner } from './runner.js';

/** Options of {@link describeSessionInvariants}. */
export interface InvariantOptions {
  /**
   * Your test runner's `describe`, `it` and once-per-suite hooks (see {@link TestRunner}).
   * Needed unless the runner puts them on `globalThis` (jest, mocha, vitest with `globals: true`).
   */
  runner?: TestRunner;
  /** Skip the whole suite with this message (e.g. the server is not reachable on a laptop). */
  skip?: string | false;
  /** Randomized trials per race (at least 100 is what sessionflow's own stores are held to). @default 100 */
  trials?: number;
  /** Receives one line per race: store, race, trials, survivors. @default no output */
  report?: (line: InvariantResult) => void;
}

/** What one race measured: `survivors` is how many trials broke the invariant (must be 0). */
export interface InvariantResult {
  store: string;
  race: string;
  trials: number;
  survivors: number;
}

const SECRET = 'invariants-secret-0123456789-abcdefghijklmnopqrstuvwxyz';
const MINUTE = 60_000;

/** A manager on the store with a clock the races can move (renewal). */
function managerFor(
  store: SessionStore,
  clock: { offset: number },
  extra: Partial<SessionManagerOptions> = {},
) {
  return new SessionManager({
    secret: SECRET,
    store,
    now: () => Date.now() + clock.offset,
    warn: () => {},
    ...extra,
  });
}

type Manager = SessionManager;

const request = (m: Manager, cookie: string | undefined): RequestInfo => ({
  secure: true,
  ...(cookie === undefined ? {} : { cookieHeader: `${m.options.cookie.name}=${cookie}` }),
});

/** The cookie value a response set, '' if it cleared it, undefined if it sent none. */
function cookieOf(m: Manager, out: CommitOutcome): string | undefined {
  const name = `${m.options.cookie.name}=`;
  const header = out.setCookie.find((c) => c.startsWith(name));
  if (header === undefined) return undefined;
  return header.slice(name.length, header.indexOf(';'));
}

async function signIn(m: Manager, userId: string): Promise<string> {
  const s = await m.load(request(m, undefined));
  await s.login(userId);
  const cookie = cookieOf(m, await m.commit(s, request(m, undefined)));
  if (!cookie) throw new Error('login issued no cookie');
  return cookie;
}

/** True if any of the cookies still opens an authenticated session. */
async function anyAlive(m: Manager, cookies: (string | undefined)[]): Promise<boolean> {
  for (const cookie of cookies) {
    if (!cookie) continue;
    const s = await m.load(request(m, cookie));
    if (!s.isNew && s.userId !== undefined) return true;
  }
  return false;
}

/** A few turns of the event loop, a random number of them, some across a timer. */
async function jitter(): Promise<void> {
  const turns = Math.floor(Math.random() * 4);
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
  if (Math.random() < 0.3) await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 3)));
}

/** Runs `steps` in the chosen order: in sequence, or concurrently with random delays. */
async function interleave(order: 'forward' | 'backward' | 'random', steps: (() => Promise<unknown>)[]) {
  if (order === 'forward') for (const step of steps) await step();
  else if (order === 'backward') for (const step of [...steps].reverse()) await step();
  else
    await Promise.all(
      steps.map(async (step) => {
        await jitter();
        await step();
      }),
    );
}

const uid = () => `u-${Math.random().toString(36).slice(2, 10)}`;

/**
 * The identity invariants as tests, on a real store through a real SessionManager: logout and
 * revocation are final, whatever ID changes run concurrently; an acknowledged write survives a
 * concurrent ID change; a loser fails closed. Each race runs in both deterministic orders, then
 * `trials` times with random interleavings, and counts the trials that broke the invariant.
 * It imports no test runner: it registers its cases with the functions you pass in
 * `options.runner`, and checks with `node:assert`.
 *
 * @example vitest
 * import { afterAll, beforeAll, describe, it } from 'vitest';
 * import { describeSessionInvariants } from 'sessionflow/testing';
 *
 * describeSessionInvariants('MyStore', async () => ({ store: new MyStore(client) }), {
 *   runner: { describe, it, beforeAll, afterAll },
 * });
 *
 * @example node:test (`node --test`)
 * import { after, before, describe, it } from 'node:test';
 * import { describeSessionInvariants } from 'sessionflow/testing';
 *
 * describeSessionInvariants('MyStore', async () => ({ store: new MyStore(client) }), {
 *   runner: { describe, it, before, after },
 * });
 */
export function describeSessionInvariants(
  name: string,
  factory: () => Promise<StoreUnderTest>,
  options: InvariantOptions = {},
): void {
  const trials = options.trials ?? 100;
  const title = `identity invariants: ${name}`;
  defineSuite('describeSessionInvariants', title, options, ({ it, beforeAll, afterAll }) => {
    let sut: StoreUnderTest;
    const clock = { offset: 0 };
    beforeAll(async () => {
      sut = await factory();
    });
    afterAll(async () => {
      await sut?.cleanup?.();
    });

    /** Runs one race in every order; `trial` answers true when the invariant broke. */
    async function race(
      label: string,
      trial: (order: 'forward' | 'backward' | 'random') => Promise<boolean>,
    ) {
      for (const order of ['forward', 'backward'] as const)
        assert.equal(await trial(order), false, `${label}, ${order}: the invariant broke`);
      let survivors = 0;
      for (let i = 0; i < trials; i++) if (await trial('random')) survivors++;
      options.report?.({ store: name, race: label, trials, survivors });
      assert.equal(survivors, 0, `${label}: ${survivors} of ${trials} trials broke the invariant`);
    }

    it('invariant 1: logout racing regenerateId leaves nothing alive; the loser fails closed', async () => {
      const m = managerFor(sut.store, clock);
      await race('logout vs regenerate', async (order) => {
        const c0 = await signIn(m, uid());
        const [elevate, logout] = [await m.load(request(m, c0)), await m.load(request(m, c0))];
        let out: CommitOutcome | undefined;
        await interleave(order, [
          async () => logout.logout().then(() => m.commit(logout, request(m, c0))),
          async () => {
            await elevate.regenerateId();
            out = await m.commit(elevate, request(m, c0));
          },
        ]);
        const issued = cookieOf(m, out!);
        // A loser clears the cookie: never a second live record, never an error.
        if (out!.gone && issued !== '') return true;
        return anyAlive(m, [c0, issued]);
      });
    });

    it('invariant 2: revokeAll racing three regenerating sessions ends them all, except the one kept', async () => {
      const m = managerFor(sut.store, clock);
      await race('revokeAll vs regenerate', async (order) => {
        const user = uid();
        const kept = await signIn(m, user);
        const keptId = (await m.load(request(m, kept))).id;
        const cookies = [await signIn(m, user), await signIn(m, user), await signIn(m, user)];
        const loaded = await Promise.all(cookies.map((c) => m.load(request(m, c))));
        const issued: (string | undefined)[] = [];
        await interleave(order, [
          () => m.revokeAll(user, { except: keptId }),
          ...loaded.map((s, i) => async () => {
            await s.regenerateId();
            issued.push(cookieOf(m, await m.commit(s, request(m, cookies[i]))));
          }),
        ]);
        const keptAlive = await anyAlive(m, [kept]);
        return !keptAlive || (await anyAlive(m, [...cookies, ...issued]));
      });
    });

    it('invariant 1: revoke(id) racing a scheduled renewal leaves nothing alive', async () => {
      const m = managerFor(sut.store, clock, { renewal: { interval: MINUTE, grace: 5_000 } });
      await race('revoke vs renewal', async (order) => {
        clock.offset = 0;
        const c0 = await signIn(m, uid());
        const id = (await m.load(request(m, c0))).id;
        clock.offset += MINUTE + 1_000; // the next commit renews the ID
        const renewing = await m.load(request(m, c0));
        let out: CommitOutcome | undefined;
        await interleave(order, [
          () => m.revoke(id),
          async () => {
            out = await m.commit(renewing, request(m, c0));
          },
        ]);
        const dead = !(await anyAlive(m, [c0, cookieOf(m, out!)]));
        clock.offset = 0;
        return !dead;
      });
    });

    it('invariant 3: a write acknowledged to one request survives a concurrent regenerateId', async () => {
      const m = managerFor(sut.store, clock);
      await race('write vs regenerate', async (order) => {
        const c0 = await signIn(m, uid());
        const [writer, elevate] = [await m.load(request(m, c0)), await m.load(request(m, c0))];
        const nonce = Math.random().toString(36).slice(2);
        let written: CommitOutcome | undefined;
        let rotated: CommitOutcome | undefined;
        await interleave(order, [
          async () => {
            writer.set('w', nonce);
            written = await m.commit(writer, request(m, c0));
          },
          async () => {
            await elevate.regenerateId();
            rotated = await m.commit(elevate, request(m, c0));
          },
        ]);
        if (written!.gone || rotated!.gone) return true; // nothing should have lost here
        const next = await m.load(request(m, cookieOf(m, rotated!)));
        return next.get('w') !== nonce;
      });
    });

    it('invariant 4: of two logins on one session one wins, the other fails closed; one live record', async () => {
      const m = managerFor(sut.store, clock);
      await race('login vs login', async (order) => {
        const anon = await m.load(request(m, undefined));
        anon.set('seen', true);
        const c0 = cookieOf(m, await m.commit(anon, request(m, undefined)))!;
        const user = uid();
        const [a, b] = [await m.load(request(m, c0)), await m.load(request(m, c0))];
        const outs: CommitOutcome[] = [];
        await interleave(
          order,
          [a, b].map((s) => async () => {
            await s.login(user);
            outs.push(await m.commit(s, request(m, c0)));
          }),
        );
        const winners = outs.filter((o) => !o.gone);
        if (winners.length !== 1) return true;
        const loser = outs.find((o) => o.gone)!;
        if (cookieOf(m, loser) !== '') return true;
        if (m.store.capabilities.listByUser && (await m.sessionsOf(user)).length !== 1) return true;
        return !(await anyAlive(m, [cookieOf(m, winners[0]!)])) || (await anyAlive(m, [c0]));
      });
    });
  });
}
