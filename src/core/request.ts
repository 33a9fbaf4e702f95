/** What an integration tells the manager about a request. */
export interface RequestInfo {
  /** The raw `Cookie` header. */
  cookieHeader?: string | undefined;
  /** The request arrived over HTTPS (directly, or through a trusted proxy). */
  secure: boolean;
  /** Client address, already resolved through trusted proxies. */
  ip?: string | undefined;
  userAgent?: string | undefined;
  /**
   * An object that lives as long as the client's connection (node: `req.socket`). Optional: with
   * it, a `Cookie` header identical to the one the connection sent before is not parsed and
   * verified again. Answers are the same without it; so they are when one connection carries
   * requests of many clients (a proxy), since they depend on the header's text alone.
   */
  connection?: object | undefined;
}
