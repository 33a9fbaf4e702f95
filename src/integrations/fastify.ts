import type { FastifyInstance, FastifyReply, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { CsrfPolicy } from '../features/csrf.js';
import type { RequestInfo, SessionManager } from '../manager.js';
import { type MountableSessionData, type Session, stateOf } from '../session.js';
import { csrfGuard, resolveRequest, writeSessionHeaders } from './headers.js';
import { nodeRequestFacts } from './http.js';

export { CsrfError, type CsrfRefusal } from '../features/csrf.js';

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * The request's session, set by sessionflow's Fastify plugin. Its data type is the app's
     * `SessionData` (declare your keys with `declare module 'sessionflow'`).
     */
    session: Session;
  }
}

type AnyManager = SessionManager<object>;
type HookDone = (err?: Error) => void;
type PayloadDone = (err: Error | null, payload?: unknown) => void;

const INFO = Symbol('sessionflow.requestInfo');
const COMMITTED = Symbol('sessionflow.committed');

interface Tracked {
  [INFO]?: RequestInfo;
  [COMMITTED]?: boolean;
}

/**
 * Whether the app gave Fastify a `trustProxy` setting: Fastify then builds its request class
 * with `ip` and `protocol` getters of its own (resolved through `proxy-addr`), above the base
 * class's. Encapsulated plugins derive their request class from it, so the whole chain is read.
 */
function fastifyTrustsProxies(request: FastifyRequest): boolean {
  const first = Object.getPrototypeOf(request) as object;
  let trusts = trustByClass.get(first);
  if (trusts === undefined) {
    let owners = 0;
    for (let p: object | null = first; p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
      if (Object.hasOwn(p, 'ip')) owners++;
    }
    trusts = owners >= 2;
    trustByClass.set(first, trusts);
  }
  return trusts;
}
/** The answer of `fastifyTrustsProxies` per request class (fixed once the app is built). */
const trustByClass = new WeakMap<object, boolean>();

/**
 * Facts about a Fastify request: with Fastify's `trustProxy` set, Fastify's own `request.ip`
 * and `request.protocol`, so the session sees the client the app sees; otherwise sessionflow's
 * `trustProxy` over the raw request, as for node:http.
 */
export function fastifyRequestInfo(manager: SessionManager<object>, request: FastifyRequest): RequestInfo {
  const framework = fastifyTrustsProxies(request)
    ? { secure: request.protocol === 'https', ip: request.ip }
    : undefined;
  return resolveRequest(manager, nodeRequestFacts(request.raw, framework));
}

/**
 * Fastify plugin: `request.session` is the request's Session, loaded in `onRequest` and
 * committed in `onSend`, before the head goes out, so a redirect after login never races the
 * store. A store outage reaches Fastify's error handler as a SessionError with statusCode 503.
 * `request.session` has the app's `SessionData` type; once that declares keys, the manager's
 * data type must have them too (a `SessionManager` without a type argument has).
 *
 * @example
 * await app.register(sessionPlugin(sessions));
 * app.get('/', async (req) => ({ visits: req.session.get('visits') ?? 0 }));
 */
export function sessionPlugin<D extends MountableSessionData>(manager: SessionManager<D>) {
  const m: AnyManager = manager;
  async function plugin(app: FastifyInstance): Promise<void> {
    app.decorateRequest('session', null as unknown as Session);
    // Declared, so every request object keeps one shape (Fastify's advice for per-request state).
    app.decorateRequest(INFO as unknown as string, undefined);
    app.decorateRequest(COMMITTED as unknown as string, false);
    // Callback-style hooks: Fastify runs them without a promise of its own per hook.
    app.addHook('onRequest', (request: FastifyRequest, _reply: FastifyReply, done: HookDone) => {
      const info = fastifyRequestInfo(m, request);
      (request as unknown as Tracked)[INFO] = info;
      m.load(info).then((s) => {
        request.session = s as Session;
        done();
      }, done);
    });
    app.addHook(
      'onSend',
      (request: FastifyRequest, reply: FastifyReply, payload: unknown, done: PayloadDone) => {
        const tracked = request as unknown as Tracked;
        const info = tracked[INFO];
        const session = request.session;
        // Once per request: an error raised here is rendered through onSend again.
        if (!session || !info || tracked[COMMITTED]) {
          done(null, payload);
          return;
        }
        tracked[COMMITTED] = true;
        const state = stateOf(session);
        state.responseStarted = true;
        // A stored session with nothing to commit (no change, no touch or renewal due): no store
        // call, only the header its commit would have set (as the node:http integration does).
        if (!session.isNew && state.quiet(m.options.now())) {
          if (!reply.hasHeader('cache-control')) reply.header('Cache-Control', 'no-store');
          done(null, payload);
          return;
        }
        m.commit(session, info).then((out) => {
          try {
            // Fastify's reply.header() appends to set-cookie and replaces any other header.
            writeSessionHeaders(
              {
                append: (name, value) => reply.header(name, value),
                set: (name, value) => reply.header(name, value),
                has: (name) => reply.hasHeader(name),
              },
              out,
              session,
              info,
            );
          } catch (err) {
            done(err as Error);
            return;
          }
          done(null, payload);
        }, done);
      },
    );
  }
  // Registered without encapsulation, so the hooks and `request.session` apply to the whole app
  // (what the fastify-plugin helper does, without the dependency).
  Object.assign(plugin, {
    [Symbol.for('skip-override')]: true,
    [Symbol.for('fastify.display-name')]: 'sessionflow',
  });
  return plugin;
}

/**
 * A `preHandler` that refuses unsafe requests without the session's CSRF token with a 403
 * {@link CsrfError} whose `reason` says which check failed, with the same Fetch Metadata and
 * Origin checks as the Express middleware.
 */
export function csrfPreHandler<D extends object>(
  manager: SessionManager<D>,
  options: CsrfPolicy & { origin?: string | string[] } = {},
): preHandlerHookHandler {
  const m: AnyManager = manager;
  return function sessionflowCsrf(request, _reply, done) {
    const info = (request as unknown as Tracked)[INFO] ?? fastifyRequestInfo(m, request);
    const refused = csrfGuard(m, request.session, request, info, options);
    if (refused) done(refused);
    else done();
  };
}
