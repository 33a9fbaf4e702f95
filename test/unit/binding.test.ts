import { createServer } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import type { SessionManagerOptions } from '../../src/index.js';
import { withSession } from '../../src/integrations/node.js';
import { Browser, listen, sessionCookieOf, setup } from '../helpers/session-kit.js';

describe('SM-40: user-agent binding', () => {
  it('a different user agent destroys the session and is reported; the same one keeps it', async () => {
    const { manager, store, events } = setup({ binding: { userAgent: true } });
    const browser = new Browser(manager);
    browser.info.userAgent = 'Firefox/140';
    await browser.request((s) => s.login(5));
    expect((await browser.request((s) => s.get('x'))).session.isNew).toBe(false);
    const key = browser.key;
    const stolen = browser.cookie;

    const thief = new Browser(manager);
    thief.cookie = stolen;
    thief.info.userAgent = 'curl/8.0';
    const { session } = await thief.request();
    expect(session.isNew).toBe(true);
    expect(session.endedReason).toBe('binding:user-agent');
    expect(await store.inner.load(key)).toBeNull();
    expect(events.at(-1)).toMatchObject({
      type: 'session_binding_mismatch',
      reason: 'user-agent',
      userId: '5',
      userAgent: 'curl/8.0',
    });
    // The legitimate browser is logged out too: the session is gone, not just refused once.
    expect((await browser.request()).session.isNew).toBe(true);
  });

  it("action 'log' reports the mismatch but keeps the session", async () => {
    const { manager, events } = setup({ binding: { userAgent: true, action: 'log' } });
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    const { session } = await browser.request((s) => s.get('a'), { userAgent: 'Other/1' });
    expect(session.isNew).toBe(false);
    expect(session.get('a')).toBe(1);
    expect(events.at(-1)).toMatchObject({ type: 'session_binding_mismatch', reason: 'user-agent' });
  });

  it('login binds a session that was created before binding was turned on', async () => {
    const before = setup();
    const browser = new Browser(before.manager);
    await browser.request((s) => s.set('a', 1));
    const after = setup({ binding: { userAgent: true }, store: before.store.inner }, before.clock);
    browser.manager = after.manager;
    await browser.request((s) => s.login(1));
    const { session } = await browser.request(() => {}, { userAgent: 'Other/1' });
    expect(session.isNew).toBe(true);
    expect(session.endedReason).toBe('binding:user-agent');
  });

  it('the stored binding is a hash, not the user agent itself', async () => {
    const { manager, store } = setup({ binding: { userAgent: true } });
    const browser = new Browser(manager);
    browser.info.userAgent = 'Mozilla/5.0 (X11; Linux x86_64) Firefox/140';
    await browser.request((s) => s.set('a', 1));
    const stored = JSON.stringify(await store.inner.load(browser.key));
    expect(stored).not.toContain('Firefox');
  });
});

describe('SM-41: IP binding with a network prefix', () => {
  /** Creates a session from `from`, then comes back from `to`: was the session kept? */
  async function moveTo(
    to: string | undefined,
    from = '203.0.113.10',
    binding: SessionManagerOptions['binding'] = { ip: true },
  ) {
    const { manager, events } = setup({ binding });
    const browser = new Browser(manager);
    browser.info.ip = from;
    await browser.request((s) => s.set('a', 1));
    const { session } = await browser.request((s) => s.get('a'), { ip: to });
    return { kept: !session.isNew, events };
  }

  it.each([
    ['the same address', '203.0.113.10', true],
    ['another host of the same /24', '203.0.113.200', true],
    ['the same address, IPv4-mapped', '::ffff:203.0.113.10', true],
    ['the neighbouring /24', '203.0.114.10', false],
    ['an IPv6 address', '2001:db8::1', false],
    ['no address at all', undefined, false],
  ])('%s → kept: %s', async (_label, ip, kept) => {
    const result = await moveTo(ip);
    expect(result.kept).toBe(kept);
    if (!kept) expect(result.events.at(-1)).toMatchObject({ type: 'session_binding_mismatch', reason: 'ip' });
  });

  it('prefixes are configurable: /16 tolerates a move inside 203.0.0.0/16', async () => {
    const v16 = { ip: { v4Prefix: 16 } };
    expect((await moveTo('203.0.200.1', undefined, v16)).kept).toBe(true);
    expect((await moveTo('203.1.0.1', undefined, v16)).kept).toBe(false);
  });

  it('IPv6 is compared by /64 by default', async () => {
    expect((await moveTo('2001:db8:1:2::99', '2001:db8:1:2::10')).kept).toBe(true);
    expect((await moveTo('2001:db8:1:3::10', '2001:db8:1:2::10')).kept).toBe(false);
  });
});

