import { describe, expect, it } from 'vitest';
import { medianInterval, prng } from '../../bench/lib/stats.js';

describe("medianInterval: the interval `npm run bench` prints for the median of a row's slices", () => {
  it('takes the 2nd smallest and 2nd largest of 8 values, which hold the median 93 % of the time', () => {
    const interval = medianInterval([0.9, 0.6, 1.07, 0.8, 0.85, 0.7, 0.95, 0.88]);
    expect(interval?.low).toBe(0.7);
    expect(interval?.high).toBe(0.95);
    expect(interval?.coverage).toBeCloseTo(1 - (2 * 9) / 256, 10);
  });

  it('falls back to the smallest and largest, with their lower coverage, when there are too few values', () => {
    expect(medianInterval([3, 1, 2, 4])).toEqual({ low: 1, high: 4, coverage: 0.875 });
    expect(medianInterval([5])).toBeUndefined();
  });

  it('holds the true median about as often as it says, with 8, 12 and 20 values', () => {
    // Seeded, so the coverage check draws the same numbers each run.
    const random = prng(9);
    for (const n of [8, 12, 20]) {
      const trials = 4000;
      let held = 0;
      let coverage = 0;
      for (let t = 0; t < trials; t++) {
        // Skewed draws (median 0.25 for u^2 with u uniform): the interval assumes no shape.
        const values = Array.from({ length: n }, () => random() ** 2);
        const interval = medianInterval(values)!;
        coverage = interval.coverage;
        if (interval.low <= 0.25 && 0.25 <= interval.high) held++;
      }
      expect(coverage).toBeGreaterThanOrEqual(0.9);
      expect(held / trials).toBeGreaterThan(coverage - 0.02);
      expect(held / trials).toBeLessThan(coverage + 0.02);
    }
  });
});
