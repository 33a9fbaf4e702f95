import { readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { auditTag } from '../../src/crypto/ids.js';
import { KeyRing } from '../../src/crypto/keyring.js';
import { FileStore } from '../../src/index.js';
import { Browser, HOUR, SECRET, SECRET_2, setup, tempDir } from '../helpers/session-kit.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

describe('encryption at rest (encrypt: true)', () => {
  it('stores no plaintext, and values round-trip (top level, bags, flash, CSRF)', async () => {
    const { manager, store } = setup({ encrypt: true });
    const browser = new Browser(manager);
    let token = '';
    await browser.request((s) => {
      s.set('email', 'alice@example.org');
      s.bag('auth').set('role', 'administrator');
      s.flash.success('Welcome back, Alice');
      token = s.csrf.token();
    });
    const stored = (await store.inner.load(browser.key))!;
    const text = JSON.stringify(stored.values);
    for (const secret of ['alice', 'administrator', 'Welcome', token]) expect(text).not.toContain(secret);
    for (const value of Object.values(stored.values)) expect(value).toMatch(/^a1\./);
    await browser.request((s) => {
      expect(s.get('email')).toBe('alice@example.org');
      expect(s.bag('auth').get('role')).toBe('administrator');
      expect(s.flash.messages('success')).toEqual(['Welcome back, Alice']);
      expect(s.csrf.verify(token)).toBe(true);
    });
  });

  it('SM-53 (at rest): a sealed value moved to another field does not open: undefined plus a store_corrupt event', async () => {
    const { manager, store, events } = setup({ encrypt: true });
    const browser = new Browser(manager);
    await browser.request((s) => s.set('role', 'admin').set('nickname', 'al'));
    const key = browser.key;
    const raw = (await store.inner.load(key))!.values['v:role']!;
    // An attacker with write access to the store copies the sealed 'role' over 'nickname'.
    expect(await store.inner.commit(key, { set: { 'v:nickname': raw }, unset: [] }, HOUR)).toBe('ok');
    await browser.request((s) => {
      expect(s.get('role')).toBe('admin');
      expect(s.get('nickname')).toBeUndefined();
      expect(s.has('nickname')).toBe(false);
    });
    expect(events.at(-1)).toMatchObject({
      type: 'store_corrupt',
      reason: 'undecryptable value',
      sid: auditTag(key),
    });
  });

  it('SM-53 (at rest): a sealed value copied into another session (FileStore, edited on disk) does not open', async () => {
    const { dir, cleanup } = await tempDir();
    cleanups.push(cleanup);
    const { manager, events } = setup({ encrypt: true, store: new FileStore({ dir, fsync: false }) });
    const admin = new Browser(manager);
    const user = new Browser(manager);
    await admin.request((s) => s.set('role', 'admin'));
    await user.request((s) => s.set('role', 'user'));
    const read = async (b: Browser) => JSON.parse(await readFile(join(dir, `${b.key}.json`), 'utf8'));
    const adminFile = await read(admin);
    const userFile = await read(user);
    userFile.values['v:role'] = adminFile.values['v:role'];
    const file = join(dir, `${user.key}.json`);
    const { atime, mtime } = await stat(file); // the file store keeps the expiry in the mtime
    await writeFile(file, JSON.stringify(userFile));
    await utimes(file, atime, mtime);
    await user.request((s) => expect(s.get('role')).toBeUndefined());
    expect(events.filter((e) => e.type === 'store_corrupt')).toHaveLength(1);
    await admin.request((s) => expect(s.get('role')).toBe('admin'));
  });

  it('without encryption the same copy would have worked (the test above is not vacuous)', async () => {
    const { manager, store } = setup({ encrypt: false });
    const browser = new Browser(manager);
    await browser.request((s) => s.set('role', 'admin').set('nickname', 'al'));
    const key = browser.key;
    const raw = (await store.inner.load(key))!.values['v:role']!;
    await store.inner.commit(key, { set: { 'v:nickname': raw }, unset: [] }, HOUR);
    await browser.request((s) => expect(s.get('nickname')).toBe('admin'));
  });

  it('regenerateId keeps the record id, so sealed values stay bound to it and still open', async () => {
    const { manager, store } = setup({ encrypt: true });
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 'one').bag('b').set('c', 'two'));
    const key = browser.key;
    const cookie = browser.cookie;
    await browser.request((s) => s.regenerateId());
    expect(browser.cookie).not.toBe(cookie);
    expect(browser.key).toBe(key);
    const raw = (await store.inner.load(key))!.values['v:a']!;
    expect(new KeyRing([SECRET]).open(raw, `${key}\0v:a`)).toBe('"one"');
    await browser.request((s) => expect([s.get('a'), s.bag('b').get('c')]).toEqual(['one', 'two']));
  });

  it('the identity metadata is authenticated: a store writer cannot change the user or extend the deadline', async () => {
    const { manager, store, events, clock } = setup({ encrypt: true });
    const victim = new Browser(manager);
    await victim.request((s) => s.login('alice'));
    const key = victim.key;
    const tamper = async (meta: Record<string, unknown>) => {
      expect(await store.inner.commit(key, { set: {}, unset: [], meta }, HOUR)).toBe('ok');
    };
    await tamper({ userId: 'admin' });
    const { session } = await victim.request();
    expect(session.isNew).toBe(true);
    expect(session.userId).toBeUndefined();
    expect(events.at(-2)).toMatchObject({ type: 'store_corrupt', reason: 'metadata does not verify' });

    const other = new Browser(manager);
    await other.request((s) => s.login('bob'));
    const original = (await store.inner.load(other.key))!.meta;
    expect(
      await store.inner.commit(
        other.key,
        { set: {}, unset: [], meta: { deadline: original.deadline + 10 * HOUR } },
        HOUR,
      ),
    ).toBe('ok');
    clock.advance(1);
    expect((await other.request()).session.isNew).toBe(true);
  });

  it('the metadata MAC is bound to the record: metadata copied from another session does not verify', async () => {
    const { manager, store } = setup({ encrypt: true });
    const alice = new Browser(manager);
    const mallory = new Browser(manager);
    await alice.request((s) => s.login('alice'));
    await mallory.request((s) => s.login('mallory'));
    const aliceMeta = (await store.inner.load(alice.key))!.meta;
    const { h, ph, mac, userId } = aliceMeta;
    const mine = (await store.inner.load(mallory.key))!.meta;
    // Mallory, with write access to the store, gives her record alice's identity but keeps her own handle.
    await store.inner.commit(
      mallory.key,
      { set: {}, unset: [], meta: { ...aliceMeta, h: mine.h, ph, mac, userId } },
      HOUR,
    );
    expect((await mallory.request()).session.userId).toBeUndefined();
    expect(h).not.toBe(mine.h);
  });

  it('key rotation: values sealed under K1 open under [K2, K1]; new writes are sealed under K2', async () => {
    const first = setup({ encrypt: true, secret: SECRET });
    const browser = new Browser(first.manager);
    await browser.request((s) => s.set('old', 'sealed-with-k1'));
    const rotated = setup(
      { encrypt: true, secret: undefined, secrets: [SECRET_2, SECRET], store: first.store.inner },
      first.clock,
    );
    browser.manager = rotated.manager;
    await browser.request((s) => {
      expect(s.get('old')).toBe('sealed-with-k1');
      s.set('new', 'sealed-with-k2');
    });
    const key = browser.key;
    const raw = (await first.store.inner.load(key))!.values['v:new']!;
    expect(new KeyRing([SECRET_2]).open(raw, `${key}\0v:new`)).toBe('"sealed-with-k2"');
    expect(new KeyRing([SECRET]).open(raw, `${key}\0v:new`)).toBeNull();
  });

  it('maxSize counts the sealed size: what one request may write never blocks the next one', async () => {
    const { manager } = setup({ encrypt: true, maxSize: 1000 });
    const browser = new Browser(manager);
    await browser.request((s) => {
      // 800 characters of JSON are under 1000 bytes, but over 1000 once sealed and base64url-encoded.
      expect(() => s.set('big', 'x'.repeat(800))).toThrow(
        expect.objectContaining({ code: 'VALUE_TOO_LARGE' }),
      );
      s.set('fits', 'x'.repeat(600));
    });
    await browser.request((s) => {
      s.set('fits', 'y'.repeat(600));
      s.set('small', 1);
    });
    await browser.request((s) => expect(s.get('small')).toBe(1));
  });

  it('SM-53 (at rest): a tampered ciphertext reads as absent and never throws, before and after an ID change', async () => {
    const { manager, store } = setup({ encrypt: true });
    const browser = new Browser(manager);
    await browser.request((s) => s.set('a', 'x').set('b', 'y'));
    const key = browser.key;
    const raw = (await store.inner.load(key))!.values['v:a']!;
    const flipped = raw.slice(0, -3) + (raw.at(-3) === 'A' ? 'B' : 'A') + raw.slice(-2);
    await store.inner.commit(key, { set: { 'v:a': flipped }, unset: [] }, HOUR);
    await browser.request(async (s) => {
      expect(s.get('a')).toBeUndefined();
      await s.regenerateId();
    });
    await browser.request((s) => expect([s.get('a'), s.get('b')]).toEqual([undefined, 'y']));
  });
});
