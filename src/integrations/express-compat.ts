import { IncomingMessage } from 'node:http';
import type { Request } from 'express';
import { SessionError } from '../errors.js';
import { checkKeyName } from '../serialize.js';
import { Session, stateOf } from '../session.js';

/**
 * The express-session surface of `req.session`, for middleware written against express-session
 * (Passport 0.7 first of all), mapped onto sessionflow's identity operations without weakening
 * them:
 *
 * - `regenerate(cb)`: on a signed-in session, `logout()` (the record is deleted now, so the old
 *   cookie is dead at once, and the object goes on as a new, empty session); otherwise
 *   `regenerateId()` (a guarded ID change at commit). The pre-login data is dropped by the
 *   `login()` that follows, which keeps flash messages and `keepOnLogin` keys.
 * - `save(cb)`: sessionflow commits when the response goes out, before its head, so there is
 *   nothing to write early. `save` is where Passport's state becomes the session's identity: a
 *   new `passport.user` is a `login(userId)`, a removed one a `logout()`.
 * - `destroy(cb)`: `destroy()`. `reload(cb)`: the record is read again, this request's unsaved
 *   value changes are dropped. `touch()`: nothing (the idle timer is refreshed at commit).
 * - `cookie.maxAge` / `cookie.expires`: the session's own cookie lifetime, `rememberFor()`.
 * - The plain properties (`req.session.passport`, `req.session.messages`): values of the same
 *   top-level key (`session.get('passport')`), saved on every change made through them.
 * - `req.sessionID`: `session.id`, the stable record id (not a credential, unlike
 *   express-session's; it does not change at `regenerate`).
 */
export interface ExpressSessionCompat {
  regenerate(callback: (err?: unknown) => void): void;
  regenerate(): Promise<void>;
  save(callback: (err?: unknown) => void): void;
  save(): Promise<void>;
  reload(callback: (err?: unknown) => void): void;
  reload(): Promise<void>;
  destroy(callback: (err?: unknown) => void): void;
  destroy(): Promise<void>;
  touch(): this;
  /** The session's own cookie lifetime, as express-session's `req.session.cookie`. */
  readonly cookie: CompatCookie;
  /** Passport's login state: `user` is what `serializeUser` returned. */
  passport?: { user?: unknown } | undefined;
  /** Passport's `failureMessage`/`successMessage` store. */
  messages?: string[] | undefined;
}

/** `req.session.cookie`: only the lifetime, the one part an application sets per session. */
export interface CompatCookie {
  /** Milliseconds left of the persistent cookie, or null for a browser-session cookie. Setting it is `rememberFor()`. */
  maxAge: number | null;
  /** When the persistent cookie expires, or null; `false`/`null` make it a browser-session cookie. */
  get expires(): Date | null;
  set expires(value: Date | null | false);
}

/** Options of the express-session compatibility surface (`session(manager, { expressSession })`). */
export interface ExpressCompatOptions {
  /**
   * Plain properties of `req.session`, each backed by the top-level key of the same name. They
   * cannot shadow a Session member.
   * @default ['passport', 'messages']
   */
  properties?: readonly string[];
  /** Passport's session key (its SessionManager's `key` option). @default 'passport' */
  passportKey?: string;
  /**
   * The user id for `session.login()` from what Passport's `serializeUser` stored. The default
   * takes a string or a number as is, or the `id` of an object, and refuses anything else.
   */
  userId?: (serialized: unknown) => string | number | undefined;
}

type Callback = (err?: unknown) => void;
type AnySession = Session<Record<string, unknown>>;

/** Per-request state of the surface, made on first use. */
interface CompatState {
  /** The `passport` value had a user when this request first looked at it. */
  loadedUser: boolean | undefined;
  /** Objects handed out per key: their last JSON, to tell a mutation outside the surface. */
  roots: Map<string, { root: object; json: string }>;
  views: Map<object, object>;
}

