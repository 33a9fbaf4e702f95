/**
 * Micro-benchmarks of the functions every request runs, kept beside them so that a regression
 * shows without a full load run: `npm run bench:micro` (vitest bench; ops/s, lower rme is
 * steadier). Not part of the package (excluded from the build).
 */
import { bench, describe } from 'vitest';
import { newToken, storageKey } from '../crypto/ids.js';
import { KeyRing } from '../crypto/keyring.js';
import { SessionManager } from '../manager.js';
import { resolveOptions } from '../options.js';
import { checkRecord, checkStorageKey, decodeRecord, encodeRecord } from '../stores/kit.js';
import { MemoryStore } from '../stores/memory.js';
import type { StoredSession } from '../stores/store.js';
import { CookieCodec } from './cookie-codec.js';
import { recordCodec } from './record-codec.js';

const SECRET = 'micro-bench-4f9a1c07e2d85b36-a0c9e71d4b2f8365';
const keys = new KeyRing([SECRET]);
const options = resolveOptions({ secret: SECRET, cookie: { secure: false } });
const sid = newToken();
const token = newToken();
const signed = keys.sign(options.cookie.name, `${sid}.${token}`);

describe('cookie', () => {
  const warm = new CookieCodec(keys, options);
  warm.verify(signed);
  bench('verify, value seen before (cache hit)', () => {
    warm.verify(signed);
  });
  // As a server meets it: the same value, but a new string cut from each request's header
  // (its hash not computed yet).
  const carrier = `x${signed}`;
  bench('verify, value seen before, new string (cache hit)', () => {
    warm.verify(carrier.slice(1));
  });
  // A fresh codec each time: the HMAC, shape checks and token hash of a first sight.
  bench('verify, first sight (HMAC + hash)', () => {
    new CookieCodec(keys, options).verify(signed);
  });
  const header = `theme=dark; ${options.cookie.name}=${signed}; lang=en`;
  bench('read from a Cookie header', () => {
    warm.read(header);
  });
  // A keep-alive connection: the same header text, a new string each request (as node parses it).
  const connection = {};
  const headerCarrier = `x${header}`;
  bench('read + verify, the connection sent this header before', () => {
    const h = headerCarrier.slice(1);
    const raw = warm.read(h, connection);
    if (raw !== undefined) warm.verify(raw, connection);
  });
  bench('read + verify, no connection given (the value cache)', () => {
    const raw = warm.read(headerCarrier.slice(1));
    if (raw !== undefined) warm.verify(raw);
  });
  bench('issue (sign + serialize)', () => {
    warm.issue(sid, token, Date.now() + 3_600_000, Date.now());
  });
});

describe('ids', () => {
  bench('storageKey (SHA-256 of a token)', () => {
    storageKey(token);
  });
  bench('newToken (32 random bytes)', () => {
    newToken();
  });
  // A sliced string, as the manager hands stores the record id cut from the cookie.
  const key = `${token}.${token}`.slice(0, token.length);
  bench('checkStorageKey (every store call checks its key)', () => {
    checkStorageKey('bench', key);
  });
});

const record: StoredSession = {
  meta: {
    createdAt: 1_764_000_000_000,
    deadline: 1_764_043_200_000,
    lastSeenAt: 1_764_000_100_000,
    h: storageKey(token),
    idAt: 1_764_000_000_000,
    userId: 'user-42',
    authAt: 1_764_000_000_000,
  },
  values: { k: '"hello"', cart: '{"items":[1,2,3],"total":42.5}', 'flash:notice': '["Saved"]' },
};
const text = encodeRecord(record);

describe('record', () => {
  bench('encodeRecord (the stores’ JSON form)', () => {
    encodeRecord(record);
  });
  bench('decodeRecord (parse + shape checks)', () => {
    decodeRecord(text);
  });
  bench('checkRecord (a create checks the record it is handed)', () => {
    checkRecord('bench', record);
  });
});

describe('seal', () => {
  const codec = recordCodec(keys, true);
  const json = '{"items":[1,2,3],"total":42.5}';
  const sealed = codec.encode(sid, 'cart', json);
  bench('seal a value (AES-256-GCM)', () => {
    codec.encode(sid, 'cart', json);
  });
  bench('open a value', () => {
    codec.decode(sid, 'cart', sealed);
  });
  const meta = { ...record.meta };
  meta.mac = codec.sealMeta(sid, meta);
  bench('MAC of the identity metadata', () => {
    codec.sealMeta(sid, meta);
  });
  bench('check the identity metadata', () => {
    codec.metaIntact(sid, meta);
  });
});

describe('manager, memory store (no sockets)', async () => {
  const manager = new SessionManager<{ k: string; n: number }>({
    secret: SECRET,
    cookie: { secure: false },
    store: new MemoryStore({ maxEntries: 1_000_000 }),
  });
  const visitor = { secure: false };
  const made = await manager.load(visitor);
  made.set('k', 'hello');
  const out = await manager.commit(made, visitor);
  const request = { secure: false, cookieHeader: out.setCookie[0]!.split(';')[0]! };
  let n = 0;
  bench('read: load + get + commit', async () => {
    const session = await manager.load(request);
    session.get('k');
    await manager.commit(session, request);
  });
  bench('write: load + set + commit', async () => {
    const session = await manager.load(request);
    session.set('n', ++n);
    await manager.commit(session, request);
  });
  bench('create: new visitor, set + commit', async () => {
    const session = await manager.load(visitor);
    session.set('k', 'hello');
    await manager.commit(session, visitor);
  });
  bench('anonymous: load + commit, nothing touched', async () => {
    await manager.commit(await manager.load(visitor), visitor);
  });
});
