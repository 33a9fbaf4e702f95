import { describe, expect, it } from 'vitest';
import { MemoryStore, SessionError, SessionManager, type StoredSession } from '../../src/index.js';

const secret = 'errors-test-secret-0123456789abcdefghijklmnop';

/** A real MemoryStore whose create fails the way a size-limited backend does. */
class SizeLimitedStore extends MemoryStore {
  override async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    if (JSON.stringify(record.values).length > 1000) {
      throw new SessionError('VALUE_TOO_LARGE', 'this backend keeps items under 1000 bytes');
    }
    return super.create(key, record, ttlMs);
  }
}

describe('errors from stores', () => {
  it("a store's own SessionError reaches the app unchanged, not disguised as an outage", async () => {
    const manager = new SessionManager({ secret, store: new SizeLimitedStore() });
    const session = await manager.load({ secure: true });
    session.set('big', 'x'.repeat(2000));
    await expect(manager.commit(session, { secure: true })).rejects.toMatchObject({
      code: 'VALUE_TOO_LARGE',
      status: 500,
    });
  });

  it('a driver failure becomes a 503 STORE_UNAVAILABLE that keeps the cause', async () => {
    const store = new MemoryStore();
    store.load = async () => {
      throw new Error('ECONNREFUSED 127.0.0.1:6379');
    };
    const manager = new SessionManager({ secret, store });
    const writer = new SessionManager({ secret, store: new MemoryStore() });
    const first = await writer.load({ secure: true });
    first.set('k', 1);
    const cookie = (await writer.commit(first, { secure: true })).setCookie[0]!.split(';')[0]!;
    const err = await manager.load({ secure: true, cookieHeader: cookie }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'STORE_UNAVAILABLE', status: 503 });
    expect(((err as Error).cause as Error).message).toContain('ECONNREFUSED');
  });
});

describe('key names through a session (their check is remembered per valid name)', () => {
  it('a bad name is refused on every call, before and after good ones; 3000 distinct names each keep their own value across a commit', async () => {
    const store = new MemoryStore();
    const manager = new SessionManager({ secret, store, maxSize: 1_000_000 });
    const session = await manager.load({ secure: true });
    for (const bad of ['', 'a\u0000', '\ud800']) {
      expect(() => session.get(bad as never)).toThrow(expect.objectContaining({ code: 'INVALID_KEY_NAME' }));
    }
    // More names than the remembered set holds (1024), some of them twice.
    for (let i = 0; i < 3000; i++) session.set(`k${i}` as never, i as never);
    for (const bad of ['', 'a\u0000', '\ud800']) {
      expect(() => session.set(bad as never, 1 as never)).toThrow(
        expect.objectContaining({ code: 'INVALID_KEY_NAME' }),
      );
      expect(() => session.has(bad as never)).toThrow(expect.objectContaining({ code: 'INVALID_KEY_NAME' }));
      expect(() => session.remove(bad as never)).toThrow(
        expect.objectContaining({ code: 'INVALID_KEY_NAME' }),
      );
    }
    const cookie = (await manager.commit(session, { secure: true })).setCookie[0]!.split(';')[0]!;
    const again = await manager.load({ secure: true, cookieHeader: cookie });
    for (let i = 2999; i >= 0; i--) expect(again.get(`k${i}` as never)).toBe(i);
    expect(again.has('k3000' as never)).toBe(false);
    again.remove('k7' as never);
    expect(again.get('k7' as never)).toBeUndefined();
    expect(again.keys()).toHaveLength(2999);
  });
});
