import { beforeAll, describe, expect, it } from 'vitest';
import { newToken } from '../../src/crypto/ids.js';
import { type CsrfRequest, csrfDecision } from '../../src/features/csrf.js';
import { type Csrf, escapeHtml } from '../../src/index.js';
import { CSRF_CONTENT_TYPES, contentTypeHeader } from '../helpers/csrf-matrix.js';
import { Browser, setup } from '../helpers/session-kit.js';

describe('SM-65: flash messages', () => {
  it('survive one redirect and are read exactly once', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.flash.success('Saved.')); // POST, then 303
    await browser.request((s) => expect(s.flash.messages()).toEqual({ success: ['Saved.'] })); // GET
    await browser.request((s) => expect(s.flash.messages()).toEqual({})); // reload
  });

  it('are queued in order per type; messages(type) consumes only that type; peek and has consume nothing', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => {
      s.flash.error('first');
      s.flash.error('second');
      s.flash.notice('note');
      s.flash.message('custom-type', 'custom');
    });
    await browser.request((s) => {
      expect(s.flash.has()).toBe(true);
      expect(s.flash.has('warning')).toBe(false);
      expect(s.flash.peek('error')).toEqual({ error: ['first', 'second'] });
      expect(s.flash.messages('error')).toEqual(['first', 'second']);
      expect(s.flash.messages('error')).toEqual([]);
    });
    await browser.request((s) => {
      expect(s.flash.messages()).toEqual({ notice: ['note'], 'custom-type': ['custom'] });
    });
  });

  it('output() escapes HTML and consumes the messages', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => {
      s.flash.error('<script>alert("x")</script> & \'quotes\'');
      s.flash.success('ok');
    });
    await browser.request((s) => {
      const html = s.flash.output();
      expect(html).not.toContain('<script>');
      expect(html).toContain('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;quotes&#39;');
      expect(html).toContain('<div class="flash flash-error" role="alert">');
      expect(html).toContain('<div class="flash flash-success" role="status">ok</div>');
      expect(s.flash.output()).toBe('');
    });
  });

  it('a flash type that could break out of the class attribute is refused', async () => {
    const { manager } = setup();
    await new Browser(manager).request((s) => {
      expect(() => s.flash.message('x" onmouseover="alert(1)', 'hi')).toThrow(TypeError);
    });
  });

  it('escapeHtml covers the five significant characters', () => {
    expect(escapeHtml(`<a href="x" title='y'>&</a>`)).toBe(
      '&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;',
    );
  });
});

describe('SM-43: CSRF synchronizer token', () => {
  it('is at least 128 bits, stable across requests, and different per session', async () => {
    const { manager } = setup();
    const a = new Browser(manager);
    const b = new Browser(manager);
    let first = '';
    await a.request((s) => {
      first = s.csrf.token();
      expect(s.csrf.token()).toBe(first);
    });
    expect(Buffer.from(first, 'base64url').length * 8).toBeGreaterThanOrEqual(128);
    await a.request((s) => expect(s.csrf.token()).toBe(first));
    await b.request((s) => expect(s.csrf.token()).not.toBe(first));
  });

  it('verify accepts only the exact token; other sessions, other shapes and non-strings fail without throwing', async () => {
    const { manager } = setup();
    const a = new Browser(manager);
    const b = new Browser(manager);
    let tokenA = '';
    let tokenB = '';
    await a.request((s) => {
      tokenA = s.csrf.token();
    });
    await b.request((s) => {
      tokenB = s.csrf.token();
    });
    await a.request((s) => {
      expect(s.csrf.verify(tokenA)).toBe(true);
      for (const bad of [
        tokenB,
        '',
        tokenA.slice(1),
        `${tokenA}x`,
        tokenA.toUpperCase(),
        undefined,
        null,
        42,
        [tokenA],
        { tokenA },
      ]) {
        expect(s.csrf.verify(bad)).toBe(false);
      }
    });
  });

  it('a session without a token verifies nothing and does not create one by verifying', async () => {
    const { manager, store } = setup();
    const { out } = await new Browser(manager).request((s) => {
      expect(s.csrf.verify('')).toBe(false);
      expect(s.csrf.verify(newToken())).toBe(false);
    });
    expect(out.setCookie).toEqual([]);
    expect(store.calls).toEqual([]);
  });

  it('tokenKey() names the form field, configurable', async () => {
    const { manager } = setup({ csrf: { field: 'authenticity_token' } });
    await new Browser(manager).request((s) => expect(s.csrf.tokenKey()).toBe('authenticity_token'));
  });
});

