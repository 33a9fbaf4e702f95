/**
 * Compile-time assertions for the type tests (this directory is compiled by
 * `tsc -p tsconfig.types.json`, never run). `expectType<Exact<A, B>>()` fails to compile unless A
 * and B are the same type.
 */
export type Exact<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

export function expectType<_Assertion extends true>(): void {}
