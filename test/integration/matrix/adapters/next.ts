// Next.js App Router route handlers (`sessionflow/next`), one per route file as Next would hold
// them, called with a Fetch `Request` and a context exactly as Next calls an exported GET/POST.
// A real `next start` cannot be given the matrix's in-process manager, so a plain Fetch-to-
// node:http bridge serves them here; test/integration/next.test.ts runs a real Next server.
import type { SessionManager } from '../../../../src/index.js';
import { type NextSessionOptions, withSession } from '../../../../src/integrations/next.js';
import { type MatrixAdapter, type MatrixData, serveFetch } from '../adapter.js';

type RouteHandler = (
  request: Request,
  context: { params: Promise<Record<string, string>> },
) => Promise<Response>;

async function readBody(request: Request): Promise<Record<string, string>> {
  if (request.headers.get('content-type')?.startsWith('application/json'))
    return (await request.json()) as Record<string, string>;
  return Object.fromEntries(new URLSearchParams(await request.text()));
}

/** The app's route files: `app/form/route.ts`, `app/login/route.ts`, … */
function routes(sessions: SessionManager<MatrixData>): Record<string, RouteHandler> {
  const options: NextSessionOptions = {
    onCsrfError: (error) => Response.json({ code: error.code, reason: error.reason }, { status: 403 }),
  };
  return {
    'GET /form': withSession(sessions, (_req, session) => Response.json({ token: session.csrf.token() })),
    'POST /login': withSession(
      sessions,
      async (request, session) => {
        const body = await readBody(request);
        await session.login(body.user!);
        session.set('profile', { name: body.name!, plan: 'free' });
        session.flash.success(`welcome ${body.name}`);
        return new Response(null, { status: 303, headers: { Location: '/me' } });
      },
      options,
    ),
    'GET /me': withSession(sessions, (_req, session) => {
      const me = {
        user: session.userId ?? null,
        profile: session.get('profile') ?? null,
        cart: session.bag('cart').all(),
      };
      return Response.json(me, { status: session.userId ? 200 : 401 });
    }),
    'POST /cart': withSession(
      sessions,
      async (request, session) => {
        const body = await readBody(request);
        session.bag<Record<string, number>>('cart').set(body.item!, Number(body.qty));
        return Response.json({ ok: true });
      },
      options,
    ),
    'GET /flash': withSession(sessions, (_req, session) =>
      Response.json({ messages: session.flash.messages('success') }),
    ),
    'POST /logout': withSession(
      sessions,
      async (_req, session) => {
        await session.logout();
        return Response.json({ ok: true });
      },
      options,
    ),
  };
}

const adapter: MatrixAdapter = {
  name: 'next',
  async start(manager) {
    const table = routes(manager);
    const fetch = (request: Request) => {
      const route = table[`${request.method} ${new URL(request.url).pathname}`];
      return route ? route(request, { params: Promise.resolve({}) }) : new Response(null, { status: 404 });
    };
    return serveFetch(fetch);
  },
};
export default adapter;
