/**
 * SM-05/SM-41: proxy headers count only from trusted proxies, under one rule (Express's
 * `trust proxy` semantics, resolved by proxy-addr) in every integration; Express and Fastify
 * follow the framework's own setting when the app has one, so `session.client.ip` is the
 * `req.ip` the app sees.
 */
import { createServer, type Server } from 'node:http';
import express from 'express';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import type { SessionManagerOptions } from '../../src/index.js';
import { session } from '../../src/integrations/express.js';
import { sessionPlugin } from '../../src/integrations/fastify.js';
import { withFetchSession } from '../../src/integrations/fetch.js';
import { withSession } from '../../src/integrations/node.js';
import { listen, setup } from '../helpers/session-kit.js';

const SPOOF = { 'x-forwarded-for': '6.6.6.6', 'x-forwarded-proto': 'https' };

let closers: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const close of closers) await close();
  closers = [];
});

interface Seen {
  ip: string | undefined;
  appIp?: string | undefined;
  secureCookie: boolean;
}

/** GET /write with `headers`: the client address the session saw, and whether a Secure cookie came back. */
async function probe(url: string, headers: Record<string, string> = {}): Promise<Seen> {
  const res = await fetch(`${url}/write`, { headers });
  const body = (await res.json()) as { ip?: string; appIp?: string };
  const cookies = res.headers.getSetCookie();
  return {
    ip: body.ip,
    ...(body.appIp === undefined ? {} : { appIp: body.appIp }),
    secureCookie: cookies.some((c) => /^__Host-id=.*; Secure/.test(c)),
  };
}

async function expressApp(setting: unknown, options: Partial<SessionManagerOptions> = {}) {
  const kit = setup(options);
  const app = express();
  if (setting !== undefined) app.set('trust proxy', setting);
  app.use(session(kit.manager));
  app.get('/write', (req, res) => {
    req.session.set('n', 1);
    res.json({ ip: req.session.client.ip, appIp: req.ip });
  });
  const server = createServer(app);
  const { url, close } = await listen(server);
  closers.push(close);
  return { ...kit, url };
}

describe('SM-05/SM-41: Express: sessionflow follows app.set("trust proxy")', () => {
  it('without any trust setting, a spoofed X-Forwarded-For/-Proto is ignored', async () => {
    const { url } = await expressApp(undefined);
    expect(await probe(url, SPOOF)).toEqual({ ip: '127.0.0.1', appIp: '127.0.0.1', secureCookie: false });
  });

  it('from a peer the setting does not trust (10.0.0.0/8), the headers are ignored', async () => {
    const { url } = await expressApp('10.0.0.0/8');
    expect(await probe(url, SPOOF)).toEqual({ ip: '127.0.0.1', appIp: '127.0.0.1', secureCookie: false });
  });

  it("from a trusted proxy ('loopback'), the client is req.ip and X-Forwarded-Proto: https gets the Secure cookie", async () => {
    const { url } = await expressApp('loopback');
    const seen = await probe(url, {
      'x-forwarded-for': '6.6.6.6, 198.51.100.7',
      'x-forwarded-proto': 'https',
    });
    expect(seen).toEqual({ ip: '198.51.100.7', appIp: '198.51.100.7', secureCookie: true });
    // The same proxy saying the client came over plain HTTP: no Secure cookie can be set.
    expect((await probe(url, { 'x-forwarded-proto': 'http' })).secureCookie).toBe(false);
  });

  it('a hop count and a function are Express settings too', async () => {
    const hops = await expressApp(2);
    expect(await probe(hops.url, { 'x-forwarded-for': '6.6.6.6, 198.51.100.7, 10.0.0.2' })).toMatchObject({
      ip: '198.51.100.7',
      appIp: '198.51.100.7',
    });
    const fn = await expressApp((address: string) => address === '127.0.0.1');
    expect(await probe(fn.url, { 'x-forwarded-for': '203.0.113.4' })).toMatchObject({ ip: '203.0.113.4' });
  });

  it("the app's own setting wins over sessionflow's trustProxy, so the session and req.ip agree", async () => {
    const { url } = await expressApp(false, { trustProxy: true });
    expect(await probe(url, SPOOF)).toEqual({ ip: '127.0.0.1', appIp: '127.0.0.1', secureCookie: false });
  });

  it("without an Express setting, sessionflow's trustProxy (proxy-addr syntax) applies", async () => {
    const trusted = await expressApp(undefined, { trustProxy: 'loopback' });
    expect(await probe(trusted.url, SPOOF)).toMatchObject({ ip: '6.6.6.6', secureCookie: true });
    const other = await expressApp(undefined, { trustProxy: ['10.0.0.0/8', '192.168.0.0/16'] });
    expect(await probe(other.url, SPOOF)).toMatchObject({ ip: '127.0.0.1', secureCookie: false });
  });
});

