/**
 * The Content-Type matrix of the SM-47 tests: a CSRF decision must not depend on the body's type.
 * No type at all, the three a cross-origin form can send without a preflight (in other spellings
 * too), and JSON.
 */
export const CSRF_CONTENT_TYPES: readonly (string | undefined)[] = [
  undefined,
  'text/plain',
  'TEXT/PLAIN',
  'multipart/form-data; boundary=x',
  'application/x-www-form-urlencoded;charset=UTF-8',
  'application/json',
];

/** The Content-Type header of one entry of the matrix; none for `undefined`. */
export const contentTypeHeader = (type: string | undefined): Record<string, string> =>
  type === undefined ? {} : { 'content-type': type };
