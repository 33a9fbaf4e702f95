import { writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FileStore, type Session, SessionManager } from '../../src/index.js';
import { attachSession, withSession } from '../../src/integrations/node.js';
import { oneSocketClient } from '../helpers/raw-http.js';
import {
  cookiePair,
  flipAt,
  listen,
  SECRET,
  sessionCookieOf,
  setup,
  tempDir,
} from '../helpers/session-kit.js';

const NAME = 'sid';
type Handler = (req: IncomingMessage, res: ServerResponse, session: Session) => unknown;

const tick = () => new Promise((r) => setTimeout(r, 5));

const routes: Record<string, Handler> = {
  'POST /login': async (_req, res, s) => {
    await s.login('alice');
    res.writeHead(303, { Location: '/dashboard' }).end();
  },
  'GET /dashboard': (_req, res, s) => {
    if (s.userId === undefined) res.writeHead(401).end('login first');
    else res.end(`hello ${s.userId}`);
  },
  'GET /write': (_req, res, s) => {
    s.set('n', 1);
    res.end('written');
  },
  'GET /read': (req, res, s) => {
    const key = new URL(req.url!, 'http://x').searchParams.get('key') ?? 'n';
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ value: s.get(key) ?? null, isNew: s.isNew, keys: s.bag('par').keys() }));
  },
  'GET /set': (req, res, s) => {
    const key = new URL(req.url!, 'http://x').searchParams.get('key')!;
    s.bag('par').set(key, true);
    res.end('ok');
  },
  'GET /wh-flat': (_req, res, s) => {
    s.set('n', 1);
    res.writeHead(200, ['Set-Cookie', 'a=b', 'X-A', '1']);
    res.end('flat');
  },
  'GET /wh-nested': (_req, res, s) => {
    s.set('n', 1);
    (res.writeHead as (status: number, headers: unknown) => ServerResponse)(200, [
      ['Set-Cookie', 'a=b'],
      ['X-A', '1'],
    ]);
    res.end('nested');
  },
  'GET /wh-object': (_req, res, s) => {
    s.set('n', 1);
    res.writeHead(200, { 'Set-Cookie': ['a=b', 'c=d'], 'X-A': '1' });
    res.end('object');
  },
  'GET /wh-reason': (_req, res, s) => {
    s.set('n', 1);
    res.setHeader('Set-Cookie', 'pre=1');
    res.writeHead(201, 'Made It', { 'X-A': '1' }).end('reason');
  },
  'GET /stream': async (_req, res, s) => {
    s.set('n', 1);
    res.setHeader('Content-Type', 'text/plain');
    res.write('a');
    await tick();
    res.write('b');
    await tick();
    res.end('c');
  },
  'GET /flush': async (_req, res, s) => {
    s.set('n', 1);
    res.setHeader('X-A', '1');
    res.flushHeaders();
    await tick();
    res.write('x');
    res.end('y');
  },
  'GET /logout': async (_req, res, s) => {
    await s.logout();
    res.end('bye');
  },
};

let kit: ReturnType<typeof setup>;
let url: string;
let close: () => Promise<void>;
const unexpected: unknown[] = [];

beforeAll(async () => {
  kit = setup({ cookie: { name: NAME, secure: false } });
  const handler = withSession(kit.manager, (req, res, session) => {
    const route = routes[`${req.method} ${req.url!.split('?')[0]}`];
    if (!route) return res.writeHead(404).end();
    return (route(req, res, session) as Promise<unknown> | undefined)?.catch?.((err: unknown) => {
      unexpected.push(err);
      res.writeHead(500).end();
    });
  });
  // A large header limit, so the hostile-cookie tests reach the session code instead of Node's 431.
  const started = await listen(createServer({ maxHeaderSize: 512 * 1024 }, handler));
  url = started.url;
  close = started.close;
});

afterAll(async () => {
  await close();
});

afterEach(() => {
  kit.store.latencyMs = 0;
  kit.store.failing.clear();
  kit.store.reset();
  expect(unexpected).toEqual([]);
});

