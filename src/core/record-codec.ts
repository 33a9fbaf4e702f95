import type { KeyRing } from '../crypto/keyring.js';
import type { SessionMeta } from '../stores/store.js';

/**
 * How values and metadata look in the store. Values are encoded one field at a time (JSON; with
 * `encrypt: true`, AES-256-GCM with the record id and field name as associated data), so every
 * store can merge a change set natively. With encryption on, the identity metadata (who, when
 * authenticated, deadlines, handles, binding tags) is authenticated too, by a MAC bound to the
 * record id: a store writer cannot change the user or extend the deadline undetected.
 */
export interface RecordCodec {
  encode(sid: string, field: string, json: string): string;
  encodedSize(json: string): number;
  decode(sid: string, field: string, stored: string): string | null;
  /** The MAC to store in `meta.mac`, or undefined when encryption is off. */
  sealMeta(sid: string, meta: SessionMeta): string | undefined;
  /** True if the stored metadata is authentic (always, with encryption off). */
  metaIntact(sid: string, meta: SessionMeta): boolean;
}

/** The metadata fields covered by the MAC: everything but `lastSeenAt` (see docs/security.md). */
const IDENTITY: readonly (keyof SessionMeta)[] = [
  'createdAt',
  'deadline',
  'authAt',
  'userId',
  'ua',
  'ip',
  'h',
  'ph',
  'phUntil',
  'idAt',
  'persistUntil',
];

function identity(sid: string, meta: SessionMeta): string {
  return `${sid}\0${JSON.stringify(IDENTITY.map((k) => meta[k] ?? null))}`;
}

export function recordCodec(keys: KeyRing, encrypt: boolean): RecordCodec {
  if (!encrypt) {
    return {
      encode: (_s, _f, json) => json,
      encodedSize: (json) => Buffer.byteLength(json),
      decode: (_s, _f, stored) => stored,
      sealMeta: () => undefined,
      metaIntact: () => true,
    };
  }
  return {
    encode: (sid, field, json) => keys.seal(json, `${sid}\0${field}`),
    encodedSize: (json) => keys.sealedLength(Buffer.byteLength(json)),
    decode: (sid, field, stored) => keys.open(stored, `${sid}\0${field}`),
    sealMeta(sid, meta) {
      const signed = keys.sign('meta', identity(sid, meta));
      return signed.slice(signed.lastIndexOf('.') + 1);
    },
    metaIntact(sid, meta) {
      if (typeof meta.mac !== 'string') return false;
      return keys.verify('meta', `${identity(sid, meta)}.${meta.mac}`) !== null;
    },
  };
}
