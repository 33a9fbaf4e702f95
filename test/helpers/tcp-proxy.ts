/**
 * A loopback TCP proxy in front of a real server, for fault tests: it forwards, stalls (a black
 * hole: connections stay open and new ones are accepted, but no byte moves), or goes down (every
 * connection reset, new ones refused, as when the server process dies). The server behind it is
 * never touched, so a shared server can sit behind it.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

export type ProxyState = 'forwarding' | 'stalled' | 'down';

interface Pair {
  client: Socket;
  upstream: Socket;
}

export class TcpProxy {
  readonly host = '127.0.0.1';
  #port = 0;
  #state: ProxyState = 'down';
  #server: Server | undefined;
  readonly #pairs = new Set<Pair>();
  readonly #target: { host: string; port: number };
  /** With `record`: every byte the clients sent on to the server, in order (see `sent`). */
  readonly #sent: Buffer[] | undefined;
  #losingReplies = false;

  private constructor(target: { host: string; port: number }, record: boolean) {
    this.#target = target;
    this.#sent = record ? [] : undefined;
  }

  /**
   * A proxy to `target`, listening on `port` (a free one by default) and forwarding. `record`
   * keeps what clients send, for `sent`.
   */
  static async start(
    target: { host: string; port: number },
    port = 0,
    options: { record?: boolean } = {},
  ): Promise<TcpProxy> {
    const proxy = new TcpProxy(target, options.record ?? false);
    proxy.#port = port;
    await proxy.up();
    return proxy;
  }

  get port(): number {
    return this.#port;
  }

  get state(): ProxyState {
    return this.#state;
  }

  /** What the clients sent that reached the server, as text (`clearSent` starts it anew). */
  get sent(): string {
    if (!this.#sent) throw new Error('TcpProxy: start it with { record: true } to read what was sent');
    return Buffer.concat(this.#sent).toString('latin1');
  }

  clearSent(): void {
    if (this.#sent) this.#sent.length = 0;
  }

  /** Connections open through the proxy now. */
  get connections(): number {
    return this.#pairs.size;
  }

  /**
   * Stops moving bytes. Both sides of every connection stop being read, so what is sent waits in
   * the kernel's buffers, as on a network that drops packets; new connections are accepted and
   * held the same way. `resume` delivers everything that waited.
   */
  stall(): void {
    this.#state = 'stalled';
    for (const { client, upstream } of this.#pairs) {
      client.pause();
      upstream.pause();
    }
  }

  /**
   * While on, what the server answers is thrown away; what clients send still reaches it. With
   * `down` after it: a command the server ran whose reply never came back, as when a connection
   * breaks between the two.
   */
  loseReplies(on = true): void {
    this.#losingReplies = on;
  }

  /** Forwards again after `stall`, the waiting bytes first. */
  resume(): void {
    this.#state = 'forwarding';
    for (const { client, upstream } of this.#pairs) {
      client.resume();
      upstream.resume();
    }
  }

  /** Like a crashed server: every connection is reset (RST), and new ones are refused. */
  async down(): Promise<void> {
    this.#state = 'down';
    const server = this.#server;
    this.#server = undefined;
    for (const pair of this.#pairs) this.#drop(pair);
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Listens (again, on the same port) and forwards. */
  async up(): Promise<void> {
    if (this.#server) {
      this.resume();
      return;
    }
    const server = createServer((client) => this.#accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#port, this.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#port = (server.address() as { port: number }).port;
    this.#server = server;
    this.#state = 'forwarding';
  }

  /** Stops listening and closes every connection. */
  close(): Promise<void> {
    return this.down();
  }

  #accept(client: Socket): void {
    if (this.#state === 'down') {
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(this.#target.port, this.#target.host);
    const pair = { client, upstream };
    this.#pairs.add(pair);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    this.#forward(client, upstream, this.#sent);
    this.#forward(upstream, client, undefined, () => this.#losingReplies);
    const end = () => this.#drop(pair);
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    if (this.#state === 'stalled') {
      client.pause();
      upstream.pause();
    }
  }

  #forward(from: Socket, to: Socket, record?: Buffer[], losing?: () => boolean): void {
    from.on('data', (chunk: Buffer) => {
      if (losing?.()) return;
      record?.push(chunk);
      if (to.write(chunk)) return;
      from.pause();
      to.once('drain', () => {
        if (this.#state === 'forwarding') from.resume();
      });
    });
  }

  #drop(pair: Pair): void {
    if (!this.#pairs.delete(pair)) return;
    if (!pair.client.destroyed) pair.client.resetAndDestroy();
    if (!pair.upstream.destroyed) pair.upstream.destroy();
  }
}