async function loggedIn(): Promise<string> {
  const res = await fetch(`${url}/login`, { method: 'POST', redirect: 'manual' });
  return sessionCookieOf(res, NAME)!;
}

describe('SM-57: the session is stored before the response head goes out', () => {
  it('POST /login → 303 → an immediate GET /dashboard sees the session, even with a 200 ms store', async () => {
    kit.store.latencyMs = 200;
    const started = Date.now();
    const login = await fetch(`${url}/login`, { method: 'POST', redirect: 'manual' });
    expect(login.status).toBe(303);
    expect(Date.now() - started).toBeGreaterThanOrEqual(190); // held for the 200 ms create
    expect(login.headers.get('location')).toBe('/dashboard');
    expect(login.headers.get('cache-control')).toBe('no-store');
    const cookie = sessionCookieOf(login, NAME)!;
    const dashboard = await fetch(`${url}/dashboard`, { headers: { cookie } });
    expect(dashboard.status).toBe(200);
    expect(await dashboard.text()).toBe('hello alice');
  });

  it('streamed writes are held, then delivered in order with the cookie in the head', async () => {
    kit.store.latencyMs = 50;
    const res = await fetch(`${url}/stream`);
    expect(await res.text()).toBe('abc');
    expect(sessionCookieOf(res, NAME)).toBeDefined();
    expect(res.headers.get('content-type')).toBe('text/plain');
  });

  it('flushHeaders is held too: the flushed head carries the session cookie', async () => {
    kit.store.latencyMs = 50;
    const res = await fetch(`${url}/flush`);
    expect(await res.text()).toBe('xy');
    expect(res.headers.get('x-a')).toBe('1');
    expect(sessionCookieOf(res, NAME)).toBeDefined();
  });
});

describe("checklist row 6: writeHead with the app's own headers keeps both cookies", () => {
  it.each([
    ['/wh-flat', ['a=b'], 'flat'],
    ['/wh-nested', ['a=b'], 'nested'],
    ['/wh-object', ['a=b', 'c=d'], 'object'],
    ['/wh-reason', ['pre=1'], 'reason'],
  ])('%s', async (path, appCookies, body) => {
    const res = await fetch(`${url}${path}`);
    expect(await res.text()).toBe(body);
    const cookies = res.headers.getSetCookie();
    expect(cookies.slice(0, appCookies.length)).toEqual(appCookies);
    expect(cookies).toHaveLength(appCookies.length + 1);
    const session = cookiePair(cookies.at(-1)!);
    expect(session.name).toBe(NAME);
    expect(session.value).toMatch(/^[\w-]{43}\.[\w-]{43}\.[\w-]{43}$/);
    expect(cookies.at(-1)).toMatch(/; HttpOnly; SameSite=Lax$/);
    expect(res.headers.get('x-a')).toBe('1');
  });

  it('the reason phrase and status of writeHead(status, reason, headers) survive', async () => {
    const res = await fetch(`${url}/wh-reason`);
    expect(res.status).toBe(201);
    expect(res.statusText).toBe('Made It');
  });
});

