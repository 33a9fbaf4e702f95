import { CsrfError } from '../../../../src/features/csrf.js';
import { fetchRequestInfo, withFetchSession } from '../../../../src/integrations/fetch.js';
import { csrfGuard } from '../../../../src/integrations/headers.js';
import { type MatrixAdapter, serveFetch } from '../adapter.js';

async function readBody(request: Request): Promise<Record<string, string>> {
  if (request.method !== 'POST') return {};
  if (request.headers.get('content-type')?.startsWith('application/json'))
    return (await request.json()) as Record<string, string>;
  return Object.fromEntries(new URLSearchParams(await request.text()));
}

const adapter: MatrixAdapter = {
  name: 'fetch',
  async start(manager) {
    const handler = withFetchSession(manager, async (request, session) => {
      const body = await readBody(request);
      const headers = Object.fromEntries(request.headers);
      const info = fetchRequestInfo(request, {}, manager);
      const refused = csrfGuard(manager, session, { method: request.method, headers, body }, info);
      if (refused instanceof CsrfError)
        return Response.json({ code: refused.code, reason: refused.reason }, { status: 403 });
      switch (`${request.method} ${new URL(request.url).pathname}`) {
        case 'GET /form':
          return Response.json({ token: session.csrf.token() });
        case 'POST /login':
          await session.login(body.user!);
          session.set('profile', { name: body.name!, plan: 'free' });
          session.flash.success(`welcome ${body.name}`);
          return new Response(null, { status: 303, headers: { Location: '/me' } });
        case 'GET /me': {
          const me = {
            user: session.userId ?? null,
            profile: session.get('profile') ?? null,
            cart: session.bag('cart').all(),
          };
          return Response.json(me, { status: session.userId ? 200 : 401 });
        }
        case 'POST /cart':
          session.bag<Record<string, number>>('cart').set(body.item!, Number(body.qty));
          return Response.json({ ok: true });
        case 'GET /flash':
          return Response.json({ messages: session.flash.messages('success') });
        case 'POST /logout':
          await session.logout();
          return Response.json({ ok: true });
        default:
          return new Response(null, { status: 404 });
      }
    });
    // @hono/node-server only as a plain Fetch-to-node:http bridge (no Hono, globals untouched).
    return serveFetch(handler);
  },
};
export default adapter;
