import { describe, expect, it } from 'vitest';
import { auditTag } from '../../src/crypto/ids.js';
import { type AuditEvent, jsonLinesAudit } from '../../src/index.js';
import { Browser, MINUTE, setup } from '../helpers/session-kit.js';

describe('SM-54: audit events', () => {
  it('a session life cycle emits the expected events with UTC time, short sid, user, ip and user agent', async () => {
    const { manager, clock, events } = setup({ idleTimeout: 10 * MINUTE });
    const browser = new Browser(manager);
    const secrets: string[] = [];
    const remember = () => {
      secrets.push(browser.cookie!, browser.cookie!.split('.')[1]!, browser.key);
    };

    await browser.request((s) => {
      s.set('visited', true);
      secrets.push(s.csrf.token());
    });
    remember();
    const anonymousKey = browser.key;
    await browser.request((s) => manager.reportLoginFailure(s, 'alice', 'bad password'));
    await browser.request((s) => s.login('alice'));
    remember();
    const loggedInKey = browser.key;
    await browser.request((s) => {
      secrets.push(s.csrf.token());
      manager.reportCsrfFailure(s, 'token');
    });
    clock.advance(10 * MINUTE);
    await browser.request();
    await browser.request((s) => s.login('alice'));
    remember();
    await browser.request((s) => s.logout());

    expect(events.map((e) => [e.type, e.reason, e.userId])).toEqual([
      ['session_created', undefined, undefined],
      ['authn_login_fail', 'bad password', 'alice'],
      ['session_renewed', undefined, undefined],
      ['authn_login_success', undefined, 'alice'],
      ['malicious_csrf', 'token', 'alice'],
      ['session_expired', 'idle', 'alice'],
      // The browser still sends the dead cookie (it is not cleared: a clearing cookie could race a
      // concurrent login's new cookie); its record is gone now.
      ['session_unknown_id', undefined, undefined],
      ['authn_login_success', undefined, 'alice'],
      ['session_created', undefined, 'alice'],
      ['session_logout', undefined, 'alice'],
    ]);
    for (const e of events) {
      expect(e.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      expect(e.sid).toMatch(/^[A-Za-z0-9_-]{12}$/);
      expect(e).toMatchObject({ ip: '203.0.113.10', userAgent: 'TestBrowser/1.0' });
    }
    expect(events[0]!.time).toBe(new Date(clock.now() - 10 * MINUTE).toISOString());
    expect(events[0]!.sid).toBe(auditTag(anonymousKey));
    expect(events[4]!.sid).toBe(auditTag(loggedInKey));
    expect(events[5]!.sid).toBe(auditTag(loggedInKey));

    // SM-55: no token, cookie value, storage key or CSRF token anywhere in the log.
    const log = JSON.stringify(events);
    expect(secrets.length).toBeGreaterThanOrEqual(11);
    for (const secret of secrets) expect(log).not.toContain(secret);
  });

  it('invalid cookies, unknown IDs, binding mismatches and revocations are reported', async () => {
    const { manager, events } = setup({ binding: { userAgent: true } });
    const forged = new Browser(manager);
    forged.cookie = 'forged.value';
    await forged.request();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 1));
    await browser.request(() => {}, { userAgent: 'Other' });
    const other = new Browser(manager);
    await other.request((s) => s.set('a', 1));
    await manager.revoke(other.key);
    await other.request();
    expect(events.map((e) => e.type)).toEqual([
      'session_invalid_cookie',
      'session_created',
      'session_binding_mismatch',
      'session_created',
      'session_revoked',
      'session_unknown_id',
    ]);
  });
});

describe('SM-55: log safety', () => {
  it('a user agent with CRLF and control characters is neutralised; each event stays one JSON line', async () => {
    const lines: string[] = [];
    const sink = jsonLinesAudit({ write: (chunk: string) => lines.push(chunk) });
    const { manager } = setup({ audit: sink });
    const browser = new Browser(manager);
    browser.info.userAgent = 'x\r\n{"type":"authn_login_success","userId":"admin"}\u0000\u001b[31m';
    await browser.request((s) => s.set('a', 1));
    await browser.request((s) => s.logout());
    const output = lines.join('');
    expect(output.split('\n').filter(Boolean)).toHaveLength(2);
    for (const line of lines) {
      const event = JSON.parse(line) as AuditEvent;
      for (const control of ['\r', '\n', '\u0000', '\u001b']) expect(event.userAgent).not.toContain(control);
      expect(event.userAgent).toContain('x\uFFFD\uFFFD{"type"');
    }
  });

  it('a very long user agent is bounded', async () => {
    const { manager, events } = setup();
    await new Browser(manager).request((s) => s.set('a', 1), { userAgent: 'A'.repeat(10_000) });
    expect(events[0]!.userAgent!.length).toBeLessThanOrEqual(256);
  });

  it('a throwing audit sink does not break the request; the failure becomes a warning', async () => {
    const warnings: string[] = [];
    const { manager } = setup({
      audit: () => {
        throw new Error('log disk full');
      },
      warn: (w) => warnings.push(w),
    });
    const browser = new Browser(manager);
    const { setCookie } = await browser.request((s) => s.set('a', 1));
    expect(setCookie).toBeDefined();
    expect(warnings).toEqual(['audit sink threw: log disk full']);
  });
});