/** What the surface keeps on a session's state (`SessionState.integration`) for its request. */
interface CompatSlot {
  req: Request;
  compat: CompatState | undefined;
}

function slotOf(s: object): CompatSlot {
  return stateOf(s).integration as CompatSlot;
}

const METHODS = ['regenerate', 'save', 'reload', 'destroy', 'touch', 'cookie', 'id'];

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object';
}

/** Passport's own test: `if (su || su === 0)`. */
function hasUser(bag: unknown): boolean {
  if (!isObject(bag)) return false;
  const user = bag.user;
  return Boolean(user) || user === 0;
}

function defaultUserId(user: unknown): string | number | undefined {
  if (typeof user === 'string' || (typeof user === 'number' && Number.isFinite(user))) return user;
  if (isObject(user)) {
    const id = user.id;
    if (typeof id === 'string' || (typeof id === 'number' && Number.isFinite(id))) return id;
  }
  return undefined;
}

/** Errors go to the callback (on the next tick, so that a throwing callback is not a rejection). */
function settle(run: Promise<void>, callback: Callback | undefined): Promise<void> | undefined {
  if (typeof callback !== 'function') return run;
  run.then(
    () => process.nextTick(callback),
    (err: unknown) => process.nextTick(callback, err),
  );
  return undefined;
}

/**
 * Installs the surface on each request's session. One per `session()` middleware: the members
 * are built once, and a request that never uses the surface allocates nothing more.
 */
