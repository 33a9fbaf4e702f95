/** Baseline: node:http with no session at all. Same routes and bodies as the session servers. */
import { createServer } from 'node:http';
import { ANON_BODY, closeServer, listen, STORED_VALUE, serve, text, WRITE_BODY } from './_shared.js';

serve(async () => {
  const server = createServer((req, res) => {
    switch (req.url) {
      case '/setup':
      case '/write':
        return text(res, WRITE_BODY);
      case '/read':
        return text(res, STORED_VALUE);
      case '/anon':
        return text(res, ANON_BODY);
      default:
        return text(res, 'not found', 404);
    }
  });
  return { port: await listen(server), close: () => closeServer(server) };
});
