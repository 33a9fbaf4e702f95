/**
 * Server-backed suites call `serverAvailable` before they start. On a developer laptop without
 * the server, the suite is skipped with a visible reason; under CI (CI=true) a missing server is
 * a failure, never a silent skip.
 */
export async function serverAvailable(name: string, probe: () => Promise<unknown>): Promise<string | false> {
  try {
    await probe();
    return false;
  } catch (err) {
    const reason = `${name} not reachable: ${(err as Error).message}`;
    if (process.env.CI === 'true') throw new Error(`${reason} (CI=true: a missing server is a failure)`);
    console.warn(`[skip] ${reason}`);
    return reason;
  }
}
