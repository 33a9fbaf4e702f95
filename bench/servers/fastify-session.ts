/**
 * @fastify/session 11 + @fastify/cookie with the plugin's default in-memory store and its
 * defaults (rolling: true), saveUninitialized off as for the other peers.
 */
import fastifyCookie from '@fastify/cookie';
import Fastify, { type FastifyPluginCallback } from 'fastify';
import { ANON_BODY, SECRET, serve, WRITE_BODY } from './_shared.js';

/** The part of @fastify/session's `request.session` the benchmark uses. */
interface PeerSession {
  get(key: string): unknown;
  set(key: string, value: unknown): void;
}

// Loaded by a computed specifier so that its type declarations stay out of the type-check:
// they declare `FastifyRequest.session` as their own session, which clashes with sessionflow's
// Fastify integration in the same program.
const PLUGIN = '@fastify/session';
const fastifySession = ((await import(PLUGIN)) as { default: FastifyPluginCallback<Record<string, unknown>> })
  .default;

const sessionOf = (request: object) => (request as { session: PeerSession }).session;

serve(async () => {
  let counter = 0;
  const app = Fastify({ logger: false });
  await app.register(fastifyCookie);
  await app.register(fastifySession, { secret: SECRET, cookie: { secure: false }, saveUninitialized: false });
  app.get('/setup', async (req, reply) => {
    sessionOf(req).set('k', 'hello');
    return reply.type('text/plain').send(WRITE_BODY);
  });
  app.get('/read', async (req, reply) =>
    reply.type('text/plain').send(String(sessionOf(req).get('k') ?? 'missing')),
  );
  app.get('/write', async (req, reply) => {
    sessionOf(req).set('n', ++counter);
    return reply.type('text/plain').send(WRITE_BODY);
  });
  app.get('/anon', async (_req, reply) => reply.type('text/plain').send(ANON_BODY));
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  return { port: address.port, close: () => app.close() };
});
