/**
 * `npm start`: the demo on http://localhost:3000 (PORT and HOST override).
 *
 * - Sessions in a FileStore under examples/demo/.data/sessions (SESSION_STORE=memory for RAM).
 * - A development secret made with crypto.randomBytes on first start and kept in
 *   examples/demo/.data/secret (mode 0600; the directory is gitignored). SESSION_SECRET wins.
 * - The cookie is not `Secure` locally because the demo serves plain HTTP; with
 *   NODE_ENV=production it is, and TRUST_PROXY=1 lets a TLS proxy in front say so.
 * - Audit events go to stdout as JSON lines; the banner goes to stderr so stdout stays parseable.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { storeFromUrl } from '../../src/cli/store-from-url.js';
import { MIN_SECRET_BYTES } from '../../src/crypto/keyring.js';
import { jsonLinesAudit } from '../../src/index.js';
import { createApp } from './app.js';
import { DEMO_CREDENTIALS } from './users.js';

const here = dirname(fileURLToPath(import.meta.url));
const dataDir = join(here, '.data');
const production = process.env.NODE_ENV === 'production';

async function developmentSecret(): Promise<string> {
  const fromEnv = process.env.SESSION_SECRET;
  if (fromEnv) return fromEnv;
  const file = join(dataDir, 'secret');
  const secret = randomBytes(48).toString('base64url');
  try {
    // 'wx': never overwrite; two first starts at once both end up with the file's secret.
    await writeFile(file, `${secret}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  await chmod(file, 0o600);
  const stored = (await readFile(file, 'utf8')).trim();
  if (Buffer.byteLength(stored) < MIN_SECRET_BYTES) {
    throw new Error(
      `${file} holds a secret shorter than ${MIN_SECRET_BYTES} bytes; delete it to get a new one.`,
    );
  }
  return stored;
}

async function main(): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const port = Number(process.env.PORT ?? 3000);
  const host = process.env.HOST ?? 'localhost';
  if (!Number.isInteger(port) || port < 0 || port > 65_535)
    throw new Error(`PORT ${process.env.PORT} is not a port`);

  const { store, label, close } = await storeFromUrl(process.env.SESSION_STORE, { dataDir });
  const { app, manager } = createApp({
    store,
    secret: await developmentSecret(),
    secureCookie: production,
    trustProxy: process.env.TRUST_PROXY === '1',
    audit: jsonLinesAudit(process.stdout),
    // Failed-login throttling uses the library's defaults; the first lock can be lengthened
    // (e.g. for a demonstration) with LOGIN_THROTTLE_BASE_DELAY_MS.
    ...(process.env.LOGIN_THROTTLE_BASE_DELAY_MS
      ? { loginThrottle: { baseDelayMs: Number(process.env.LOGIN_THROTTLE_BASE_DELAY_MS) } }
      : {}),
  });

  const server = app.listen(port, host, () => {
    const address = server.address();
    const shownPort = typeof address === 'object' && address ? address.port : port;
    const lines = [
      `sessionflow demo listening on http://localhost:${shownPort}`,
      `  session store: ${label}`,
      `  cookie: ${manager.options.cookie.name}${manager.options.cookie.secure ? ' (Secure)' : ' (not Secure: plain-HTTP development)'}`,
      '  demo users:',
      ...DEMO_CREDENTIALS.map((c) => `    ${c.username} / ${c.password}`),
      '  audit events: JSON lines on stdout',
    ];
    console.error(lines.join('\n'));
  });
  server.on('error', (err) => {
    console.error(`demo: cannot listen on ${host}:${port}: ${err.message}`);
    process.exit(1);
  });

  // Phalcon's garbage collection: expired session files are removed every ten minutes.
  const gc = setInterval(() => {
    manager.gc().catch((err: Error) => console.error(`demo: session gc failed: ${err.message}`));
  }, 600_000);
  gc.unref();

  const stop = () => {
    clearInterval(gc);
    server.close(() => {
      manager
        .close()
        .then(close)
        .finally(() => process.exit(0));
    });
    server.closeAllConnections();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((err: Error) => {
  console.error(`demo: ${err.message}`);
  process.exit(1);
});
