/** The field-level operations a bag needs from its session. */
export interface BagHost {
  getField(field: string): unknown;
  setField(field: string, value: unknown): void;
  hasField(field: string): boolean;
  removeField(field: string): void;
  fieldsWithPrefix(prefix: string): string[];
}

const BAG_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/** Checks a bag name; bag names cannot contain ':' so bags never overlap each other. */
export function bagPrefix(name: string): string {
  if (!BAG_NAME.test(name)) throw new TypeError(`bag name ${JSON.stringify(name)} must match ${BAG_NAME}`);
  return `b:${name}:`;
}

/**
 * A namespaced view of a session (Phalcon's Session\Bag): its keys live apart from top-level
 * keys, from other bags and from internal metadata, so `bag('auth').set('id', …)` can never
 * overwrite the session's own id or expiry.
 */
export class SessionBag<T extends Record<string, unknown> = Record<string, unknown>> {
  readonly name: string;
  readonly #host: BagHost;
  readonly #prefix: string;

  constructor(host: BagHost, name: string) {
    this.#prefix = bagPrefix(name);
    this.name = name;
    this.#host = host;
  }

  get<K extends keyof T & string>(key: K): T[K] | undefined;
  get<K extends keyof T & string>(key: K, fallback: T[K]): T[K];
  get(key: string, fallback?: unknown): unknown {
    const value = this.#host.getField(this.#prefix + key);
    return value === undefined ? fallback : value;
  }

  set<K extends keyof T & string>(key: K, value: T[K]): this {
    this.#host.setField(this.#prefix + key, value);
    return this;
  }

  has(key: keyof T & string): boolean {
    return this.#host.hasField(this.#prefix + key);
  }

  remove(key: keyof T & string): void {
    this.#host.removeField(this.#prefix + key);
  }

  /** Every key of this bag. */
  keys(): string[] {
    return this.#host.fieldsWithPrefix(this.#prefix).map((f) => f.slice(this.#prefix.length));
  }

  /** A plain object (null prototype) with every key and value of this bag. */
  all(): Partial<T> {
    const out: Record<string, unknown> = Object.create(null);
    for (const key of this.keys()) out[key] = this.#host.getField(this.#prefix + key);
    return out as Partial<T>;
  }

  /** Removes every key of this bag, and nothing else. */
  clear(): void {
    for (const field of this.#host.fieldsWithPrefix(this.#prefix)) this.#host.removeField(field);
  }
}
