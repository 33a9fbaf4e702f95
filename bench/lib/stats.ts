/** The median of `values` (the mean of the two middle ones for an even count); `values` is not changed. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** The value at the p-th percentile of `sorted` (ascending): the one at index floor(p% of n). */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** A deterministic PRNG (mulberry32): the same numbers in [0, 1) for the same seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An interval for a median, and the chance that it holds the median (see `medianInterval`). */
export interface MedianInterval {
  low: number;
  high: number;
  /** The chance the interval holds the median, were the values independent draws. */
  coverage: number;
}

/**
 * A distribution-free interval for the median of whatever `values` were drawn from: their k-th
 * smallest and k-th largest, with the largest k whose interval still holds the median with a
 * chance of at least `level`. That chance follows from how many values fall below the median,
 * binomial with p = 1/2: the interval misses when fewer than k do, or fewer than k lie above.
 * With too few values for `level` (4 give at most 87.5 %), the smallest and largest, with the
 * chance they give. Undefined below two values.
 */
export function medianInterval(values: readonly number[], level = 0.9): MedianInterval | undefined {
  const n = values.length;
  if (n < 2) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  let k = 1;
  let pmf = 0.5 ** n; // P(X = j) for X ~ Binomial(n, 1/2), starting at j = 0
  let below = pmf; // P(X <= k - 1)
  for (let j = 1; j + 1 <= n - j; j++) {
    pmf = (pmf * (n - j + 1)) / j;
    if (1 - 2 * (below + pmf) < level) break;
    below += pmf;
    k = j + 1;
  }
  return { low: sorted[k - 1]!, high: sorted[n - k]!, coverage: 1 - 2 * below };
}
