/** Session setup shared by the bench scripts that drive the servers in bench/servers/. */

/**
 * One session per connection (like `count` users), each made by GET /setup, and checked with one
 * GET /read that must answer `readBody` (the value /setup stored).
 */
export async function setupSessions(port: number, count: number, readBody: string): Promise<string[]> {
  const cookies: string[] = [];
  for (let i = 0; i < count; i++) {
    const res = await fetch(`http://127.0.0.1:${port}/setup`);
    await res.arrayBuffer();
    const cookie = res.headers.getSetCookie()[0]?.split(';')[0];
    if (res.status !== 200 || !cookie) throw new Error(`GET /setup answered ${res.status} without a cookie`);
    cookies.push(cookie);
  }
  const check = await fetch(`http://127.0.0.1:${port}/read`, { headers: { cookie: cookies[0]! } });
  const body = await check.text();
  if (body !== readBody)
    throw new Error(`GET /read with the setup cookie answered ${check.status} "${body}"`);
  return cookies;
}
