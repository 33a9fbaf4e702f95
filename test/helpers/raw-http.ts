import { Agent, request } from 'node:http';
import { connect } from 'node:net';

export interface RawResponse {
  status: number;
  head: string;
  body: string;
}

/**
 * Sends bytes a fetch client refuses to send (CR/LF or non-Latin-1 text in a header) over a
 * plain socket. `headers` are written as they are, each followed by CRLF.
 */
export function rawRequest(port: number, requestLine: string, headers: string[]): Promise<RawResponse> {
  const bytes = Buffer.from(
    `${requestLine}\r\nHost: 127.0.0.1:${port}\r\n${headers.map((h) => `${h}\r\n`).join('')}Connection: close\r\n\r\n`,
    'utf8',
  );
  return new Promise((resolve, reject) => {
    // Write without half-closing: a server may drop a half-closed socket before an async handler
    // answers. `Connection: close` makes the server end the exchange.
    const socket = connect(port, '127.0.0.1', () => socket.write(bytes));
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', reject);
    socket.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const split = text.indexOf('\r\n\r\n');
      const head = split === -1 ? text : text.slice(0, split);
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
      resolve({ status, head, body: split === -1 ? '' : text.slice(split + 4) });
    });
  });
}

/** The Set-Cookie header values of a raw response head. */
export function rawSetCookies(head: string): string[] {
  return head
    .split('\r\n')
    .filter((l) => /^set-cookie:/i.test(l))
    .map((l) => l.slice(l.indexOf(':') + 1).trim());
}

const agent = new Agent({ keepAlive: true, maxSockets: 32 });

/**
 * A lean request over a keep-alive node:http agent, for tests that send thousands of requests
 * (fetch costs several times more CPU per request). Resolves with the status and Set-Cookie values.
 */
export function quickRequest(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; setCookies: string[] }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? 'GET', headers: options.headers, agent }, (res) => {
      res.resume();
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, setCookies: res.headers['set-cookie'] ?? [] }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/**
 * A client whose requests all go over one keep-alive socket, in turn: for tests of what a server
 * keeps per connection. `close()` destroys the socket.
 */
export function oneSocketClient(base: string) {
  const socketAgent = new Agent({ keepAlive: true, maxSockets: 1 });
  return {
    get(path: string, cookie?: string): Promise<{ status: number; body: string; setCookies: string[] }> {
      return new Promise((resolve, reject) => {
        const headers = cookie === undefined ? {} : { cookie };
        const req = request(`${base}${path}`, { agent: socketAgent, headers }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            body += chunk;
          });
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, body, setCookies: res.headers['set-cookie'] ?? [] }),
          );
          res.on('error', reject);
        });
        req.on('error', reject);
        req.end();
      });
    },
    close: () => socketAgent.destroy(),
  };
}
