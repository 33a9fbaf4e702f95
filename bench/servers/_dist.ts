/**
 * sessionflow as its users run it: the compiled package in dist/ (`npm run bench` builds it
 * first), typed by the sources. Loaded by path at run time, so that type-checking the bench
 * needs no build.
 */
const load = <T>(path: string): Promise<T> => import(new URL(`../../dist/${path}`, import.meta.url).href);

export const core = await load<typeof import('../../src/index.js')>('index.js');
export const node = await load<typeof import('../../src/integrations/node.js')>('integrations/node.js');
export const express =
  await load<typeof import('../../src/integrations/express.js')>('integrations/express.js');
export const fastify =
  await load<typeof import('../../src/integrations/fastify.js')>('integrations/fastify.js');
export const redisStore = () => load<typeof import('../../src/stores/redis.js')>('stores/redis.js');
export const postgresStore = () => load<typeof import('../../src/stores/postgres.js')>('stores/postgres.js');
