import type {
  CommitGuard,
  CommitResult,
  SessionDelta,
  SessionMeta,
  SessionStore,
  SessionSummary,
  StoredSession,
} from '../../src/index.js';

type Operation = 'load' | 'create' | 'commit' | 'touch' | 'destroy' | 'sessionsOf';

/**
 * Wraps a real store to observe and disturb it from a test: counts calls, adds latency, fails
 * chosen operations (a store outage), and can hold one `load` after it has read the record (to
 * line up a race deterministically, without sleeps).
 */
export class InstrumentedStore implements SessionStore {
  readonly inner: SessionStore;
  readonly capabilities: SessionStore['capabilities'];
  readonly calls: Record<Operation, number> = {
    load: 0,
    create: 0,
    commit: 0,
    touch: 0,
    destroy: 0,
    sessionsOf: 0,
  };
  /** Added before every operation. */
  latencyMs = 0;
  /** Operations that throw, as a driver would when its server is down. */
  readonly failing = new Set<Operation>();
  #hold: { loaded: () => void; gate: Promise<void> } | undefined;

  /** Present when the inner store has it (stores that revoke without listing). */
  revokeUser?: (userId: string, except?: string) => Promise<void>;

  constructor(inner: SessionStore) {
    this.inner = inner;
    this.capabilities = inner.capabilities;
    const revokeUser = inner.revokeUser?.bind(inner);
    if (revokeUser) this.revokeUser = revokeUser;
  }

  resetCounts(): void {
    for (const k of Object.keys(this.calls) as Operation[]) this.calls[k] = 0;
  }

  /**
   * Holds the next `load` after the record has been read. `loaded` resolves when that read has
   * happened; the request continues when `release()` is called.
   */
  holdNextLoad(): { loaded: Promise<void>; release: () => void } {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let loaded!: () => void;
    const done = new Promise<void>((r) => {
      loaded = r;
    });
    this.#hold = { loaded, gate };
    return { loaded: done, release };
  }

  async #enter(op: Operation): Promise<void> {
    this.calls[op]++;
    if (this.latencyMs > 0) await new Promise((r) => setTimeout(r, this.latencyMs));
    if (this.failing.has(op)) {
      throw Object.assign(new Error(`injected ${op} failure`), { code: 'ECONNREFUSED' });
    }
  }

  async load(key: string): Promise<StoredSession | null> {
    await this.#enter('load');
    const record = await this.inner.load(key);
    const hold = this.#hold;
    if (hold) {
      this.#hold = undefined;
      hold.loaded();
      await hold.gate;
    }
    return record;
  }

  async create(key: string, record: StoredSession, ttlMs: number): Promise<boolean> {
    await this.#enter('create');
    return this.inner.create(key, record, ttlMs);
  }

  async commit(key: string, delta: SessionDelta, ttlMs: number, guard?: CommitGuard): Promise<CommitResult> {
    await this.#enter('commit');
    return this.inner.commit(key, delta, ttlMs, guard);
  }

  async touch(key: string, meta: Partial<SessionMeta>, ttlMs: number): Promise<'ok' | 'gone'> {
    await this.#enter('touch');
    if (this.inner.touch) return this.inner.touch(key, meta, ttlMs);
    return (await this.inner.commit(key, { set: {}, unset: [], meta }, ttlMs)) === 'ok' ? 'ok' : 'gone';
  }

  async destroy(key: string): Promise<void> {
    await this.#enter('destroy');
    return this.inner.destroy(key);
  }

  async sessionsOf(userId: string): Promise<SessionSummary[]> {
    await this.#enter('sessionsOf');
    if (!this.inner.sessionsOf) return [];
    return this.inner.sessionsOf(userId);
  }

  async gc(now?: number): Promise<number> {
    return this.inner.gc ? this.inner.gc(now) : 0;
  }

  async close(): Promise<void> {
    await this.inner.close?.();
  }
}
