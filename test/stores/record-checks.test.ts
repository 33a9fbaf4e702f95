import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SelectedStore } from '../../src/cli/store-from-url.js';
import { newToken, storageKey } from '../../src/crypto/ids.js';
import type { SessionDelta, SessionMeta, StoredSession } from '../../src/index.js';
import { serverAvailable } from '../helpers/servers.js';
import { openReachable, storeUrlCases } from '../helpers/store-urls.js';

/**
 * Code that calls a store itself (a migration script, an admin tool, a custom integration) gets
 * no help from TypeScript once its data comes from JSON or `any`. Every store refuses, before any
 * I/O, a record or delta that a later load could not read back, with `INVALID_RECORD` and a
 * message that names the field and never a value; what was stored stays as it was.
 */
const scratch = await mkdtemp(join(tmpdir(), 'sessionflow-record-checks-'));
afterAll(() => rm(scratch, { recursive: true, force: true }));

const HOUR = 3_600_000;
/** A value no message may repeat: it stands for a secret someone put in the wrong place. */
const SECRET = 'tok_9f3e1d7c5b';

function meta(extra: Record<string, unknown> = {}): SessionMeta {
  const now = Date.now();
  return { createdAt: now, lastSeenAt: now, deadline: now + HOUR, ...extra } as SessionMeta;
}

const badRecords: Array<[what: string, record: unknown, names: string]> = [
  [
    'meta without createdAt',
    { meta: { lastSeenAt: 1, deadline: Date.now() + HOUR }, values: {} },
    'meta.createdAt',
  ],
  ['a deadline that is NaN', { meta: meta({ deadline: Number.NaN }), values: {} }, 'meta.deadline'],
  ['lastSeenAt as text', { meta: meta({ lastSeenAt: SECRET }), values: {} }, 'meta.lastSeenAt'],
  ['a numeric userId', { meta: meta({ userId: 42 }), values: {} }, 'meta.userId'],
  ['a misspelt metadata field', { meta: meta({ lastSeen: 1 }), values: {} }, 'meta.lastSeen'],
  ['a value that is not encoded', { meta: meta(), values: { 'v:a': { token: SECRET } } }, '"v:a"'],
  ['values as an array', { meta: meta(), values: [SECRET] }, 'values'],
  ['no record at all', null, 'record'],
];

const badDeltas: Array<[what: string, delta: unknown, names: string]> = [
  ['a set value that is a number', { set: { 'v:a': 7 }, unset: [] }, '"v:a"'],
  ['unset as one string', { set: {}, unset: 'v:a' }, 'delta.unset'],
  ['removing createdAt', { set: {}, unset: [], meta: { createdAt: undefined } }, 'delta.meta.createdAt'],
  [
    'an infinite deadline',
    { set: {}, unset: [], meta: { deadline: Number.POSITIVE_INFINITY } },
    'delta.meta.deadline',
  ],
  ['a handle that is not text', { set: {}, unset: [], meta: { h: 5 } }, 'delta.meta.h'],
  ['retain that is not a list', { set: {}, unset: [], retain: 'v:a' }, 'delta.retain'],
  ['no delta at all', undefined, 'delta'],
];

for (const [label, url] of storeUrlCases(scratch)) {
  const dataDir = join(scratch, label.replace(/\W/g, '-'));
  const skip = await serverAvailable(`${label} store`, async () => {
    await (await openReachable(url, { dataDir })).close();
  });

  describe.skipIf(skip)(`${label}: a malformed record or delta is refused and writes nothing`, () => {
    let opened: SelectedStore;
    beforeAll(async () => {
      opened = await openReachable(url, { dataDir });
    });
    afterAll(() => opened?.close());

    async function refused(write: Promise<unknown>, names: string): Promise<void> {
      const err = await write.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toMatchObject({ name: 'SessionError', code: 'INVALID_RECORD', status: 500, expose: false });
      const message = (err as Error).message;
      expect(message).toContain(names);
      expect(message).not.toContain(SECRET);
    }

    it.each(badRecords)(
      'create with %s: INVALID_RECORD, and the key stays free',
      async (_what, record, names) => {
        const k = storageKey(newToken());
        await refused(opened.store.create(k, record as StoredSession, HOUR), names);
        expect(await opened.store.load(k)).toBeNull();
        // The key was not taken: a well-formed create still gets it.
        expect(await opened.store.create(k, { meta: meta(), values: { 'v:a': '"1"' } }, HOUR)).toBe(true);
        await opened.store.destroy(k);
      },
    );

    it.each(badDeltas)(
      'commit with %s: INVALID_RECORD, and the record is unchanged',
      async (_what, delta, names) => {
        const k = storageKey(newToken());
        const record = { meta: meta({ userId: 'u-1', h: 'h0' }), values: { 'v:a': '"1"', 'v:b': '"2"' } };
        expect(await opened.store.create(k, record, HOUR)).toBe(true);
        await refused(opened.store.commit(k, delta as SessionDelta, HOUR), names);
        const loaded = await opened.store.load(k);
        expect(loaded?.meta).toEqual(record.meta);
        expect({ ...loaded?.values }).toEqual(record.values);
        await opened.store.destroy(k);
      },
    );

    it('touch with metadata a load could not read: INVALID_RECORD, and the record is unchanged', async () => {
      const k = storageKey(newToken());
      const record = { meta: meta(), values: { 'v:a': '"1"' } };
      expect(await opened.store.create(k, record, HOUR)).toBe(true);
      // Every built-in store has touch.
      await refused(
        opened.store.touch!(k, { lastSeenAt: SECRET as unknown as number }, HOUR),
        'delta.meta.lastSeenAt',
      );
      expect((await opened.store.load(k))?.meta).toEqual(record.meta);
      await opened.store.destroy(k);
    });

    it('what the manager writes still passes: optional fields removed, every metadata field set', async () => {
      const k = storageKey(newToken());
      const now = Date.now();
      const full = meta({
        authAt: now,
        userId: 'u-1',
        ua: 'ua1',
        ip: '127.0.0',
        h: 'h1',
        ph: 'h0',
        phUntil: now + 1000,
        idAt: now,
        persistUntil: now + HOUR,
        mac: 'm1',
      });
      expect(await opened.store.create(k, { meta: full, values: {} }, HOUR)).toBe(true);
      const logout = {
        userId: undefined,
        authAt: undefined,
        ph: undefined,
        phUntil: undefined,
        lastSeenAt: now + 1,
      };
      expect(
        await opened.store.commit(k, { set: { 'v:x': '"y"' }, unset: [], meta: logout, retain: [] }, HOUR),
      ).toBe('ok');
      const loaded = await opened.store.load(k);
      expect(loaded?.meta.userId).toBeUndefined();
      expect(loaded?.meta.lastSeenAt).toBe(now + 1);
      expect({ ...loaded?.values }).toEqual({ 'v:x': '"y"' });
      await opened.store.destroy(k);
    });
  });
}
