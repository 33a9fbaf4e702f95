import { createServer } from 'node:http';
import express from 'express';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { listen, sessionCookieOf } from '../helpers/session-kit.js';

// A test suite that fakes the timers for every file (a setup file, Jest's `fakeTimers:
// { enableGlobally: true }`) does so before the app imports sessionflow. The Express middleware
// must then still answer without the test advancing the clock. Each test here imports a fresh
// instance of the middleware once the timers are replaced, so it sees the fake setImmediate.

let close: (() => Promise<void>) | undefined;
const realSetImmediate = globalThis.setImmediate;

afterEach(async () => {
  vi.useRealTimers();
  globalThis.setImmediate = realSetImmediate;
  await close?.();
  close = undefined;
});

/** Two visits through a freshly imported `session()`: the second must see the first's write. */
async function twoVisits(): Promise<unknown[]> {
  vi.resetModules();
  // The manager too, from the same fresh module graph as the middleware.
  const { session } = await import('../../src/integrations/express.js');
  const { setup } = await import('../helpers/session-kit.js');
  const kit = setup({ cookie: { name: 'sid', secure: false } });
  const app = express();
  app.use(session(kit.manager));
  app.get('/visit', (req, res) => {
    const visits = ((req.session.get('visits') as number | undefined) ?? 0) + 1;
    req.session.set('visits', visits);
    res.json({ visits });
  });
  const started = await listen(createServer(app));
  close = started.close;
  const first = await fetch(`${started.url}/visit`);
  const cookie = sessionCookieOf(first, 'sid')!;
  const second = await fetch(`${started.url}/visit`, { headers: { cookie } });
  return [await first.json(), await second.json()];
}

describe('Express: timers faked before sessionflow/express is imported', () => {
  it('Vitest / Jest modern fake timers (@sinonjs/fake-timers): requests complete without advancing the clock', async () => {
    vi.useFakeTimers({ toFake: ['setImmediate', 'clearImmediate', 'setTimeout', 'clearTimeout'] });
    expect(await twoVisits()).toEqual([{ visits: 1 }, { visits: 2 }]);
  }, 5000);

  it('a jest.fn()-style mock of setImmediate that never calls back: requests still complete', async () => {
    globalThis.setImmediate = Object.assign(() => {}, {
      _isMockFunction: true,
    }) as unknown as typeof setImmediate;
    expect(await twoVisits()).toEqual([{ visits: 1 }, { visits: 2 }]);
  }, 5000);
});
