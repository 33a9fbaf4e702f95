import { join } from 'node:path';
import { FileStore, MemoryStore, type SessionStore } from '../../src/index.js';

/** The store the demo runs on, with a label for the startup banner. */
export interface SelectedStore {
  store: SessionStore;
  label: string;
}

/**
 * Picks the session store from `SESSION_STORE`:
 * - `file` (default): one file per session in `<dataDir>/sessions`, kept across restarts;
 * - `memory`: in this process only, lost on restart.
 * Server-backed stores (redis://, postgres://, ...) plug in here as one more branch each.
 */
export async function storeFromEnv(
  value: string | undefined,
  options: { dataDir: string },
): Promise<SelectedStore> {
  const choice = (value ?? '').trim() || 'file';
  if (choice === 'file') {
    const dir = join(options.dataDir, 'sessions');
    return { store: new FileStore({ dir }), label: `file (${dir})` };
  }
  if (choice === 'memory') {
    return { store: new MemoryStore(), label: 'memory (lost on restart)' };
  }
  // Never echo a connection URL: it may carry a password.
  const shown = choice.includes('://') ? `${choice.slice(0, choice.indexOf('://'))}://...` : choice;
  throw new Error(
    `SESSION_STORE=${JSON.stringify(shown)} is not supported by the demo yet; use "file" (default) or "memory".`,
  );
}
