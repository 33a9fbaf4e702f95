import { describe, expect, it } from 'vitest';
import type { RequestInfo } from '../../src/index.js';
import { Browser, cookiePair, flipAt, SECRET_2, setup } from '../helpers/session-kit.js';

/**
 * The manager keeps, per connection (`RequestInfo.connection`), what the connection's last
 * `Cookie` header held. These tests send changing headers over one connection object and check
 * that every answer is the one a request without a connection gets.
 */

describe('SM-14: a cookie checked once on a connection vouches for nothing else sent over it', () => {
  it('valid, tampered, valid again on one connection: the tampered value gets a fresh session and no store access', async () => {
    const { manager, store, events } = setup();
    const connection = {};
    const browser = new Browser(manager);
    browser.info = { ...browser.info, connection };
    await browser.request((s) => s.set('n', 1));
    const valid = browser.cookie!;
    for (const tampered of [flipAt(valid, valid.length - 5), flipAt(valid, 3), `${valid}x`]) {
      browser.cookie = valid;
      expect((await browser.request()).session.get('n')).toBe(1);
      store.reset();
      events.length = 0;
      browser.cookie = tampered;
      const { session, out } = await browser.request();
      expect(session.isNew).toBe(true);
      expect(session.get('n')).toBeUndefined();
      expect(store.calls).toEqual([]);
      expect(out.setCookie).toEqual([]);
      expect(events.map((e) => e.type)).toEqual(['session_invalid_cookie']);
    }
    browser.cookie = valid;
    expect((await browser.request()).session.get('n')).toBe(1);
  });

  it('the same forged header repeated on one connection is reported every time', async () => {
    const { manager, events } = setup();
    const connection = {};
    const forged = `__Host-id=${'A'.repeat(43)}.${'B'.repeat(43)}.${'C'.repeat(43)}`;
    for (let i = 0; i < 3; i++) {
      const info: RequestInfo = { secure: true, cookieHeader: forged, connection };
      const session = await manager.load(info);
      expect(session.isNew).toBe(true);
      await manager.commit(session, info);
    }
    expect(events.map((e) => e.type)).toEqual([
      'session_invalid_cookie',
      'session_invalid_cookie',
      'session_invalid_cookie',
    ]);
  });

  it('two managers on one connection: a cookie one of them verified is nothing to the other', async () => {
    const a = setup();
    const b = setup({ secret: SECRET_2 });
    const connection = {};
    const bob = new Browser(b.manager);
    bob.info = { ...bob.info, connection };
    await bob.request((s) => s.set('who', 'bob'));
    expect((await bob.request()).session.get('who')).toBe('bob');
    const info: RequestInfo = { ...bob.info, cookieHeader: bob.cookieHeader };
    const atA = await a.manager.load(info);
    expect(atA.isNew).toBe(true);
    expect(a.store.calls).toEqual([]);
    expect(a.events.map((e) => e.type)).toEqual(['session_invalid_cookie']);
    expect((await b.manager.load(info)).get('who')).toBe('bob');
  });

  it('the pre-session cookie: its token holds on the connection, and a forged one after it is ignored', async () => {
    const { manager, store } = setup();
    const connection = {};
    const visitor = new Browser(manager);
    visitor.info = { ...visitor.info, connection };
    let token = '';
    await visitor.request((s) => {
      token = s.csrf.token();
    });
    const pre = visitor.pre!;
    await visitor.request((s) => {
      expect(s.csrf.token()).toBe(token);
      expect(s.csrf.verify(token)).toBe(true);
    });
    visitor.pre = flipAt(pre, pre.length - 5);
    const { out } = await visitor.request((s) => {
      expect(s.csrf.verify(token)).toBe(false);
      expect(s.csrf.token()).not.toBe(token);
    });
    expect(out.setCookie.map((c) => cookiePair(c).name)).toEqual(['__Host-id-pre']);
    visitor.pre = pre;
    await visitor.request((s) => expect(s.csrf.verify(token)).toBe(true));
    expect(store.ops()).toEqual([]);
  });

  it('a connection that is not an object (a JavaScript caller) is ignored, not thrown on', async () => {
    const { manager } = setup();
    const browser = new Browser(manager);
    await browser.request((s) => s.set('n', 1));
    for (const connection of ['socket-1', 7, null, true]) {
      browser.info = { ...browser.info, connection: connection as unknown as object };
      expect((await browser.request()).session.get('n')).toBe(1);
    }
  });

  it('a randomized mix of valid, tampered, foreign and absent cookies on three connections answers as without them', async () => {
    const { manager, events } = setup();
    const other = setup({ secret: SECRET_2 });
    const users: string[] = [];
    for (let i = 0; i < 4; i++) {
      const b = new Browser(manager);
      await b.request((s) => s.set('i', i));
      users.push(b.cookie!);
    }
    const foreign = new Browser(other.manager);
    await foreign.request((s) => s.set('i', 99));
    const values = [
      ...users,
      ...users.map((v) => flipAt(v, v.length - 1)),
      ...users.map((v) => flipAt(v, 10)),
      foreign.cookie!,
      undefined,
    ];
    const connections = [{}, {}, {}];
    let seed = 0x9e3779b9;
    const random = (n: number) => {
      seed = (seed * 1_103_515_245 + 12_345) >>> 0;
      return seed % n;
    };
    const outcome = async (info: RequestInfo) => {
      const before = events.length;
      const session = await manager.load(info);
      const out = await manager.commit(session, info);
      return {
        i: session.get('i'),
        isNew: session.isNew,
        events: events.slice(before).map((e) => e.type),
        cookies: out.setCookie.map((c) => cookiePair(c).name),
      };
    };
    for (let trial = 0; trial < 2_000; trial++) {
      const value = values[random(values.length)];
      // Now and then a header longer than the codec keeps per connection (4 KB).
      const extra = ['', '; theme=dark', `; pad=${'p'.repeat(5000)}`][random(3)]!;
      const cookieHeader =
        value === undefined ? (extra ? extra.slice(2) : undefined) : `__Host-id=${value}${extra}`;
      const base = {
        secure: true,
        ip: `2001:db8::${trial.toString(16)}`,
        userAgent: 'TestBrowser/1.0',
        cookieHeader,
      };
      const withConnection = await outcome({ ...base, connection: connections[random(3)] });
      const without = await outcome(base);
      expect(withConnection).toEqual(without);
    }
  });
});
