/**
 * Timeouts (checklist D) with a clock the test moves by hand, shared by the manager and the
 * FileStore, and audit logging (checklist I) read from the captured sink.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { storageKey } from '../../src/crypto/ids.js';
import { type AuditEvent, jsonLinesAudit } from '../../src/index.js';
import { parseSetCookie } from '../helpers/cookie-jar.js';
import {
  ALICE,
  credentials,
  csrfFrom,
  type DemoServer,
  dashboardToken,
  type FakeClock,
  fakeClock,
  login,
  removeTempDirs,
  startDemo,
  tokenOf,
} from '../helpers/demo.js';
import { rawRequest } from '../helpers/raw-http.js';

const IDLE = 60_000;
const ABSOLUTE = 150_000;
const SECOND = 1000;

const running: DemoServer[] = [];
afterAll(async () => {
  await Promise.all(running.map((d) => d.close()));
  await removeTempDirs();
});

async function timedDemo(): Promise<{ clock: FakeClock; demo: DemoServer }> {
  const clock = fakeClock();
  const demo = await startDemo({ now: clock.now, idleTimeout: IDLE, absoluteTimeout: ABSOLUTE });
  running.push(demo);
  return { clock, demo };
}

const types = (events: AuditEvent[]) => events.map((e) => e.type);

describe('D. Timeouts', () => {
  it('SM-25: activity keeps the session alive; 60 s without a request ends it (login redirect)', async () => {
    const { clock, demo } = await timedDemo();
    const c = demo.client();
    await login(c);
    expect((await c.get('/dashboard')).status).toBe(200);
    for (let i = 0; i < 3; i++) {
      clock.advance(40 * SECOND); // each gap is under the idle limit; 120 s in all is twice over it
      expect((await c.get('/dashboard')).status).toBe(200);
    }
    clock.advance(IDLE + SECOND);
    const res = await c.get('/dashboard');
    expect(res.status).toBe(303);
    expect(res.location).toBe('/login');
  });

  it('SM-25: idle expiry is logged as session_expired(reason=idle) and the user is told why', async () => {
    const { clock, demo } = await timedDemo();
    const c = demo.client();
    await login(c);
    await c.get('/dashboard');
    clock.advance(IDLE + SECOND);
    expect((await c.get('/dashboard')).status).toBe(303);
    const expired = demo.events.filter((e) => e.type === 'session_expired');
    expect(expired).toEqual([expect.objectContaining({ reason: 'idle', userId: ALICE.id })]);
    expect((await c.get('/login')).body).toContain('Your session has expired.');
  });

  it('SM-26: the absolute timeout ends the session despite constant activity; replaying the cookie fails (SM-27)', async () => {
    const { clock, demo } = await timedDemo();
    const c = demo.client();
    await login(c);
    const captured = c.jar.get('id')!;
    for (let t = 40; t < ABSOLUTE / SECOND; t += 40) {
      clock.advance(40 * SECOND);
      expect((await c.get('/dashboard')).status, `at ${t} s`).toBe(200);
    }
    clock.advance(40 * SECOND); // 160 s after login: past the 150 s absolute limit, 40 s after the last request
    const res = await c.get('/dashboard');
    expect(res.status).toBe(303);
    expect(res.location).toBe('/login');
    const replay = demo.client();
    replay.jar.set('id', captured);
    expect((await replay.get('/dashboard')).status).toBe(303);
  });

  it('SM-26: absolute expiry is logged as session_expired(reason=absolute) and the user is told why', async () => {
    const { clock, demo } = await timedDemo();
    const c = demo.client();
    await login(c);
    for (let i = 0; i < 4; i++) {
      clock.advance(40 * SECOND);
      await c.get('/dashboard');
    }
    expect((await c.get('/dashboard')).status).toBe(303);
    const expired = demo.events.filter((e) => e.type === 'session_expired');
    expect(expired).toEqual([expect.objectContaining({ reason: 'absolute', userId: ALICE.id })]);
    expect((await c.get('/login')).body).toContain('Your session has expired.');
  });

  it('SM-30/SM-21: POST /reauth issues a new ID and restarts the absolute timer', async () => {
    const { clock, demo } = await timedDemo();
    const c = demo.client();
    await login(c);
    clock.advance(50 * SECOND);
    expect((await c.get('/dashboard')).status).toBe(200);
    clock.advance(50 * SECOND);
    const token = await dashboardToken(c); // 100 s after login
    const before = c.jar.get('id')!;
    const res = await c.post('/reauth', { _csrf: token, password: ALICE.password });
    expect(res.status).toBe(200);
    expect(tokenOf(c.jar.get('id')!)).not.toBe(tokenOf(before));
    for (let i = 0; i < 3; i++) {
      clock.advance(40 * SECOND); // 220 s after login, 120 s after re-authentication
      expect((await c.get('/dashboard')).status).toBe(200);
    }
    clock.advance(40 * SECOND); // 160 s after re-authentication
    expect((await c.get('/dashboard')).status).toBe(303);
  });
});

describe('I. Audit logging', () => {
  /** login (one wrong password first) → dashboard → idle expiry → login → logout → forged CSRF. */
  async function script(demo: DemoServer, clock: FakeClock) {
    const c = demo.client();
    const page = await c.get('/login');
    await c.post('/login', {
      _csrf: csrfFrom(page.body),
      username: ALICE.username,
      password: 'wrong-password',
    });
    await c.post('/login', { _csrf: csrfFrom(page.body), ...credentials(ALICE) });
    await c.get('/dashboard');
    clock.advance(IDLE + SECOND);
    await c.get('/dashboard');
    await login(c);
    const token = await dashboardToken(c);
    await c.post('/logout', { _csrf: token });
    const forged = await c.post('/transfer', { _csrf: token, to: 'mallory', amount: '1' });
    expect(forged.status).toBe(403);
    return c;
  }

  it('SM-54: the lifecycle produces the expected events, in order', async () => {
    const { clock, demo } = await timedDemo();
    await script(demo, clock);
    const interesting = new Set([
      'authn_login_fail',
      'authn_login_success',
      'session_renewed',
      'session_expired',
      'session_logout',
      'malicious_csrf',
    ]);
    expect(types(demo.events).filter((t) => interesting.has(t))).toEqual([
      'authn_login_fail',
      'session_renewed',
      'authn_login_success',
      'session_expired',
      'session_renewed',
      'authn_login_success',
      'session_logout',
      'malicious_csrf',
    ]);
  });

  it('SM-54: events carry UTC ISO-8601 time, IP, user agent, user id and a correlation tag', async () => {
    const { clock, demo } = await timedDemo();
    const c = demo.client();
    const start = new Date(clock.now()).toISOString();
    await login(c);
    clock.advance(5 * SECOND);
    const token = await dashboardToken(c);
    await c.post('/logout', { _csrf: token });
    const byType = (t: string) => demo.events.filter((e) => e.type === t);
    for (const e of demo.events) {
      expect(e.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      expect(e.ip).toBe('127.0.0.1');
      expect(e.userAgent).toBe(c.userAgent);
    }
    const [created] = byType('session_created');
    const [success] = byType('authn_login_success');
    const [logout] = byType('session_logout');
    expect(created!.time).toBe(start);
    expect(success).toMatchObject({ userId: ALICE.id, time: start });
    expect(logout).toMatchObject({ userId: ALICE.id, time: new Date(clock.now()).toISOString() });
    expect(success!.sid).toMatch(/^[A-Za-z0-9_-]{8,}$/);
    expect(logout!.sid).toBe(success!.sid); // same session, same tag
    expect(created!.sid).toBe(success!.sid); // login changed the cookie's secret, not the record
  });

  it('SM-55: no raw session ID, storage key or CSRF token appears in any audit event', async () => {
    const { clock, demo } = await timedDemo();
    const c = await script(demo, clock);
    const secrets = new Set<string>();
    for (const res of c.history) {
      for (const raw of res.setCookies) {
        const { value } = parseSetCookie(raw);
        if (!value) continue;
        secrets.add(value);
        secrets.add(tokenOf(value));
        secrets.add(storageKey(tokenOf(value)));
      }
      for (const m of res.body.matchAll(/name="_csrf" value="([^"]+)"/g)) secrets.add(m[1]!);
    }
    expect(secrets.size).toBeGreaterThan(6);
    const log = JSON.stringify(demo.events);
    for (const s of secrets) expect(log).not.toContain(s);
    expect(log).not.toContain(ALICE.password);
    expect(log).not.toContain('wrong-password');
  });

  it('SM-44: CSRF tokens travel only in POST bodies: never in a URL, a Location header or a log', async () => {
    const { clock, demo } = await timedDemo();
    const c = await script(demo, clock);
    const tokens = new Set<string>();
    for (const res of c.history)
      for (const m of res.body.matchAll(/name="_csrf" value="([^"]+)"/g)) tokens.add(m[1]!);
    expect(tokens.size).toBeGreaterThan(1);
    const forms = c.history.flatMap((res) => [...res.body.matchAll(/<form[^>]*>/g)].map((m) => m[0]));
    expect(forms.length).toBeGreaterThan(0);
    for (const form of forms) expect(form).toMatch(/method="post"/i);
    const locations = c.history.map((res) => res.location ?? '').join('\n');
    const hrefs = c.history.flatMap((res) =>
      [...res.body.matchAll(/(?:href|action)="([^"]*)"/g)].map((m) => m[1]),
    );
    const log = JSON.stringify(demo.events);
    for (const token of tokens) {
      expect(locations).not.toContain(token);
      for (const href of hrefs) expect(href).not.toContain(token);
      expect(log).not.toContain(token);
    }
  });

  it('SM-55: control characters in the User-Agent cannot forge a log line', async () => {
    const lines: string[] = [];
    const events: AuditEvent[] = [];
    const sink = jsonLinesAudit({ write: (chunk: string) => lines.push(chunk) });
    const demo = await startDemo({
      audit: (e) => {
        events.push(e);
        sink(e);
      },
      // A lenient parser lets control characters through, as some proxies do.
      serverOptions: { insecureHTTPParser: true },
    });
    running.push(demo);
    const forged = '{"type":"authn_login_success","userId":"admin"}';
    const ua = `x\x1b[2K\x08\x01FAKE ${forged}\x7f\tend`;
    // A forged session cookie is an audited event (session_invalid_cookie) carrying the UA.
    const res = await rawRequest(demo.port, 'GET /login HTTP/1.1', [
      `User-Agent: ${ua}`,
      'Cookie: id=forged.cookie',
    ]);
    expect(res.status).toBe(200);
    // CR LF ends a header line, so a strict parser refuses the request before any event exists.
    const crlf = await rawRequest(demo.port, 'GET /login HTTP/1.1', [`User-Agent: x\r\nFAKE ${forged}`]);
    expect(crlf.status).toBeLessThan(500);

    expect(events.length).toBeGreaterThan(0);
    const text = lines.join('');
    const split = text.split('\n');
    expect(split.pop()).toBe('');
    expect(split).toHaveLength(events.length);
    for (const line of split) {
      const parsed = JSON.parse(line) as AuditEvent;
      expect(parsed.type).not.toBe('authn_login_success');
      const controls = [...(parsed.userAgent ?? '')].filter((ch) => ch.charCodeAt(0) < 0x20 || ch === '\x7f');
      expect(controls).toEqual([]);
    }
    expect(events.some((e) => e.userId === 'admin')).toBe(false);
    expect(events.find((e) => e.type === 'session_invalid_cookie')?.userAgent).toContain('FAKE');
  });
});
