import { describe, expect, it } from 'vitest';
import { MemoryStore, SessionManager } from '../../src/index.js';

const secret = 'reauth-test-secret-0123456789abcdefghijklmnop';

describe('SM-39: recent authentication for sensitive changes', () => {
  it('isRecentlyAuthenticated follows login and reauthenticate; requireRecentAuth throws 401 REAUTH_REQUIRED', async () => {
    let now = Date.UTC(2026, 0, 1);
    const store = new MemoryStore({ now: () => now });
    const manager = new SessionManager({ secret, store, now: () => now });
    const req = { secure: true };
    const anonymous = await manager.load(req);
    expect(anonymous.isRecentlyAuthenticated(60_000)).toBe(false);
    expect(() => anonymous.requireRecentAuth(60_000)).toThrow(
      expect.objectContaining({ code: 'REAUTH_REQUIRED', status: 401 }),
    );

    await anonymous.login('u1');
    const cookie = (await manager.commit(anonymous, req)).setCookie[0]!.split(';')[0]!;
    now += 2 * 60_000;
    let session = await manager.load({ ...req, cookieHeader: cookie });
    expect(session.isRecentlyAuthenticated(5 * 60_000)).toBe(true);
    expect(session.isRecentlyAuthenticated(60_000)).toBe(false);
    expect(() => session.requireRecentAuth(60_000)).toThrow(/confirm your password/);

    await session.reauthenticate();
    expect(session.isRecentlyAuthenticated(1)).toBe(true);
    const renewed = (await manager.commit(session, req)).setCookie[0]!.split(';')[0]!;
    session = await manager.load({ ...req, cookieHeader: renewed });
    expect(() => session.requireRecentAuth(60_000)).not.toThrow();
  });
});
