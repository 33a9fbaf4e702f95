import { createServer, type IncomingMessage } from 'node:http';
import { CsrfError } from '../../../../src/features/csrf.js';
import { csrfGuard } from '../../../../src/integrations/headers.js';
import { requestInfo, withSession } from '../../../../src/integrations/node.js';
import { listen } from '../../../helpers/session-kit.js';
import type { MatrixAdapter } from '../adapter.js';

async function readBody(req: IncomingMessage): Promise<Record<string, string>> {
  let text = '';
  for await (const chunk of req) text += chunk;
  if (!text) return {};
  if (req.headers['content-type']?.startsWith('application/json')) return JSON.parse(text);
  return Object.fromEntries(new URLSearchParams(text));
}

const adapter: MatrixAdapter = {
  name: 'node:http',
  async start(manager) {
    const handler = withSession(manager, async (req, res, session) => {
      const json = (status: number, body: unknown) =>
        res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
      const body = req.method === 'POST' ? await readBody(req) : {};
      const refused = csrfGuard(
        manager,
        session,
        { method: req.method!, headers: req.headers, body },
        requestInfo(manager, req),
      );
      if (refused instanceof CsrfError) return json(403, { code: refused.code, reason: refused.reason });
      switch (`${req.method} ${req.url}`) {
        case 'GET /form':
          return json(200, { token: session.csrf.token() });
        case 'POST /login':
          await session.login(body.user!);
          session.set('profile', { name: body.name!, plan: 'free' });
          session.flash.success(`welcome ${body.name}`);
          return res.writeHead(303, { Location: '/me' }).end();
        case 'GET /me':
          return json(session.userId ? 200 : 401, {
            user: session.userId ?? null,
            profile: session.get('profile') ?? null,
            cart: session.bag('cart').all(),
          });
        case 'POST /cart':
          session.bag<Record<string, number>>('cart').set(body.item!, Number(body.qty));
          return json(200, { ok: true });
        case 'GET /flash':
          return json(200, { messages: session.flash.messages('success') });
        case 'POST /logout':
          await session.logout();
          return json(200, { ok: true });
        default:
          return json(404, {});
      }
    });
    return listen(createServer(handler));
  },
};
export default adapter;
