#!/usr/bin/env node
/**
 * sessionflow's admin command: garbage-collect expired sessions from cron, list a user's
 * sessions, revoke one or all of them. The store is named by URL, as for the demo:
 *
 *   sessionflow gc       --store file:/var/lib/app/sessions
 *   sessionflow sessions --store postgres://app@db/app --user 42
 *   sessionflow revoke   --store redis://127.0.0.1:6379 --user 42 [--except <id>]
 *   sessionflow revoke   --store redis://127.0.0.1:6379 --id <session id>
 *
 * Session ids are storage keys (hashes of the cookie tokens): safe to print, useless as cookies.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { storeFromUrl } from './store-from-url.js';

const USAGE = `usage: sessionflow <gc | sessions | revoke> --store <url> [--user <id>] [--id <session id>] [--except <session id>]
  store URLs: file:<dir>, memory, redis://, redis-cluster://h:p,h:p, memcached://h:p, postgres://, mysql://, sqlite:<path>`;

/** Runs one admin command; returns the process exit code. Output goes to the given writers. */
export async function run(
  argv: string[],
  out: (line: string) => void,
  err: (line: string) => void,
): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (e) {
    err(`${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const command = positionals[0];
  if (!command || !['gc', 'sessions', 'revoke'].includes(command) || !values.store) {
    err(USAGE);
    return 2;
  }
  const selected = await storeFromUrl(values.store, { dataDir: join(tmpdir(), 'sessionflow') });
  const { store } = selected;
  try {
    if (command === 'gc') {
      if (!store.capabilities.gc || !store.gc) {
        out(`${selected.label}: expires sessions by itself; nothing to collect`);
        return 0;
      }
      out(`${selected.label}: removed ${await store.gc(Date.now())} expired session(s)`);
      return 0;
    }
    if (command === 'revoke' && values.id) {
      await store.destroy(values.id);
      out(`revoked ${values.id}`);
      return 0;
    }
    if (!values.user) {
      err(`${command} needs --user <id>${command === 'revoke' ? ' or --id <session id>' : ''}\n${USAGE}`);
      return 2;
    }
    if (!store.capabilities.listByUser || !store.sessionsOf) {
      err(`${selected.label} cannot list sessions by user; use a Redis, SQL, file or memory store`);
      return 1;
    }
    const sessions = await store.sessionsOf(values.user);
    if (command === 'sessions') {
      for (const s of sessions) {
        const { createdAt, lastSeenAt, deadline } = s.meta;
        out(
          `${s.key}  created ${new Date(createdAt).toISOString()}  last seen ${new Date(lastSeenAt).toISOString()}  ends by ${new Date(deadline).toISOString()}`,
        );
      }
      out(`${sessions.length} live session(s) for user ${values.user}`);
      return 0;
    }
    let revoked = 0;
    for (const s of sessions) {
      if (s.key === values.except) continue;
      await store.destroy(s.key);
      revoked++;
    }
    out(`revoked ${revoked} session(s) of user ${values.user}`);
    return 0;
  } finally {
    await store.close?.();
    await selected.close();
  }
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      store: { type: 'string' },
      user: { type: 'string' },
      id: { type: 'string' },
      except: { type: 'string' },
    },
  });
}

// Run when executed as a program, not when imported by tests.
if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  run(
    process.argv.slice(2),
    (line) => console.log(line),
    (line) => console.error(line),
  ).then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(`sessionflow: ${(e as Error).message}`);
      process.exit(1);
    },
  );
}