describe('SM-56: fail closed when the store fails', () => {
  it('a store failure at load answers 503, with no session cookie, and never runs the handler', async () => {
    const cookie = await loggedIn();
    kit.store.failing.add('load');
    const res = await fetch(`${url}/dashboard`, { headers: { cookie } });
    expect(res.status).toBe(503);
    expect(res.headers.getSetCookie()).toEqual([]);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(await res.text()).toMatch(/^Service Unavailable: The session store failed during load/);
  });

  it('a store failure at commit answers 503 without the session cookie or the app response', async () => {
    kit.store.failing.add('create');
    const res = await fetch(`${url}/wh-flat`);
    expect(res.status).toBe(503);
    expect(res.headers.getSetCookie()).toEqual([]);
    expect(res.headers.get('x-a')).toBeNull();
    expect(await res.text()).not.toContain('flat');
  });

  it('a failed login write issues no cookie (SM-56), and the session is not half-created', async () => {
    kit.store.failing.add('create');
    const res = await fetch(`${url}/login`, { method: 'POST', redirect: 'manual' });
    expect(res.status).toBe(503);
    expect(res.headers.getSetCookie()).toEqual([]);
  });

  it('a store failure while committing changes to an existing session answers 503', async () => {
    const cookie = await loggedIn();
    kit.store.failing.add('commit');
    const res = await fetch(`${url}/write`, { headers: { cookie } });
    expect(res.status).toBe(503);
    kit.store.failing.clear();
    expect((await fetch(`${url}/dashboard`, { headers: { cookie } })).status).toBe(200);
  });

  it('a FileStore whose directory is a regular file (real ENOTDIR) answers 503', async () => {
    const { dir, cleanup } = await tempDir();
    const file = join(dir, 'not-a-dir');
    await writeFile(file, 'x');
    const manager = new SessionManager({
      secret: SECRET,
      cookie: { name: NAME, secure: false },
      store: new FileStore({ dir: file }),
      warn: () => {},
    });
    const server = await listen(
      createServer(
        withSession(manager, (_req, res, s) => {
          s.set('a', 1);
          res.end('stored?');
        }),
      ),
    );
    try {
      const res = await fetch(`${server.url}/`);
      expect(res.status).toBe(503);
      expect(res.headers.getSetCookie()).toEqual([]);
    } finally {
      await server.close();
      await cleanup();
    }
  });
});

describe('SM-58: parallel requests on one session', () => {
  it('20 parallel requests, each setting a different key, all land', async () => {
    const cookie = sessionCookieOf(await fetch(`${url}/write`), NAME)!;
    kit.store.latencyMs = 10;
    const responses = await Promise.all(
      Array.from({ length: 20 }, (_, i) => fetch(`${url}/set?key=k${i}`, { headers: { cookie } })),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(20).fill(200));
    const read = (await (await fetch(`${url}/read`, { headers: { cookie } })).json()) as {
      keys: string[];
      value: unknown;
    };
    expect(read.keys.sort()).toEqual(Array.from({ length: 20 }, (_, i) => `k${i}`).sort());
    expect(read.value).toBe(1);
  });
});

describe('SM-51: hostile Cookie headers never cause a 5xx or pollute prototypes', () => {
  it.each([
    ['garbage', `"garbage"==;;=;\t; ; =x; ${Buffer.from(`${NAME}=🍪`).toString('latin1')}`],
    ['100,000 semicolons', `${';'.repeat(100_000)}${NAME}=x`],
    ['prototype names', `__proto__=x; constructor=y; hasOwnProperty=z; ${NAME}=__proto__`],
    ['broken percent-encoding', `${NAME}=%E0%A4%A; other=%`],
    ['an empty value', `${NAME}=`],
    ['a name without a value', NAME],
    ['a 4 KB value', `${NAME}=${'a'.repeat(4096)}`],
  ])('%s', async (_label, cookie) => {
    const res = await fetch(`${url}/read`, { headers: { cookie } });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ isNew: true });
    expect(({} as Record<string, unknown>).x).toBeUndefined();
    expect(Object.getPrototypeOf({})).toBe(Object.prototype);
    expect(kit.store.count('load')).toBe(0);
  });

  it('duplicated names: the first occurrence wins (documented choice)', async () => {
    const a = sessionCookieOf(await fetch(`${url}/write`), NAME)!;
    const other = await loggedIn();
    const firstValid = await fetch(`${url}/dashboard`, { headers: { cookie: `${a}; ${other}` } });
    expect(firstValid.status).toBe(401); // the anonymous session A, not the logged-in one
    const firstLoggedIn = await fetch(`${url}/dashboard`, { headers: { cookie: `${other}; ${a}` } });
    expect(firstLoggedIn.status).toBe(200);
    const firstGarbage = await fetch(`${url}/dashboard`, {
      headers: { cookie: `${NAME}=garbage; ${other}` },
    });
    expect(firstGarbage.status).toBe(401);
  });
});

