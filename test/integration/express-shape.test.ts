import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

interface Shape {
  fast: boolean;
  symbols: string[];
}
interface Answer {
  plain: { req: Shape; res: Shape };
  session: { req: Shape; res: Shape };
}

const fixture = fileURLToPath(new URL('../fixtures/express-shape.ts', import.meta.url));

// What bought Express + a store its speed (bench/README.md, thirtieth pass): session() moves the
// request and response Express re-prototyped into V8's dictionary mode. If a change or a new V8
// loses that, this fails and the instruction counts of the Express rows are to be measured again.
describe('Express: the request and response objects after session()', () => {
  it('are in dictionary mode, where a plain Express app leaves them in fast mode, and keep no property of ours', async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--allow-natives-syntax', '--import', 'tsx', fixture],
      { env: { ...process.env, NODE_OPTIONS: '' } },
    );
    const answer = JSON.parse(stdout) as Answer;
    // The control: the check tells the two modes apart.
    expect(answer.plain.req.fast).toBe(true);
    expect(answer.plain.res.fast).toBe(true);
    expect(answer.session.req.fast).toBe(false);
    expect(answer.session.res.fast).toBe(false);
    // The two symbols that moved them are gone again: the same symbol keys as without a session.
    expect(answer.session.req.symbols).toEqual(answer.plain.req.symbols);
    expect(answer.session.res.symbols).toEqual(answer.plain.res.symbols);
    expect(answer.session.req.symbols.join(' ')).not.toMatch(/sessionflow/);
  });
});
