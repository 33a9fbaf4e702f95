import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer, type Server, type ServerOptions } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createApp, type Demo, type DemoOptions } from '../../examples/demo/app.js';
import { type AuditEvent, FileStore, type SessionStore } from '../../src/index.js';
import { Client, type CookieJar } from './cookie-jar.js';

/** A test-only signing secret (48 random bytes, base64url); never used outside tests. */
export const TEST_SECRET = 'P3v9tZ1kq8XwR2mLc7Hn0bYfJ4sAeU6dGi5oKxTzWq8NrVh2LmC9pBfE3jSa';

export const ALICE = { username: 'alice', password: 'wonderland-42', id: 'u1' } as const;
export const BOB = { username: 'bob', password: 'builder-1337', id: 'u2' } as const;

/** The login form fields of a demo user. */
export function credentials(user: { username: string; password: string }): Record<string, string> {
  return { username: user.username, password: user.password };
}

/** A clock the test moves by hand, shared by the manager and the store. */
export interface FakeClock {
  now: () => number;
  advance(ms: number): void;
}

export function fakeClock(start = Date.UTC(2026, 0, 15, 9, 0, 0)): FakeClock {
  let t = start;
  return {
    now: () => t,
    advance(ms) {
      t += ms;
    },
  };
}

const scratch: string[] = [];

/** A fresh temp dir, removed by {@link removeTempDirs}. */
export async function tempDir(prefix = 'sessionflow-demo-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  scratch.push(dir);
  return dir;
}

/** Removes every dir {@link tempDir} made; call it in `afterAll`. */
export async function removeTempDirs(): Promise<void> {
  await Promise.all(scratch.splice(0).map((d) => rm(d, { recursive: true, force: true })));
}

export interface DemoServer extends Demo {
  url: string;
  port: number;
  server: Server;
  store: SessionStore;
  /** The FileStore directory, when the demo runs on the default FileStore. */
  dir: string | undefined;
  /** Audit events, in order. */
  events: AuditEvent[];
  /** Library warnings. */
  warnings: string[];
  client(jar?: CookieJar, userAgent?: string): Client;
  close(): Promise<void>;
}

export interface StartOptions extends Partial<DemoOptions> {
  /** Options for node's HTTP server (e.g. `insecureHTTPParser`). */
  serverOptions?: ServerOptions;
}

/**
 * Starts the demo in-process on 127.0.0.1, port 0. Defaults for tests: a FileStore in a fresh
 * temp dir (no fsync), plain-HTTP cookies, `/slow` waits 300 ms, audit events and warnings
 * captured in arrays.
 */
export async function startDemo(options: StartOptions = {}): Promise<DemoServer> {
  const { serverOptions, ...demoOptions } = options;
  let dir: string | undefined;
  let root: string | undefined;
  let store = demoOptions.store;
  if (!store) {
    root = await mkdtemp(join(tmpdir(), 'sessionflow-demo-'));
    dir = join(root, 'sessions');
    store = new FileStore({ dir, fsync: false, ...(demoOptions.now ? { now: demoOptions.now } : {}) });
  }
  const events: AuditEvent[] = [];
  const warnings: string[] = [];
  const demo = createApp({
    secret: TEST_SECRET,
    secureCookie: false,
    slowMs: 300,
    audit: (e) => events.push(e),
    warn: (m) => warnings.push(m),
    ...demoOptions,
    store,
  });
  const server = createServer(serverOptions ?? {}, demo.app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const url = `http://127.0.0.1:${port}`;
  return {
    ...demo,
    url,
    port,
    server,
    store,
    dir,
    events,
    warnings,
    client: (jar, userAgent) => new Client(url, jar, userAgent),
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await demo.manager.close();
      if (root) await rm(root, { recursive: true, force: true });
    },
  };
}

/** The value of the hidden CSRF input (`_csrf`) in a page. */
export function csrfFrom(html: string): string {
  const match = /<input type="hidden" name="_csrf" value="([^"]+)">/.exec(html);
  if (!match?.[1]) throw new Error(`no CSRF field in page:\n${html.slice(0, 500)}`);
  return match[1];
}

/** Signs in through the form, as a browser would: GET /login, then POST it with its token. */
export async function login(
  client: Client,
  user: { username: string; password: string } = ALICE,
): Promise<{ status: number; location: string | null }> {
  const form = await client.get('/login');
  if (form.status !== 200) throw new Error(`GET /login answered ${form.status}`);
  const res = await client.post('/login', {
    _csrf: csrfFrom(form.body),
    username: user.username,
    password: user.password,
  });
  return { status: res.status, location: res.location };
}

/** A fresh CSRF token of a signed-in client, read from its dashboard. */
export async function dashboardToken(client: Client): Promise<string> {
  const page = await client.get('/dashboard');
  if (page.status !== 200) throw new Error(`GET /dashboard answered ${page.status}`);
  return csrfFrom(page.body);
}

/** Session record files in a FileStore directory (the user index and temp files excluded). */
export async function sessionFiles(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.filter((n) => n.endsWith('.json'));
}

/** The token part of a signed cookie value (`token.mac`). */
export function tokenOf(cookieValue: string): string {
  return cookieValue.slice(0, cookieValue.lastIndexOf('.'));
}

/** The record id part of a session cookie value (`<record id>.<token>.<mac>`): the storage key. */
export function sidOf(cookieValue: string): string {
  return cookieValue.split('.')[0]!;
}
