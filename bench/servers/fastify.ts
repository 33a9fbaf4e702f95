/** Plain Fastify 5, no session: the baseline of the Fastify rows. */
import Fastify from 'fastify';
import { ANON_BODY, STORED_VALUE, serve, WRITE_BODY } from './_shared.js';

serve(async () => {
  const app = Fastify({ logger: false });
  app.get('/setup', async (_req, reply) => reply.type('text/plain').send(WRITE_BODY));
  app.get('/read', async (_req, reply) => reply.type('text/plain').send(STORED_VALUE));
  app.get('/write', async (_req, reply) => reply.type('text/plain').send(WRITE_BODY));
  app.get('/anon', async (_req, reply) => reply.type('text/plain').send(ANON_BODY));
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  return { port: address.port, close: () => app.close() };
});