describe('SM-41/SM-05: proxy headers are trusted only from a trusted proxy (real node:http server)', () => {
  let close: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await close?.();
    close = undefined;
  });

  async function serve(options: Partial<SessionManagerOptions>) {
    const kit = setup(options);
    const server = createServer(
      withSession(kit.manager, (req, res, session) => {
        if (req.url === '/write') session.set('n', 1);
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify({ ip: session.client.ip, isNew: session.isNew }));
      }),
    );
    const started = await listen(server);
    close = started.close;
    return { ...kit, url: started.url };
  }

  it('without trustProxy, X-Forwarded-For is ignored: the peer address counts', async () => {
    const { url } = await serve({ cookie: { secure: false } });
    const res = await fetch(`${url}/`, { headers: { 'x-forwarded-for': '198.51.100.7' } });
    expect(await res.json()).toMatchObject({ ip: '127.0.0.1' });
  });

  it('without trustProxy, a spoofed X-Forwarded-For cannot dodge IP binding', async () => {
    const { url } = await serve({ cookie: { secure: false }, binding: { ip: true } });
    const first = await fetch(`${url}/write`, { headers: { 'x-forwarded-for': '198.51.100.7' } });
    const cookie = sessionCookieOf(first, 'id')!;
    const second = await fetch(`${url}/`, { headers: { cookie, 'x-forwarded-for': '192.0.2.99' } });
    expect(await second.json()).toMatchObject({ isNew: false, ip: '127.0.0.1' });
  });

  it('with trustProxy, the client address comes from X-Forwarded-For and binding follows it', async () => {
    const { url, events } = await serve({
      cookie: { secure: false },
      binding: { ip: true },
      trustProxy: true,
    });
    const first = await fetch(`${url}/write`, { headers: { 'x-forwarded-for': '198.51.100.7' } });
    expect(await first.json()).toMatchObject({ ip: '198.51.100.7' });
    const cookie = sessionCookieOf(first, 'id')!;
    const near = await fetch(`${url}/`, { headers: { cookie, 'x-forwarded-for': '198.51.100.99' } });
    expect(await near.json()).toMatchObject({ isNew: false });
    const far = await fetch(`${url}/`, { headers: { cookie, 'x-forwarded-for': '192.0.2.1' } });
    expect(await far.json()).toMatchObject({ isNew: true });
    expect(events.at(-1)).toMatchObject({ type: 'session_binding_mismatch', reason: 'ip', ip: '192.0.2.1' });
  });

  it('a trust function: the client is the rightmost hop that is not a trusted proxy', async () => {
    const { url } = await serve({
      cookie: { secure: false },
      trustProxy: (a) => a === '127.0.0.1' || a === '10.0.0.2',
    });
    const res = await fetch(`${url}/`, { headers: { 'x-forwarded-for': '6.6.6.6, 198.51.100.7, 10.0.0.2' } });
    expect(await res.json()).toMatchObject({ ip: '198.51.100.7' });
  });

  it('SM-05: with cookie.secure, plain HTTP gets no Set-Cookie and no store record; the misconfiguration is reported once', async () => {
    const { url, store, warnings } = await serve({});
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${url}/write`);
      expect(res.headers.getSetCookie()).toEqual([]);
    }
    expect(store.count('create')).toBe(0);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/plain-HTTP request while cookie.secure is on.*trustProxy/);
  });

  it('SM-05: a spoofed X-Forwarded-Proto: https from an untrusted peer changes nothing', async () => {
    const { url, store } = await serve({});
    const res = await fetch(`${url}/write`, { headers: { 'x-forwarded-proto': 'https' } });
    expect(res.headers.getSetCookie()).toEqual([]);
    expect(store.count('create')).toBe(0);
  });

  it('SM-05: behind a trusted TLS proxy, X-Forwarded-Proto: https gets the Secure cookie; http does not', async () => {
    const { url } = await serve({ trustProxy: true });
    const https = await fetch(`${url}/write`, { headers: { 'x-forwarded-proto': 'https' } });
    const cookie = sessionCookieOf(https, '__Host-id');
    expect(cookie).toBeDefined();
    expect(https.headers.getSetCookie()[0]).toMatch(/; Secure/);
    // The same cookie arriving over plain HTTP is not honoured.
    const plain = await fetch(`${url}/`, { headers: { cookie: cookie!, 'x-forwarded-proto': 'http' } });
    expect(await plain.json()).toMatchObject({ isNew: true });
    const again = await fetch(`${url}/`, { headers: { cookie: cookie!, 'x-forwarded-proto': 'https' } });
    expect(await again.json()).toMatchObject({ isNew: false });
  });
});
