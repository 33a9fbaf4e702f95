import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStore, SessionManager } from '../../src/index.js';
import { sessionPlugin } from '../../src/integrations/fastify.js';
import { attachSession } from '../../src/integrations/node.js';

const secret = 'lazy-hold-secret-0123456789abcdefghijklmnopq';

describe('node:http: the response is held only for sessions that need a commit', () => {
  let server: Server;
  let url: string;
  let clock = 1_800_000_000_000;
  const held: boolean[] = [];
  const warnings: string[] = [];
  const store = new CountingStore({ now: () => clock });
  let lateWrite: Promise<void> | undefined;
  beforeAll(async () => {
    const manager = managerFor(store, () => clock, warnings);
    server = createServer(async (req, res) => {
      const session = await attachSession(manager, req, res);
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (path === '/write') session.set('n', Number(session.get('n') ?? 0) + 1);
      held.push(Object.hasOwn(res, 'end'));
      if (path === '/late') {
        // A change after the head went out: not stored, and the app is told.
        lateWrite = new Promise<void>((r) => res.once('finish', r)).then(() => {
          session.set('n', 99);
        });
      }
      res.end(String(session.get('n') ?? 'none'));
    });
    server.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((r) => server.close(r)));

  it('SM-59: an anonymous visitor who never writes gets no hold, no cookie; the first write holds and sets the cookie', async () => {
    held.length = 0;
    const anonymous = await fetch(`${url}/read`);
    expect(await anonymous.text()).toBe('none');
    expect(anonymous.headers.getSetCookie()).toEqual([]);
    const write = await fetch(`${url}/write`);
    const cookie = write.headers.getSetCookie()[0]?.split(';')[0];
    expect(cookie).toMatch(/^id=/);
    const back = await fetch(`${url}/read`, { headers: { cookie: cookie! } });
    expect(await back.text()).toBe('1');
    // Untouched new session: not held. First write: held. A stored session with nothing due: not held.
    expect(held).toEqual([false, true, false]);
    // Its response still shows session state: not cacheable.
    expect(back.headers.get('cache-control')).toBe('no-store');
  });

  it('SM-59: a stored session is held when its commit has work: a write, a due touch, a due renewal', async () => {
    const first = await fetch(`${url}/write`);
    let cookie = first.headers.getSetCookie()[0]!.split(';')[0]!;
    held.length = 0;
    await fetch(`${url}/write`, { headers: { cookie } });
    clock += 61_000; // the idle timer's touch is due
    store.calls.length = 0;
    const touched = await fetch(`${url}/read`, { headers: { cookie } });
    expect(await touched.text()).toBe('2');
    expect(store.calls[0]).toBe('touch');
    const after = store.calls.length;
    await fetch(`${url}/read`, { headers: { cookie } }); // touched just now: nothing due
    expect(store.calls).toHaveLength(after);
    clock += 10 * 60_000; // the renewal is due: a new cookie on a read
    const renewed = await fetch(`${url}/read`, { headers: { cookie } });
    const next = renewed.headers.getSetCookie()[0]?.split(';')[0];
    expect(next).toMatch(/^id=/);
    expect(next).not.toBe(cookie);
    cookie = next!;
    expect(await (await fetch(`${url}/read`, { headers: { cookie } })).text()).toBe('2');
    expect(held).toEqual([true, true, false, true, false]);
  });

  it('a change to a quiet stored session after its response started is dropped and reported', () =>
    expectLateChangeDropped(url, warnings, () => lateWrite));
});

describe('Fastify: a stored session with nothing to commit skips the store at onSend', () => {
  let app: FastifyInstance;
  let url: string;
  let clock = 1_800_000_000_000;
  const warnings: string[] = [];
  const store = new CountingStore({ now: () => clock });
  let lateWrite: Promise<void> | undefined;
  beforeAll(async () => {
    const manager = managerFor(store, () => clock, warnings);
    app = Fastify();
    await app.register(sessionPlugin(manager));
    app.get('/write', async (req) => {
      req.session.set('n', Number(req.session.get('n') ?? 0) + 1);
      return String(req.session.get('n'));
    });
    app.get('/read', async (req) => String(req.session.get('n') ?? 'none'));
    app.get('/cached', async (req, reply) => {
      reply.header('Cache-Control', 'private, max-age=5');
      return String(req.session.get('n') ?? 'none');
    });
    app.get('/late', async (req, reply) => {
      lateWrite = new Promise<void>((r) => reply.raw.once('finish', r)).then(() => {
        req.session.set('n', 99);
      });
      return String(req.session.get('n') ?? 'none');
    });
    url = await app.listen({ host: '127.0.0.1', port: 0 });
  });
  afterAll(() => app.close());

  it('SM-59: a read makes no store call and is not cacheable; an app Cache-Control is kept', async () => {
    const first = await fetch(`${url}/write`);
    const cookie = first.headers.getSetCookie()[0]!.split(';')[0]!;
    store.calls.length = 0;
    const read = await fetch(`${url}/read`, { headers: { cookie } });
    expect(await read.text()).toBe('1');
    expect(read.headers.get('cache-control')).toBe('no-store');
    expect(read.headers.getSetCookie()).toEqual([]);
    const cached = await fetch(`${url}/cached`, { headers: { cookie } });
    expect(cached.headers.get('cache-control')).toBe('private, max-age=5');
    expect(store.calls).toEqual([]);
  });

  it('SM-59: a due touch and a due renewal still reach the store on a read', async () => {
    const first = await fetch(`${url}/write`);
    const cookie = first.headers.getSetCookie()[0]!.split(';')[0]!;
    clock += 61_000;
    store.calls.length = 0;
    const touched = await fetch(`${url}/read`, { headers: { cookie } });
    expect(await touched.text()).toBe('1');
    expect(store.calls[0]).toBe('touch'); // (MemoryStore's touch goes through its commit)
    clock += 10 * 60_000;
    const renewed = await fetch(`${url}/read`, { headers: { cookie } });
    const next = renewed.headers.getSetCookie()[0]?.split(';')[0];
    expect(next).toMatch(/^id=/);
    expect(next).not.toBe(cookie);
    expect(await (await fetch(`${url}/read`, { headers: { cookie: next! } })).text()).toBe('1');
  });

  it('a change after the reply went out is dropped and reported', () =>
    expectLateChangeDropped(url, warnings, () => lateWrite));
});

/**
 * A stored session (n = 1) requests /late, whose route changes the session once the response
 * has finished (`late()` settles then): the change is not stored, and the app is warned.
 */
async function expectLateChangeDropped(
  url: string,
  warnings: string[],
  late: () => Promise<void> | undefined,
): Promise<void> {
  const first = await fetch(`${url}/write`);
  const cookie = first.headers.getSetCookie()[0]!.split(';')[0]!;
  warnings.length = 0;
  const response = await fetch(`${url}/late`, { headers: { cookie } });
  expect(await response.text()).toBe('1');
  await late();
  expect(warnings).toEqual([expect.stringMatching(/changed after its response had started/)]);
  expect(await (await fetch(`${url}/read`, { headers: { cookie } })).text()).toBe('1');
}

/** A manager with a touch throttle and a scheduled renewal, both due by moving `now`. */
function managerFor(store: MemoryStore, now: () => number, warnings: string[]): SessionManager {
  return new SessionManager({
    secret,
    store,
    cookie: { secure: false },
    touchInterval: 60_000,
    renewal: { interval: 10 * 60_000, grace: 5_000 },
    now,
    warn: (w) => warnings.push(w),
  });
}

/** A MemoryStore that records which writes reach it. */
class CountingStore extends MemoryStore {
  readonly calls: string[] = [];
  override async touch(...args: Parameters<MemoryStore['touch']>) {
    this.calls.push('touch');
    return super.touch(...args);
  }
  override async commit(...args: Parameters<MemoryStore['commit']>) {
    this.calls.push('commit');
    return super.commit(...args);
  }
}
