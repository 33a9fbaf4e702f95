import { auditTag } from '../crypto/ids.js';
import type { AuditEvent, AuditEventType, ClientInfo } from '../features/audit.js';

/** One audit event as the manager describes it; every field but `type` is optional. */
export interface EventInput {
  type: AuditEventType;
  client?: ClientInfo | undefined;
  /** Record id of the session concerned (logged only as a one-way tag). */
  sid?: string | null | undefined;
  userId?: string | undefined;
  reason?: string | undefined;
}

/** Turns event descriptions into audit records and hands them to the app's sink. */
export class AuditEmitter {
  readonly #sink: ((event: AuditEvent) => void) | undefined;
  readonly #warn: (message: string) => void;
  readonly #now: () => number;

  constructor(
    sink: ((event: AuditEvent) => void) | undefined,
    warn: (message: string) => void,
    now: () => number,
  ) {
    this.#sink = sink;
    this.#warn = warn;
    this.#now = now;
  }

  emit(input: EventInput): void {
    const sink = this.#sink;
    if (!sink) return;
    const event: AuditEvent = { type: input.type, time: new Date(this.#now()).toISOString() };
    if (input.sid) event.sid = auditTag(input.sid);
    if (input.userId !== undefined) event.userId = input.userId;
    if (input.client?.ip) event.ip = input.client.ip;
    if (input.client?.userAgent) event.userAgent = input.client.userAgent;
    if (input.reason) event.reason = input.reason;
    try {
      sink(event);
    } catch (err) {
      this.#warn(`audit sink threw: ${(err as Error).message}`);
    }
  }
}
