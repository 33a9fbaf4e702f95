import { createHash } from 'node:crypto';
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import type { ResolvedOptions } from '../options.js';
import type { SessionMeta } from '../stores/store.js';

/** A short hash of the user agent: enough to compare, nothing to leak. */
export function userAgentTag(userAgent: string | undefined): string {
  return createHash('sha256')
    .update(userAgent ?? '')
    .digest('base64url')
    .slice(0, 16);
}

function normalizeIp(ip: string): string {
  return ip.startsWith('::ffff:') && isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

/** Binding facts to record in a new session's metadata. */
export function bindingMeta(
  binding: ResolvedOptions['binding'],
  client: { ip?: string; userAgent?: string },
): Partial<SessionMeta> {
  const meta: Partial<SessionMeta> = {};
  if (binding.userAgent) meta.ua = userAgentTag(client.userAgent);
  if (binding.ip && client.ip) meta.ip = normalizeIp(client.ip);
  return meta;
}

/**
 * Compares the request's client with what the session recorded. Returns the mismatch reason,
 * or undefined. The IP is compared by network prefix (/24 and /64 by default) so a mobile user
 * whose address changes inside the carrier's network is not logged out (seed 14.2).
 */
export function bindingMismatch(
  binding: ResolvedOptions['binding'],
  meta: SessionMeta,
  client: { ip?: string; userAgent?: string },
): 'user-agent' | 'ip' | undefined {
  if (binding.userAgent && meta.ua !== undefined && meta.ua !== userAgentTag(client.userAgent))
    return 'user-agent';
  if (binding.ip && meta.ip !== undefined) {
    const current = client.ip ? normalizeIp(client.ip) : '';
    if (current === meta.ip) return undefined;
    const v4 = isIPv4(meta.ip);
    if (v4 ? !isIPv4(current) : !isIPv6(current)) return 'ip';
    const list = new BlockList();
    list.addSubnet(meta.ip, v4 ? binding.ip.v4Prefix : binding.ip.v6Prefix, v4 ? 'ipv4' : 'ipv6');
    if (!list.check(current, v4 ? 'ipv4' : 'ipv6')) return 'ip';
  }
  return undefined;
}