describe('SM-14: one keep-alive connection, cookies that change between its requests', () => {
  it('valid, forged, valid again over one socket: the forged one is a fresh session, the valid one reads on', async () => {
    const sockets = new Set<unknown>();
    const { manager, store } = setup({ cookie: { name: NAME, secure: false } });
    const server = await listen(
      createServer(
        withSession(manager, (req, res, session) => {
          sockets.add(req.socket);
          if (req.url === '/write') session.set('n', 1);
          res.end(JSON.stringify({ n: session.get('n') ?? null, isNew: session.isNew }));
        }),
      ),
    );
    const client = oneSocketClient(server.url);
    const get = async (path: string, cookie?: string) => {
      const res = await client.get(path, cookie);
      return {
        body: JSON.parse(res.body) as { n: number | null; isNew: boolean },
        setCookie: res.setCookies,
      };
    };
    try {
      const written = await get('/write');
      const valid = written.setCookie[0]!.split(';')[0]!;
      const value = valid.slice(NAME.length + 1);
      const forged = `${NAME}=${flipAt(value, value.length - 1)}`;
      expect((await get('/read', valid)).body).toEqual({ n: 1, isNew: false });
      expect((await get('/read', valid)).body).toEqual({ n: 1, isNew: false });
      store.reset();
      const withForged = await get('/read', forged);
      expect(withForged.body).toEqual({ n: null, isNew: true });
      expect(withForged.setCookie).toEqual([]);
      expect(store.count('load')).toBe(0);
      expect((await get('/read', `${forged}; theme=dark`)).body).toEqual({ n: null, isNew: true });
      expect((await get('/read', valid)).body).toEqual({ n: 1, isNew: false });
      expect((await get('/read')).body).toEqual({ n: null, isNew: true });
      expect(sockets.size).toBe(1);
    } finally {
      client.close();
      await server.close();
    }
  });
});

describe('node:http integration details', () => {
  it('a handler that never asks for the session costs no store call and sends no cookie', async () => {
    const { manager, store } = setup({ cookie: { name: NAME, secure: false } });
    const server = await listen(
      createServer(async (req, res) => {
        if (req.url === '/session') {
          const session = await attachSession(manager, req, res);
          session.set('n', 1);
        }
        res.end('ok');
      }),
    );
    try {
      const cookie = sessionCookieOf(await fetch(`${server.url}/session`), NAME)!;
      store.reset();
      const res = await fetch(`${server.url}/static`, { headers: { cookie } });
      expect(res.headers.getSetCookie()).toEqual([]);
      expect(store.calls).toEqual([]);
    } finally {
      await server.close();
    }
  });

  it('logout sends a clearing cookie, Clear-Site-Data and no-store; the old cookie is dead', async () => {
    const cookie = await loggedIn();
    const res = await fetch(`${url}/logout`, { headers: { cookie } });
    expect(res.headers.getSetCookie()).toEqual([
      `${NAME}=; Max-Age=0; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax`,
    ]);
    expect(res.headers.get('clear-site-data')).toBe('"cache"');
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect((await fetch(`${url}/dashboard`, { headers: { cookie } })).status).toBe(401);
  });

  it('SM-08: the session ID is taken from the cookie only, never from the URL, a header or the body', async () => {
    const cookie = await loggedIn();
    const value = cookie.slice(NAME.length + 1);
    for (const [path, init] of [
      [`/dashboard?${NAME}=${encodeURIComponent(value)}`, {}],
      [`/dashboard?PHPSESSID=${encodeURIComponent(value)}`, {}],
      ['/dashboard', { headers: { 'x-session-id': value, authorization: `Bearer ${value}` } }],
      ['/dashboard', { headers: { cookie: `other=${value}` } }],
    ] as const) {
      const res = await fetch(`${url}${path}`, init);
      expect(res.status, path).toBe(401);
    }
    expect((await fetch(`${url}/dashboard`, { headers: { cookie } })).status).toBe(200);
  });

  it('an authenticated read-only page is not cacheable', async () => {
    const cookie = await loggedIn();
    const res = await fetch(`${url}/dashboard`, { headers: { cookie } });
    expect(res.headers.getSetCookie()).toEqual([]);
    expect(res.headers.get('cache-control')).toBe('no-store');
  });
});
