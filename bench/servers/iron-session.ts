/**
 * iron-session 8 on node:http: the session is the sealed cookie itself (no store). A read
 * unseals the cookie; a write seals a new one and sends it.
 */
import { createServer } from 'node:http';
import { getIronSession } from 'iron-session';
import { ANON_BODY, closeServer, listen, SECRET, serve, text, WRITE_BODY } from './_shared.js';

interface BenchData {
  k?: string;
  n?: number;
}

const options = { password: SECRET, cookieName: 'sid', cookieOptions: { secure: false } };

serve(async () => {
  let counter = 0;
  const server = createServer(async (req, res) => {
    try {
      switch (req.url) {
        case '/setup': {
          const session = await getIronSession<BenchData>(req, res, options);
          session.k = 'hello';
          await session.save();
          return text(res, WRITE_BODY);
        }
        case '/read': {
          const session = await getIronSession<BenchData>(req, res, options);
          return text(res, session.k ?? 'missing');
        }
        case '/write': {
          const session = await getIronSession<BenchData>(req, res, options);
          session.n = ++counter;
          await session.save();
          return text(res, WRITE_BODY);
        }
        case '/anon':
          return text(res, ANON_BODY);
        default:
          return text(res, 'not found', 404);
      }
    } catch (err) {
      return text(res, String(err), 500);
    }
  });
  return { port: await listen(server), close: () => closeServer(server) };
});