describe('SM-46/SM-47: the CSRF decision', () => {
  const names = { field: '_csrf', header: 'x-csrf-token' };
  const host = 'app.example.org';
  let csrf: Csrf;
  let token = '';

  // A browser on the app's own HTTPS page: it sends the app's Origin with every POST.
  const decide = (req: Partial<CsrfRequest> & { headers?: CsrfRequest['headers'] }) =>
    csrfDecision(
      csrf,
      { method: 'POST', secure: true, ...req, headers: { host, origin: `https://${host}`, ...req.headers } },
      names,
    );

  beforeAll(async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => {
      token = s.csrf.token();
    });
    await browser.request((s) => {
      csrf = s.csrf;
    });
  });

  it('safe methods pass without a token', () => {
    for (const method of ['GET', 'HEAD', 'OPTIONS', 'get']) expect(decide({ method })).toBe('ok');
  });

  it('unsafe methods, whatever their case or name, need the token', () => {
    for (const method of ['POST', 'post', 'PUT', 'PATCH', 'DELETE', 'PROPFIND']) {
      expect(decide({ method })).toBe('token-missing');
      expect(decide({ method, headers: { 'x-csrf-token': token } })).toBe('ok');
    }
  });

  it('the token is read from the form field or the header, and only there', () => {
    expect(decide({ body: { _csrf: token } })).toBe('ok');
    expect(decide({ headers: { 'x-csrf-token': token } })).toBe('ok');
    expect(decide({ headers: { cookie: `_csrf=${token}` } })).toBe('token-missing');
    expect(decide({ body: { csrf: token } })).toBe('token-missing');
    expect(decide({ body: Object.create({ _csrf: token }) })).toBe('token-missing'); // inherited, not sent
  });

  it('SM-46: Fetch Metadata: cross-site and same-site are refused even with the token', () => {
    const withToken = { 'x-csrf-token': token };
    expect(decide({ headers: { ...withToken, 'sec-fetch-site': 'cross-site' } })).toBe('cross-site');
    expect(decide({ headers: { ...withToken, 'sec-fetch-site': 'same-site' } })).toBe('cross-site');
    expect(decide({ headers: { ...withToken, 'sec-fetch-site': 'same-origin' } })).toBe('ok');
    expect(decide({ headers: { ...withToken, 'sec-fetch-site': 'none' } })).toBe('ok');
  });

  it('SM-47: with neither Origin nor Referer (nor Sec-Fetch-Site) the request is refused unless the policy allows it', () => {
    const bare = { method: 'POST', secure: true, headers: { host, 'x-csrf-token': token } };
    expect(csrfDecision(csrf, bare, names)).toBe('origin-missing');
    expect(csrfDecision(csrf, bare, names, { allowMissingOrigin: true })).toBe('ok');
    expect(
      csrfDecision(csrf, { ...bare, headers: { ...bare.headers, 'sec-fetch-site': 'same-origin' } }, names),
    ).toBe('ok');
    const referer = (r: string) =>
      csrfDecision(csrf, { ...bare, headers: { ...bare.headers, referer: r } }, names);
    expect(referer(`https://${host}/form`)).toBe('ok');
    expect(referer('https://attacker.example/page')).toBe('origin-mismatch');
    expect(referer('not a url')).toBe('origin-mismatch');
  });

  it('SM-47: the Origin must match exactly; null and look-alikes are refused', () => {
    const withToken = { 'x-csrf-token': token };
    for (const origin of [
      'https://evil.example',
      'null',
      'https://app.example.org.attacker.com',
      'https://attacker.com/app.example.org',
      'https://APP.EXAMPLE.ORG:444',
    ]) {
      expect(decide({ headers: { ...withToken, origin } }), origin).toBe('origin-mismatch');
    }
    expect(decide({ headers: { ...withToken, origin: 'https://app.example.org' } })).toBe('ok');
    expect(
      decide({
        headers: { ...withToken, origin: 'https://app.example.org' },
        origin: 'https://other.example',
      }),
    ).toBe('origin-mismatch');
  });

  it('SM-47: the decision does not depend on Content-Type', () => {
    for (const type of CSRF_CONTENT_TYPES) {
      const ct = contentTypeHeader(type);
      expect(decide({ headers: { ...ct, origin: 'https://evil.example', 'x-csrf-token': token } })).toBe(
        'origin-mismatch',
      );
      expect(decide({ headers: { ...ct, origin: 'null', 'x-csrf-token': token } })).toBe('origin-mismatch');
      expect(decide({ headers: { ...ct, 'sec-fetch-site': 'cross-site', 'x-csrf-token': token } })).toBe(
        'cross-site',
      );
      expect(decide({ headers: { ...ct, 'sec-fetch-site': 'same-origin' } })).toBe('token-missing');
      expect(decide({ headers: { ...ct, 'sec-fetch-site': 'same-origin', 'x-csrf-token': token } })).toBe(
        'ok',
      );
    }
  });
});
