/**
 * The session's headers go out with node's own `writeHead`, merged into the app's headers:
 * - a stored session that is only read is not held: its response gets `Cache-Control: no-store`
 *   in every shape node takes headers, unless the app set a Cache-Control of its own;
 * - a held response (a new session, a write, a logout) gets its cookie, Cache-Control and
 *   Clear-Site-Data merged by the commit's rules, whatever the app set before or passed.
 */
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Session, SessionManager } from '../../src/index.js';
import { attachSession } from '../../src/integrations/node.js';
import { listen, setup } from '../helpers/session-kit.js';

type Handler = (req: IncomingMessage, res: ServerResponse, session: Session) => unknown;

/** Shared by every request, frozen: a change to it would throw (and leak to later responses). */
const SHARED_HEADERS = Object.freeze({ 'Content-Type': 'text/plain', 'X-App': '1' });
const SHARED_FLAT = Object.freeze(['Content-Type', 'text/plain', 'X-App', '1']);

const routes: Record<string, Handler> = {
  '/write': (_req, res, s) => {
    s.set('n', 1);
    res.end('written');
  },
  '/end-only': (_req, res) => res.end('x'),
  '/object': (_req, res) => res.writeHead(200, SHARED_HEADERS).end('x'),
  '/object-lower': (_req, res) =>
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60' }).end('x'),
  '/flat': (_req, res) => res.writeHead(200, SHARED_FLAT as unknown as string[]).end('x'),
  '/flat-own': (_req, res) =>
    res.writeHead(200, ['X-App', '1', 'CACHE-CONTROL', 'public, max-age=5']).end('x'),
  '/nested': (_req, res) =>
    (res.writeHead as (status: number, headers: unknown) => ServerResponse)(200, [
      ['X-App', '1'],
      ['Set-Cookie', 'app=1'],
    ]).end('x'),
  '/reason': (_req, res) => res.writeHead(202, 'Taken', { 'X-App': '1' }).end('x'),
  '/reason-only': (_req, res) => res.writeHead(202, 'Taken').end('x'),
  '/set-header': (_req, res) => {
    res.setHeader('X-App', '1');
    res.writeHead(200, { 'Content-Type': 'text/plain' }).end('x');
  },
  '/set-own': (_req, res) => {
    res.setHeader('Cache-Control', 'private, max-age=30');
    res.writeHead(200, { 'X-App': '1' }).end('x');
  },
  '/write-stream': (_req, res) => {
    res.write('a');
    res.end('b');
  },
  '/flush': (_req, res) => {
    res.flushHeaders();
    res.end('x');
  },
  '/bad-status-then-500': (_req, res) => {
    try {
      res.writeHead(99);
    } catch {
      res.writeHead(500, { 'X-App': 'recovered' });
    }
    res.end('x');
  },
  '/wrapped-after': (_req, res) => {
    // A library wrapping writeHead after the session was attached (on-headers style).
    const below = res.writeHead;
    res.writeHead = function (this: ServerResponse, ...args: unknown[]) {
      this.setHeader('X-Wrapped', '1');
      return (below as (...a: unknown[]) => ServerResponse).apply(this, args);
    } as ServerResponse['writeHead'];
    res.end('x');
  },
  '/value': (_req, res, s) => res.end(String(s.get('m') ?? 'none')),
  '/read-then-write': (_req, res, s) => {
    // A quiet read that turns into a write: held from the change, its commit writes the header.
    s.set('m', 2);
    res.writeHead(200, { 'X-App': '1' }).end('x');
  },
};

