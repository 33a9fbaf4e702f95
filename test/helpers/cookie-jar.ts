/**
 * A small cookie jar and fetch client for black-box HTTP tests: cookies from `Set-Cookie` are
 * kept per name (expired ones dropped), sent back on the next request, redirects are never
 * followed (`redirect: 'manual'`), and every response is recorded so a test can scan them all.
 */

/** One parsed `Set-Cookie` header. Attribute names are lower-case. */
export interface SetCookie {
  name: string;
  value: string;
  attributes: Map<string, string>;
  raw: string;
}

export function parseSetCookie(raw: string): SetCookie {
  const [pair = '', ...attrs] = raw.split(';');
  const eq = pair.indexOf('=');
  const attributes = new Map<string, string>();
  for (const attr of attrs) {
    const i = attr.indexOf('=');
    const key = (i === -1 ? attr : attr.slice(0, i)).trim().toLowerCase();
    if (key) attributes.set(key, i === -1 ? '' : attr.slice(i + 1).trim());
  }
  return { name: pair.slice(0, eq).trim(), value: pair.slice(eq + 1).trim(), attributes, raw };
}

/** True if the Set-Cookie deletes the cookie (Max-Age <= 0 or an Expires in the past). */
export function isClearing(cookie: SetCookie): boolean {
  const maxAge = cookie.attributes.get('max-age');
  if (maxAge !== undefined && Number(maxAge) <= 0) return true;
  const expires = cookie.attributes.get('expires');
  return expires !== undefined && Date.parse(expires) <= Date.now();
}

export class CookieJar {
  readonly #cookies = new Map<string, string>();

  /** Applies the response's Set-Cookie headers, as a browser would for one host. */
  update(setCookies: readonly string[]): void {
    for (const raw of setCookies) {
      const c = parseSetCookie(raw);
      if (isClearing(c)) this.#cookies.delete(c.name);
      else this.#cookies.set(c.name, c.value);
    }
  }

  get(name: string): string | undefined {
    return this.#cookies.get(name);
  }

  set(name: string, value: string): void {
    this.#cookies.set(name, value);
  }

  delete(name: string): void {
    this.#cookies.delete(name);
  }

  /** The `Cookie` header this jar sends, or undefined when it is empty. */
  header(): string | undefined {
    if (this.#cookies.size === 0) return undefined;
    return [...this.#cookies].map(([n, v]) => `${n}=${v}`).join('; ');
  }

  /** A copy: what an attacker who stole the cookies holds. */
  clone(): CookieJar {
    const copy = new CookieJar();
    for (const [n, v] of this.#cookies) copy.set(n, v);
    return copy;
  }
}

/** A response, read eagerly. */
export interface HttpResult {
  status: number;
  headers: Headers;
  body: string;
  /** Raw Set-Cookie header values. */
  setCookies: string[];
  location: string | null;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  /** Send no Cookie header at all (the jar is still updated from the response). */
  noCookies?: boolean;
  /** Send no Origin header on an unsafe method (browsers always send one on POST). */
  noOrigin?: boolean;
}

/** A browser-like client on one origin with its own jar. */
export class Client {
  readonly base: string;
  readonly jar: CookieJar;
  readonly userAgent: string;
  /** Every response this client received, for "never appears in any response" scans. */
  readonly history: HttpResult[] = [];

  constructor(base: string, jar = new CookieJar(), userAgent = 'sessionflow-test/1.0') {
    this.base = base;
    this.jar = jar;
    this.userAgent = userAgent;
  }

  async request(path: string, options: RequestOptions = {}): Promise<HttpResult> {
    const headers: Record<string, string> = { 'user-agent': this.userAgent, ...options.headers };
    const method = (options.method ?? 'GET').toUpperCase();
    const hasHeader = (name: string) => Object.keys(headers).some((h) => h.toLowerCase() === name);
    // Like a browser: every POST/PUT/PATCH/DELETE carries the page's Origin unless told otherwise.
    if (
      !['GET', 'HEAD', 'OPTIONS'].includes(method) &&
      !options.noOrigin &&
      !hasHeader('origin') &&
      !hasHeader('referer')
    ) {
      // Behind a TLS proxy the page the browser shows is https: so is its Origin.
      const viaTls = Object.entries(headers).some(
        ([h, v]) => h.toLowerCase() === 'x-forwarded-proto' && v === 'https',
      );
      const origin = new URL(this.base);
      if (viaTls) origin.protocol = 'https:';
      headers.origin = origin.origin;
    }
    const cookie = this.jar.header();
    if (cookie && !options.noCookies && !hasHeader('cookie')) {
      headers.cookie = cookie;
    }
    const res = await fetch(new URL(path, this.base), {
      method,
      headers,
      ...(options.body === undefined ? {} : { body: options.body }),
      redirect: 'manual',
    });
    const result: HttpResult = {
      status: res.status,
      headers: res.headers,
      body: await res.text(),
      setCookies: res.headers.getSetCookie(),
      location: res.headers.get('location'),
    };
    this.jar.update(result.setCookies);
    this.history.push(result);
    return result;
  }

  get(path: string, headers: Record<string, string> = {}): Promise<HttpResult> {
    return this.request(path, { headers });
  }

  /** POSTs an urlencoded form. */
  post(
    path: string,
    form: Record<string, string> = {},
    headers: Record<string, string> = {},
  ): Promise<HttpResult> {
    return this.request(path, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
      body: new URLSearchParams(form).toString(),
    });
  }

  /** POSTs JSON. */
  postJson(path: string, data: unknown, headers: Record<string, string> = {}): Promise<HttpResult> {
    return this.request(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify(data),
    });
  }
}
