/**
 * sessionflow on node:http with `withSession`, the integration's documented wrapper: every
 * request goes through it, including /anon whose handler never touches the session.
 * Store from config: memory | file | redis.
 */
import { createServer } from 'node:http';
import { node } from './_dist.js';
import { sessionflow } from './_sessionflow.js';
import { ANON_BODY, closeServer, listen, serve, text, WRITE_BODY } from './_shared.js';

serve(async (config) => {
  const { manager, close } = await sessionflow(config);
  let counter = 0;
  const server = createServer(
    node.withSession(manager, (req, res, session) => {
      switch (req.url) {
        case '/setup':
          session.set('k', 'hello');
          return text(res, WRITE_BODY);
        case '/read':
          return text(res, session.get('k') ?? 'missing');
        case '/write':
          session.set('n', ++counter);
          return text(res, WRITE_BODY);
        case '/anon':
          return text(res, ANON_BODY);
        default:
          return text(res, 'not found', 404);
      }
    }),
  );
  const port = await listen(server);
  return {
    port,
    close: async () => {
      await closeServer(server);
      await close();
    },
  };
});
