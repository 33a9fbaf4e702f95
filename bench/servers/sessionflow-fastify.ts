/** sessionflow's Fastify plugin (`sessionPlugin`), registered app-wide as its docs show. */
import Fastify from 'fastify';
import { fastify } from './_dist.js';
import { sessionflow } from './_sessionflow.js';
import { ANON_BODY, serve, WRITE_BODY } from './_shared.js';

serve(async (config) => {
  const { manager, close } = await sessionflow(config);
  let counter = 0;
  const app = Fastify({ logger: false });
  await app.register(fastify.sessionPlugin(manager));
  app.get('/setup', async (req, reply) => {
    req.session.set('k', 'hello');
    return reply.type('text/plain').send(WRITE_BODY);
  });
  app.get('/read', async (req, reply) =>
    reply.type('text/plain').send(String(req.session.get('k') ?? 'missing')),
  );
  app.get('/write', async (req, reply) => {
    req.session.set('n', ++counter);
    return reply.type('text/plain').send(WRITE_BODY);
  });
  app.get('/anon', async (_req, reply) => reply.type('text/plain').send(ANON_BODY));
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  return {
    port: address.port,
    close: async () => {
      await app.close();
      await close();
    },
  };
});
