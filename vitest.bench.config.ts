import { defineConfig } from 'vitest/config';

/** `npm run bench:micro`: the micro-benchmarks kept beside the hot functions in src/. */
export default defineConfig({
  test: {
    benchmark: { include: ['src/**/*.bench.ts'] },
  },
});
