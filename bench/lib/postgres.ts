/**
 * The parent-side PostgreSQL chores of the benchmark scripts (`run.ts`, `instructions.ts`): is the
 * server there, and dropping the tables a run's servers made (a server killed mid-row cannot).
 */
import pg from 'pg';

async function withClient<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return await work(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Null if PostgreSQL answers at `url`, else why not. */
export async function probePostgres(url: string): Promise<string | null> {
  try {
    await withClient(url, (client) => client.query('SELECT 1'));
    return null;
  } catch (err) {
    return `postgres not reachable at ${url}: ${(err as Error).message}`;
  }
}

/** Drops `tables` (those dropped leave the set); throws if the server cannot be reached. */
export async function dropTables(url: string, tables: Set<string>): Promise<void> {
  if (tables.size === 0) return;
  await withClient(url, async (client) => {
    for (const table of tables) {
      await client.query(`DROP TABLE IF EXISTS "${table}"`);
      tables.delete(table);
    }
  });
}