/** GET with the raw header lines (node's client keeps repeated headers apart). */
function get(
  url: string,
  cookie?: string,
): Promise<{ status: number; message: string; raw: [string, string][] }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers: cookie ? { cookie } : {} }, (res) => {
      res.resume();
      res.on('end', () => {
        const raw: [string, string][] = [];
        for (let i = 0; i < res.rawHeaders.length; i += 2)
          raw.push([res.rawHeaders[i]!, res.rawHeaders[i + 1]!]);
        resolve({ status: res.statusCode!, message: res.statusMessage!, raw });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

/** The body of a GET. */
async function body(url: string, cookie: string): Promise<string> {
  return (await fetch(url, { headers: { cookie } })).text();
}

const values = (raw: [string, string][], name: string) =>
  raw.filter(([n]) => n.toLowerCase() === name.toLowerCase()).map(([, v]) => v);

/** A node:http server answering `routes` with the request's session; `after` sees each response. */
function serve(
  manager: SessionManager,
  table: Record<string, Handler>,
  after?: (res: ServerResponse) => void,
): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer(async (req, res) => {
    const session = await attachSession(manager, req, res);
    const route = table[new URL(req.url!, 'http://x').pathname];
    if (!route) res.writeHead(404).end();
    else await route(req, res, session);
    after?.(res);
  });
  return listen(server);
}

describe('node:http: a stored session that is only read gets Cache-Control: no-store', () => {
  let url: string;
  let close: () => Promise<void>;
  let cookie: string;
  const kit = setup({ cookie: { secure: false } });
  /** Per request: whether its response was held (a hold leaves its own `end` on the response). */
  const held: boolean[] = [];

  beforeAll(async () => {
    ({ url, close } = await serve(kit.manager, routes, (res) => held.push(Object.hasOwn(res, 'end'))));
    const first = await get(`${url}/write`);
    cookie = values(first.raw, 'set-cookie')[0]!.split(';')[0]!;
  });
  afterAll(() => close());

  it.each([
    ['/end-only', { 'content-type': undefined }],
    ['/object', { 'content-type': 'text/plain', 'x-app': '1' }],
    ['/flat', { 'content-type': 'text/plain', 'x-app': '1' }],
    ['/set-header', { 'content-type': 'text/plain', 'x-app': '1' }],
    ['/write-stream', {}],
    ['/flush', {}],
  ] as [string, Record<string, string | undefined>][])(
    'SM-07: %s: no-store once, beside every header of the app',
    async (path, expected) => {
      held.length = 0;
      const res = await get(`${url}${path}`, cookie);
      expect(held).toEqual([false]); // the read path: no hold, no commit
      expect(res.status).toBe(200);
      expect(values(res.raw, 'cache-control')).toEqual(['no-store']);
      for (const [name, value] of Object.entries(expected))
        expect(values(res.raw, name)).toEqual(value === undefined ? [] : [value]);
      expect(values(res.raw, 'set-cookie')).toEqual([]); // a read sends no cookie
    },
  );

  it('SM-07: nested pairs and a reason phrase keep their shape: headers, status and message intact', async () => {
    const nested = await get(`${url}/nested`, cookie);
    expect(values(nested.raw, 'cache-control')).toEqual(['no-store']);
    expect(values(nested.raw, 'x-app')).toEqual(['1']);
    expect(values(nested.raw, 'set-cookie')).toEqual(['app=1']);
    for (const path of ['/reason', '/reason-only']) {
      const res = await get(`${url}${path}`, cookie);
      expect([res.status, res.message]).toEqual([202, 'Taken']);
      expect(values(res.raw, 'cache-control')).toEqual(['no-store']);
    }
    expect(values((await get(`${url}/reason`, cookie)).raw, 'x-app')).toEqual(['1']);
  });

  it("SM-07: the app's own Cache-Control wins, in any case and any way it was given", async () => {
    expect(values((await get(`${url}/object-lower`, cookie)).raw, 'cache-control')).toEqual(['max-age=60']);
    expect(values((await get(`${url}/flat-own`, cookie)).raw, 'cache-control')).toEqual([
      'public, max-age=5',
    ]);
    expect(values((await get(`${url}/set-own`, cookie)).raw, 'cache-control')).toEqual([
      'private, max-age=30',
    ]);
  });

  it("the app's shared header objects are never changed: the next response has them as they were", async () => {
    await get(`${url}/object`, cookie);
    await get(`${url}/flat`, cookie);
    expect(SHARED_HEADERS).toEqual({ 'Content-Type': 'text/plain', 'X-App': '1' });
    expect(SHARED_FLAT).toEqual(['Content-Type', 'text/plain', 'X-App', '1']);
    // A response without a session: none of the session's header leaked into the app's objects.
    const server = createServer((_req, res) => res.writeHead(200, SHARED_HEADERS).end('plain'));
    const plain = await listen(server);
    try {
      expect(values((await get(plain.url)).raw, 'cache-control')).toEqual([]);
    } finally {
      await plain.close();
    }
  });

  it('a writeHead that threw (bad status) is retried with the header still added', async () => {
    const res = await get(`${url}/bad-status-then-500`, cookie);
    expect(res.status).toBe(500);
    expect(values(res.raw, 'x-app')).toEqual(['recovered']);
    expect(values(res.raw, 'cache-control')).toEqual(['no-store']);
  });

  it('a writeHead wrapper installed after the session keeps working, and the header still goes out', async () => {
    const res = await get(`${url}/wrapped-after`, cookie);
    expect(values(res.raw, 'x-wrapped')).toEqual(['1']);
    expect(values(res.raw, 'cache-control')).toEqual(['no-store']);
  });

  it('a read that turns into a write is held and committed: the header once, the change stored', async () => {
    held.length = 0;
    const res = await get(`${url}/read-then-write`, cookie);
    expect(values(res.raw, 'cache-control')).toEqual(['no-store']);
    expect(values(res.raw, 'x-app')).toEqual(['1']);
    expect(await body(`${url}/value`, cookie)).toBe('2');
    expect(held).toEqual([true, false]);
  });

  it('a new visitor who never writes gets no session header at all', async () => {
    const res = await get(`${url}/object`);
    expect(values(res.raw, 'cache-control')).toEqual([]);
    expect(values(res.raw, 'set-cookie')).toEqual([]);
  });
});

/** Routes that change the session, so that the response is held and replayed after the commit. */
const heldRoutes: Record<string, Handler> = {
  '/login': async (_req, res, s) => {
    await s.login('alice');
    res.writeHead(303, { Location: '/home' }).end();
  },
  // A new session: its cookie forces no-store over the app's caching and sits beside app cookies.
  '/create-cached': (_req, res, s) => {
    s.set('n', 1);
    res.writeHead(200, { 'Cache-Control': 'public, max-age=600', 'Set-Cookie': ['a=1', 'b=2'] }).end('x');
  },
  '/create-set-before': (_req, res, s) => {
    s.set('n', 1);
    res.setHeader('Set-Cookie', 'pre=1');
    res.setHeader('cache-control', 'max-age=5');
    res.writeHead(200, ['X-App', '1']).end('x');
  },
  '/create-undefined-reason': (_req, res, s) => {
    s.set('n', 1);
    (res.writeHead as (status: number, reason: unknown, headers: unknown) => ServerResponse)(201, undefined, {
      'X-App': '1',
      'X-Skipped': undefined,
    }).end('x');
  },
  // A stored session written without a new cookie: the app's own Cache-Control is kept.
  '/write-cached': (_req, res, s) => {
    s.set('n', 2);
    res.writeHead(200, [['Cache-Control', 'private, max-age=5']]).end('x');
  },
  '/logout': async (_req, res, s) => {
    await s.logout();
    res.writeHead(200, { 'clear-site-data': '"cookies"', 'X-App': '1' }).end('bye');
  },
};

describe("node:http: a held response gets the app's writeHead headers and the session's together", () => {
  let url: string;
  let close: () => Promise<void>;
  const kit = setup({ cookie: { secure: false } });

  beforeAll(async () => {
    ({ url, close } = await serve(kit.manager, heldRoutes));
  });
  afterAll(() => close());

  const sessionCookies = (raw: [string, string][]) =>
    values(raw, 'set-cookie').filter((c) => c.startsWith('id='));

  it('SM-07: a login redirect: Location, one session cookie, no-store', async () => {
    const res = await get(`${url}/login`);
    expect(res.status).toBe(303);
    expect(values(res.raw, 'location')).toEqual(['/home']);
    expect(sessionCookies(res.raw)).toHaveLength(1);
    expect(values(res.raw, 'cache-control')).toEqual(['no-store']);
  });

  it("SM-07: a new session's cookie goes beside the app's cookies and forces no-store over its caching", async () => {
    const passed = await get(`${url}/create-cached`);
    expect(values(passed.raw, 'set-cookie').slice(0, 2)).toEqual(['a=1', 'b=2']);
    expect(sessionCookies(passed.raw)).toHaveLength(1);
    expect(values(passed.raw, 'cache-control')).toEqual(['no-store']);
    const before = await get(`${url}/create-set-before`);
    expect(values(before.raw, 'set-cookie')[0]).toBe('pre=1');
    expect(sessionCookies(before.raw)).toHaveLength(1);
    expect(values(before.raw, 'cache-control')).toEqual(['no-store']);
    expect(values(before.raw, 'x-app')).toEqual(['1']);
  });

  it('writeHead(status, undefined, headers) keeps the headers, as node reads them; an undefined value is left out', async () => {
    const res = await get(`${url}/create-undefined-reason`);
    expect(res.status).toBe(201);
    expect(values(res.raw, 'x-app')).toEqual(['1']);
    expect(values(res.raw, 'x-skipped')).toEqual([]);
    expect(sessionCookies(res.raw)).toHaveLength(1);
  });

  it("a write to a stored session keeps the app's own Cache-Control; a logout's Clear-Site-Data replaces the app's", async () => {
    const login = await get(`${url}/login`);
    const cookie = sessionCookies(login.raw)[0]!.split(';')[0]!;
    const write = await get(`${url}/write-cached`, cookie);
    expect(values(write.raw, 'cache-control')).toEqual(['private, max-age=5']);
    expect(sessionCookies(write.raw)).toEqual([]);
    const out = await get(`${url}/logout`, cookie);
    expect(values(out.raw, 'clear-site-data')).toEqual(['"cache"']);
    expect(values(out.raw, 'x-app')).toEqual(['1']);
    expect(values(out.raw, 'cache-control')).toEqual(['no-store']);
    expect(sessionCookies(out.raw)[0]).toMatch(/Max-Age=0|Expires=Thu, 01 Jan 1970/);
  });
});
