/** The standard flash types, as in Phalcon's flashSession. */
export type FlashType = 'success' | 'error' | 'notice' | 'warning';
/**
 * Messages grouped by type. Objects of this type that Flash returns have a null prototype, so a
 * type named `constructor` or `toString` is just a type like any other.
 */
export type FlashMessages = Partial<Record<string, string[]>>;

/** The subset of Session that flash needs: one internal value, read and written as JSON. */
export interface FlashHost {
  readInternal(name: string): unknown;
  writeInternal(name: string, value: unknown): void;
}

const FIELD = 'flash';
const TYPE_NAME = /^[a-z][a-z0-9_-]{0,31}$/;

function escapeHtml(text: string): string {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

/**
 * One-shot messages kept in the session until they are read: set before a redirect, shown on
 * the next page, then gone. Reading (`messages`, `output`) removes what it returns.
 */
export class Flash {
  readonly #host: FlashHost;

  constructor(host: FlashHost) {
    this.#host = host;
  }

  /**
   * The stored messages as a fresh null-prototype object holding only own, array-valued entries:
   * a lookup such as `all.constructor` or `all.__proto__` never reaches Object.prototype.
   */
  #all(): FlashMessages {
    const all: FlashMessages = Object.create(null);
    const stored = this.#host.readInternal(FIELD);
    if (!stored || typeof stored !== 'object' || Array.isArray(stored)) return all;
    for (const type of Object.keys(stored)) {
      const list = (stored as Record<string, unknown>)[type];
      if (Array.isArray(list)) all[type] = list.filter((m): m is string => typeof m === 'string');
    }
    return all;
  }

  /** Queues a message of any type name (lowercase letters, digits, '-' and '_'). */
  message(type: string, text: string): void {
    if (!TYPE_NAME.test(type))
      throw new TypeError(`flash type ${JSON.stringify(type)} must match ${TYPE_NAME}`);
    const all = this.#all();
    all[type] = [...(Object.hasOwn(all, type) ? all[type]! : []), String(text)];
    this.#host.writeInternal(FIELD, all);
  }

  success(text: string): void {
    this.message('success', text);
  }
  error(text: string): void {
    this.message('error', text);
  }
  notice(text: string): void {
    this.message('notice', text);
  }
  warning(text: string): void {
    this.message('warning', text);
  }

  /** True if messages (of `type`, or of any type) are waiting. Does not consume them. */
  has(type?: string): boolean {
    const all = this.#all();
    return type === undefined
      ? Object.values(all).some((m) => (m?.length ?? 0) > 0)
      : Object.hasOwn(all, type) && (all[type]?.length ?? 0) > 0;
  }

  /** Returns the waiting messages without consuming them. */
  peek(type?: string): FlashMessages {
    const all = this.#all();
    if (type === undefined) return all;
    const one: FlashMessages = Object.create(null);
    one[type] = Object.hasOwn(all, type) ? all[type]! : [];
    return one;
  }

  /** Returns and consumes the messages of `type`. */
  messages(type: string): string[];
  /** Returns and consumes every waiting message, grouped by type. */
  messages(): FlashMessages;
  messages(type?: string): string[] | FlashMessages {
    const all = this.#all();
    if (type === undefined) {
      if (Object.keys(all).length > 0) this.#host.writeInternal(FIELD, undefined);
      return all;
    }
    const list = Object.hasOwn(all, type) ? all[type]! : [];
    if (list.length > 0) {
      delete all[type];
      this.#host.writeInternal(FIELD, Object.keys(all).length > 0 ? all : undefined);
    }
    return list;
  }

  /** Drops every waiting message. */
  clear(): void {
    if (Object.keys(this.#all()).length > 0) this.#host.writeInternal(FIELD, undefined);
  }

  /**
   * Consumes every message and renders it as HTML, escaped:
   * `<div class="flash flash-success" role="status">…</div>` one per message.
   */
  output(): string {
    const all = this.messages();
    let html = '';
    for (const [type, list] of Object.entries(all)) {
      for (const text of list ?? []) {
        const role = type === 'error' || type === 'warning' ? 'alert' : 'status';
        html += `<div class="flash flash-${escapeHtml(type)}" role="${role}">${escapeHtml(text)}</div>\n`;
      }
    }
    return html;
  }
}

export { escapeHtml };
