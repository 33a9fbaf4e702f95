/**
 * One way for every bench script to report a target: `MET     <label>: <detail>` or
 * `MISSED  <label>: <detail>` (the format `npm run bench` prints), and a count at the end.
 */

export interface Verdict {
  label: string;
  verdict: 'MET' | 'MISSED' | 'n/a';
  detail: string;
}

const seen: Verdict[] = [];

/** Records and prints one target: met when `ok` is true. */
export function verdict(label: string, ok: boolean | undefined, detail: string): Verdict {
  const v: Verdict = { label, verdict: ok === undefined ? 'n/a' : ok ? 'MET' : 'MISSED', detail };
  seen.push(v);
  console.log(`${v.verdict.padEnd(7)} ${label}: ${detail}`);
  return v;
}

/** Every verdict printed so far (for --json outputs). */
export function verdicts(): readonly Verdict[] {
  return seen;
}
