/** pg 8.11 under an alias (package.json), for the tests that run an older pg line: typed as pg. */
declare module 'pg-8-11' {
  import pg from 'pg';
  export default pg;
}