describe('SM-05/SM-41: Fastify: sessionflow follows Fastify({ trustProxy })', () => {
  async function fastifyApp(trustProxy: unknown, options: Partial<SessionManagerOptions> = {}) {
    const kit = setup(options);
    const app: FastifyInstance = Fastify(
      trustProxy === undefined ? {} : { trustProxy: trustProxy as string },
    );
    await app.register(sessionPlugin(kit.manager));
    app.get('/write', async (req) => {
      req.session.set('n', 1);
      return { ip: req.session.client.ip, appIp: req.ip };
    });
    await app.ready();
    closers.push(() => app.close());
    const inject = async (remoteAddress: string, headers: Record<string, string>): Promise<Seen> => {
      const res = await app.inject({ method: 'GET', url: '/write', remoteAddress, headers });
      const body = res.json() as { ip: string; appIp: string };
      const setCookie = res.headers['set-cookie'];
      const cookies = Array.isArray(setCookie) ? setCookie : setCookie ? [setCookie] : [];
      return {
        ip: body.ip,
        appIp: body.appIp,
        secureCookie: cookies.some((c) => /^__Host-id=.*; Secure/.test(c)),
      };
    };
    return { ...kit, inject };
  }

  it('a spoofed X-Forwarded-For/-Proto from a peer Fastify does not trust is ignored', async () => {
    const { inject } = await fastifyApp('10.0.0.0/8');
    expect(await inject('203.0.113.9', SPOOF)).toEqual({
      ip: '203.0.113.9',
      appIp: '203.0.113.9',
      secureCookie: false,
    });
  });

  it('from a proxy Fastify trusts, the client is request.ip and the scheme request.protocol', async () => {
    const { inject } = await fastifyApp('10.0.0.0/8');
    expect(
      await inject('10.1.2.3', { 'x-forwarded-for': '198.51.100.7', 'x-forwarded-proto': 'https' }),
    ).toEqual({
      ip: '198.51.100.7',
      appIp: '198.51.100.7',
      secureCookie: true,
    });
  });

  it("Fastify's setting wins over sessionflow's trustProxy", async () => {
    const { inject } = await fastifyApp('10.0.0.0/8', { trustProxy: true });
    expect(await inject('203.0.113.9', SPOOF)).toMatchObject({ ip: '203.0.113.9', secureCookie: false });
  });

  it("without a Fastify setting, sessionflow's trustProxy applies to the raw request", async () => {
    const trusted = await fastifyApp(undefined, { trustProxy: '10.0.0.0/8' });
    expect(await trusted.inject('10.1.2.3', SPOOF)).toMatchObject({ ip: '6.6.6.6', secureCookie: true });
    expect(await trusted.inject('203.0.113.9', SPOOF)).toMatchObject({
      ip: '203.0.113.9',
      secureCookie: false,
    });
  });
});

describe('SM-05/SM-41: Fetch: X-Forwarded-Proto/-For under the same rule, given the peer address', () => {
  function fetchApp(options: Partial<SessionManagerOptions>, peer?: string) {
    const kit = setup(options);
    const handler = withFetchSession(
      kit.manager,
      (_req, s) => {
        s.set('n', 1);
        return Response.json({ ip: s.client.ip });
      },
      peer === undefined ? {} : { peerAddress: () => peer },
    );
    const call = async (headers: Record<string, string>): Promise<Seen> => {
      const res = await handler(new Request('http://app.example/write', { headers }));
      const body = (await res.json()) as { ip?: string };
      return {
        ip: body.ip,
        secureCookie: res.headers.getSetCookie().some((c) => /^__Host-id=.*; Secure/.test(c)),
      };
    };
    return { ...kit, call };
  }

  it('a trusted peer: the forwarded scheme and client count', async () => {
    const { call } = fetchApp({ trustProxy: '10.0.0.0/8' }, '10.0.0.2');
    expect(await call({ 'x-forwarded-for': '198.51.100.7', 'x-forwarded-proto': 'https' })).toEqual({
      ip: '198.51.100.7',
      secureCookie: true,
    });
  });

  it('an untrusted peer: spoofed headers are ignored (plain HTTP: no cookie; the client is the peer)', async () => {
    const { call, store } = fetchApp({ trustProxy: '10.0.0.0/8' }, '203.0.113.5');
    expect(await call(SPOOF)).toEqual({ ip: '203.0.113.5', secureCookie: false });
    expect(store.count('create')).toBe(0);
    const untrusting = fetchApp({}, '10.0.0.2');
    expect(await untrusting.call(SPOOF)).toEqual({ ip: '10.0.0.2', secureCookie: false });
  });

  it('no peer address: honoured only under trustProxy true or a hop count; an address list warns', async () => {
    expect(await fetchApp({ trustProxy: true }).call(SPOOF)).toEqual({ ip: '6.6.6.6', secureCookie: true });
    expect(await fetchApp({ trustProxy: 1 }).call(SPOOF)).toEqual({ ip: '6.6.6.6', secureCookie: true });
    const list = fetchApp({ trustProxy: 'loopback' });
    expect(await list.call(SPOOF)).toEqual({ ip: undefined, secureCookie: false });
    expect(list.warnings).toContainEqual(
      expect.stringMatching(/X-Forwarded-For\/X-Forwarded-Proto were ignored.*peer address/),
    );
  });
});

describe('SM-05/SM-41: node:http: trustProxy in proxy-addr syntax', () => {
  async function nodeApp(options: Partial<SessionManagerOptions>) {
    const kit = setup(options);
    const server: Server = createServer(
      withSession(kit.manager, (_req, res, s) => {
        s.set('n', 1);
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ ip: s.client.ip }));
      }),
    );
    const { url, close } = await listen(server);
    closers.push(close);
    return url;
  }

  it("'loopback' trusts the local proxy; '10.0.0.0/8' does not", async () => {
    expect(await probe(await nodeApp({ trustProxy: 'loopback' }), SPOOF)).toEqual({
      ip: '6.6.6.6',
      secureCookie: true,
    });
    expect(await probe(await nodeApp({ trustProxy: '10.0.0.0/8' }), SPOOF)).toEqual({
      ip: '127.0.0.1',
      secureCookie: false,
    });
  });

  it('the client is the first untrusted hop from the right', async () => {
    const url = await nodeApp({ trustProxy: 'loopback, 10.0.0.0/8' });
    expect(await probe(url, { 'x-forwarded-for': '6.6.6.6, 198.51.100.7, 10.0.0.2' })).toMatchObject({
      ip: '198.51.100.7',
    });
  });
});