export function compatInstaller(
  options: ExpressCompatOptions,
  load: (req: Request) => Promise<Session<object>>,
): (req: Request, session: Session<object>) => void {
  const passportKey = options.passportKey ?? 'passport';
  const properties = [...new Set([...(options.properties ?? ['passport', 'messages']), passportKey])];
  for (const name of properties) {
    checkKeyName(name);
    if (name in Session.prototype || METHODS.includes(name) || name === '__proto__') {
      throw new SessionError(
        'INVALID_OPTION',
        `expressSession.properties: ${JSON.stringify(name)} is a member of req.session; use session.get/set for that key.`,
      );
    }
  }
  const userIdOf = options.userId ?? defaultUserId;
  const stateFor = (s: AnySession): CompatState => {
    const slot = slotOf(s);
    let c = slot.compat;
    if (!c) {
      c = { loadedUser: undefined, roots: new Map(), views: new Map() };
      slot.compat = c;
    }
    // Captured before any change made through the surface: a logout is the loss of this user.
    c.loadedUser ??= hasUser(s.get(passportKey));
    return c;
  };

  /** The value of `key`, where a change anywhere inside it is saved at once. */
  const read = (s: AnySession, key: string): unknown => {
    const c = stateFor(s);
    const value = s.get(key);
    if (!isObject(value)) {
      c.roots.delete(key);
      return value;
    }
    const json = JSON.stringify(value);
    let entry = c.roots.get(key);
    if (!entry || entry.json !== json) {
      entry = { root: value, json };
      c.roots.set(key, entry);
    }
    return view(s, c, key, entry.root);
  };

  const write = (s: AnySession, key: string, value: unknown): void => {
    const c = stateFor(s);
    if (value === undefined) {
      s.remove(key);
      c.roots.delete(key);
      return;
    }
    s.set(key, value);
    if (isObject(value)) c.roots.set(key, { root: value, json: JSON.stringify(value) });
    else c.roots.delete(key);
  };

  const view = (s: AnySession, c: CompatState, key: string, target: object): object => {
    let proxy = c.views.get(target);
    if (proxy) return proxy;
    const commit = () => {
      const entry = c.roots.get(key);
      if (entry) write(s, key, entry.root);
    };
    // A failed save (not JSON, too large) undoes the change that caused it.
    const guarded = (change: () => boolean, undo: () => void): boolean => {
      const done = change();
      try {
        commit();
      } catch (err) {
        undo();
        throw err;
      }
      return done;
    };
    proxy = new Proxy(target, {
      get(t, p, r) {
        const v = Reflect.get(t, p, r);
        return isObject(v) ? view(s, c, key, v) : v;
      },
      set(t, p, v) {
        const had = Object.hasOwn(t, p);
        const before = Reflect.get(t, p);
        return guarded(
          () => Reflect.set(t, p, v),
          () => (had ? Reflect.set(t, p, before) : Reflect.deleteProperty(t, p)),
        );
      },
      deleteProperty(t, p) {
        if (!Object.hasOwn(t, p)) return true;
        const before = Reflect.get(t, p);
        return guarded(
          () => Reflect.deleteProperty(t, p),
          () => Reflect.set(t, p, before),
        );
      },
    });
    c.views.set(target, proxy);
    return proxy;
  };

  /** Re-saves the objects handed out, for changes made to them outside the surface. */
  const flush = (s: AnySession): void => {
    const c = stateFor(s);
    for (const [key, entry] of c.roots) {
      const json = JSON.stringify(entry.root);
      if (json !== entry.json && JSON.stringify(s.get(key)) === entry.json) write(s, key, entry.root);
    }
  };

  /** Passport's state becomes the session's identity. */
  const save = async (s: AnySession): Promise<void> => {
    flush(s);
    const c = stateFor(s);
    const bag = s.get(passportKey);
    if (hasUser(bag)) {
      const user = (bag as { user: unknown }).user;
      const id = userIdOf(user);
      if (id === undefined || id === '' || (typeof id === 'number' && !Number.isFinite(id))) {
        throw new SessionError(
          'INVALID_OPTION',
          "Passport's serializeUser stored a user without an id: have it return the user's id, or pass session(manager, { expressSession: { userId: (user) => … } }).",
        );
      }
      if (s.userId === String(id)) return;
      // login() drops the pre-login values (Passport's own key with them): it is written back.
      await s.login(id);
      s.set(passportKey, bag);
      c.roots.delete(passportKey);
      c.loadedUser = true;
    } else if (c.loadedUser && s.userId !== undefined) {
      await s.logout();
      c.roots.clear();
      c.loadedUser = false;
    }
  };

  const regenerate = async (s: AnySession): Promise<void> => {
    const c = stateFor(s);
    if (s.userId !== undefined) {
      await s.logout();
      c.roots.clear();
      c.loadedUser = false;
    } else {
      await s.regenerateId();
    }
  };

  const reload = async (s: AnySession): Promise<void> => {
    const st = stateOf(s);
    const req = slotOf(s).req;
    if (st.record === null || !req) {
      throw new SessionError(
        'NOT_SUPPORTED',
        'reload(): this session is not stored yet; there is nothing to re-read.',
      );
    }
    const fresh = stateOf(await load(req));
    if (fresh.record === null || fresh.sid !== st.sid) {
      throw new SessionError('NOT_SUPPORTED', 'reload(): the session ended since this request began.');
    }
    st.record = fresh.record;
    st.changes.clear(); // this request's unsaved value changes; metadata and a pending ID change stay
    slotOf(s).compat = undefined;
  };

  const now = (s: AnySession) => stateOf(s).driver.options.now();
  const cookieMaxAge = (s: AnySession): number | null => {
    const st = stateOf(s);
    const until = st.persistUntil;
    const deadline = st.meta.deadline ?? st.record?.meta.deadline;
    const t = now(s);
    if (until !== undefined && until > t) return Math.min(until, deadline ?? until) - t;
    const global = st.driver.options.cookie.maxAge;
    return global === undefined ? null : Math.min(global, (deadline ?? t + global) - t);
  };
  class Cookie implements CompatCookie {
    readonly #s: AnySession;
    constructor(s: AnySession) {
      this.#s = s;
    }
    get maxAge(): number | null {
      return cookieMaxAge(this.#s);
    }
    set maxAge(ms: number | null) {
      this.#s.rememberFor(ms === null ? false : ms);
    }
    get expires(): Date | null {
      const ms = cookieMaxAge(this.#s);
      return ms === null ? null : new Date(now(this.#s) + ms);
    }
    set expires(at: Date | null | false) {
      this.#s.rememberFor(at instanceof Date ? at.getTime() - now(this.#s) : false);
    }
  }
  const cookieViews = new WeakMap<object, CompatCookie>();
  const cookieOf = (s: AnySession): CompatCookie => {
    let cookie = cookieViews.get(s);
    if (!cookie) {
      cookie = new Cookie(s);
      cookieViews.set(s, cookie);
    }
    return cookie;
  };

  // Shared by every request: `this` is the session (Passport calls them as methods).
  const nativeDestroy = Session.prototype.destroy;
  const descriptors: PropertyDescriptorMap = {
    regenerate: {
      configurable: true,
      value(this: AnySession, cb?: Callback) {
        return settle(regenerate(this), cb);
      },
    },
    save: {
      configurable: true,
      value(this: AnySession, cb?: Callback) {
        return settle(save(this), cb);
      },
    },
    reload: {
      configurable: true,
      value(this: AnySession, cb?: Callback) {
        return settle(reload(this), cb);
      },
    },
    destroy: {
      configurable: true,
      value(this: AnySession, cb?: Callback) {
        const run = nativeDestroy.call(this).then(() => {
          slotOf(this).compat = undefined;
        });
        return settle(run, cb);
      },
    },
    touch: {
      configurable: true,
      value(this: AnySession) {
        return this;
      },
    },
    cookie: {
      configurable: true,
      get(this: AnySession) {
        return cookieOf(this);
      },
    },
  };
  for (const key of properties) {
    descriptors[key] = {
      configurable: true,
      get(this: AnySession) {
        return read(this, key);
      },
      set(this: AnySession, value: unknown) {
        write(this, key, value);
      },
    };
  }

  // One prototype per middleware, between the session and Session.prototype: swapping the
  // prototype of a fresh session costs a tenth of defining the members on it, and every session
  // of this middleware shares one shape. `instanceof Session` and the private state are intact.
  const proto = Object.create(Session.prototype, descriptors) as object;
  return (req, session) => {
    Object.setPrototypeOf(session, proto);
    stateOf(session).integration = { req, compat: undefined } satisfies CompatSlot;
    defineSessionId(req);
  };
}

/**
 * `req.sessionID`, defined once on Express's request prototype (the one right above node's
 * IncomingMessage, shared by every app and sub-app), not on each request.
 */
const withSessionId = new WeakSet<object>();
function defineSessionId(req: Request): void {
  const first = Object.getPrototypeOf(req) as object | null;
  if (first === null || withSessionId.has(first)) return;
  withSessionId.add(first);
  let proto = first;
  for (
    let p: object | null = first;
    p !== null && p !== IncomingMessage.prototype;
    p = Object.getPrototypeOf(p)
  ) {
    proto = p;
  }
  if ('sessionID' in proto) return;
  Object.defineProperty(proto, 'sessionID', {
    configurable: true,
    get(this: Request) {
      return this.session?.id;
    },
  });
}

/**
 * `req.session` with its express-session surface typed, for code being migrated that still calls
 * `regenerate(cb)`, `save(cb)` or reads `req.session.passport`. New code uses the typed API on
 * `req.session` itself (`regenerateId()`, `login()`, `get`/`set`).
 */
export function compat(req: Request): Request['session'] & ExpressSessionCompat {
  const s = req.session as Request['session'] & Partial<ExpressSessionCompat>;
  if (typeof s?.regenerate !== 'function') {
    throw new SessionError(
      'INVALID_OPTION',
      'compat(req) needs the session() middleware, mounted before it with expressSession enabled.',
    );
  }
  return s as Request['session'] & ExpressSessionCompat;
}

declare module 'express-serve-static-core' {
  interface Request {
    /** The session's record id, `req.session.id` (express-session's name for it). Read-only. */
    sessionID: string;
  }
}
