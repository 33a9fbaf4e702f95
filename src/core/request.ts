/** What an integration tells the manager about a request. */
export interface RequestInfo {
  /** The raw `Cookie` header. */
  cookieHeader?: string | undefined;
  /** The request arrived over HTTPS (directly, or through a trusted proxy). */
  secure: boolean;
  /** Client address, already resolved through trusted proxies. */
  ip?: string | undefined;
  userAgent?: string | undefined;
}
