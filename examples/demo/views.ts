import { escapeHtml } from '../../src/index.js';
import type { User } from './users.js';

/** What every page needs to draw its header: the signed-in user and the logout token. */
export interface Chrome {
  user?: User | undefined;
  /** CSRF field name and token for the logout form; present whenever `user` is. */
  csrf?: { field: string; token: string } | undefined;
}

const CSS = `
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;background:#f4f5f7}
header{display:flex;align-items:center;justify-content:space-between;gap:1rem;padding:.75rem 1.5rem;background:#1f2933;color:#fff}
header a{color:#fff;text-decoration:none;font-weight:600}
header .who{display:flex;align-items:center;gap:.75rem;font-size:.9rem}
header form{margin:0}
main{max-width:36rem;margin:2.5rem auto;padding:2rem;background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
h1{margin-top:0;font-size:1.6rem}
label{display:block;margin:1rem 0 .25rem;font-weight:600}
input[type=text],input[type=password]{width:100%;padding:.55rem .7rem;border:1px solid #cbd2d9;border-radius:6px;font:inherit}
button{padding:.55rem 1.1rem;border:0;border-radius:6px;background:#2563eb;color:#fff;font:inherit;font-weight:600;cursor:pointer}
button.secondary{background:#e4e7eb;color:#1f2933}
form.stack button{margin-top:1.25rem}
.flash{padding:.6rem .9rem;margin:0 0 1rem;border-radius:6px;border:1px solid}
.flash-success{background:#e3f9e5;border-color:#8eed9b;color:#0e5814}
.flash-error{background:#ffe3e3;border-color:#f29b9b;color:#8a1c1c}
.flash-notice{background:#e6f0ff;border-color:#9cc0f5;color:#1c3f8a}
.flash-warning{background:#fff6da;border-color:#f5d57a;color:#7a5b00}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1rem}
dt{font-weight:600}dd{margin:0}
.muted{color:#616e7c}
code{background:#f0f2f5;padding:.1rem .3rem;border-radius:4px}
a{color:#2563eb}
button.danger{background:#fff;color:#b42318;border:1px solid #f1b0a8;padding:.35rem .8rem;font-size:.9rem}
button.danger:hover{background:#fff1f0}
ul.sessions{list-style:none;margin:1.25rem 0;padding:0;border:1px solid #e4e7eb;border-radius:8px}
li.session{display:flex;align-items:center;justify-content:space-between;gap:1rem;padding:.8rem 1rem}
li.session+li.session{border-top:1px solid #e4e7eb}
li.session.current{background:#f5f9ff}
li.session form{margin:0;flex:none}
.device{font-weight:600;overflow-wrap:anywhere}
.badge{display:inline-block;margin-left:.4rem;padding:.05rem .5rem;border-radius:999px;background:#dbeafe;color:#1e40af;font-size:.75rem;font-weight:600;vertical-align:middle}
.facts{font-size:.875rem;overflow-wrap:anywhere}
.ua{display:block;font-size:.8rem;font-weight:400;overflow-wrap:anywhere}
.actions{display:flex;align-items:center;gap:1rem;flex-wrap:wrap;margin-top:1.25rem}
.actions form{margin:0}
.note{font-size:.85rem;margin-bottom:0}
`;

function logoutForm(chrome: Chrome): string {
  if (!chrome.user || !chrome.csrf) return '';
  return `<form method="post" action="/logout" class="logout">
        <input type="hidden" name="${escapeHtml(chrome.csrf.field)}" value="${escapeHtml(chrome.csrf.token)}">
        <button type="submit" class="secondary">Sign out</button>
      </form>`;
}

/** The page frame; every page drawn for a signed-in user carries the logout form (SM-66). */
export function layout(title: string, body: string, chrome: Chrome = {}): string {
  const who = chrome.user
    ? `<div class="who"><span>Signed in as <strong>${escapeHtml(chrome.user.username)}</strong></span>
      ${logoutForm(chrome)}</div>`
    : '<div class="who"><a href="/login">Sign in</a></div>';
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>${escapeHtml(title)} · sessionflow demo</title>
  <style>${CSS}</style>
</head>
<body>
  <header><a href="/">sessionflow demo</a>${who}</header>
  <main>
${body}
  </main>
</body>
</html>
`;
}

export function landingPage(chrome: Chrome): string {
  const next = chrome.user
    ? '<p><a href="/dashboard">Go to your dashboard</a></p>'
    : '<p><a href="/login">Sign in</a> to see your dashboard.</p>';
  return layout(
    'Welcome',
    `<h1>sessionflow demo</h1>
    <p>An Express 5 application on the sessionflow library: login with session ID regeneration,
    flash messages, CSRF-protected forms, idle and absolute timeouts, and a logout that leaves
    nothing behind.</p>
    <p class="muted">This page never creates a session.</p>
    ${next}`,
    chrome,
  );
}

export function loginPage(flashHtml: string, csrf: { field: string; token: string }): string {
  return layout(
    'Sign in',
    `<h1>Sign in</h1>
    ${flashHtml}
    <form method="post" action="/login" class="stack">
      <input type="hidden" name="${escapeHtml(csrf.field)}" value="${escapeHtml(csrf.token)}">
      <label for="username">Username</label>
      <input type="text" id="username" name="username" autocomplete="username" required maxlength="64" autofocus>
      <label for="password">Password</label>
      <input type="password" id="password" name="password" autocomplete="current-password" required maxlength="256">
      <button type="submit">Sign in</button>
    </form>`,
  );
}

export interface DashboardFacts {
  authenticatedAt: number | undefined;
  absoluteTimeout: number;
  idleTimeout: number;
  transfers: Array<{ ref: string; to: string; amount: number }>;
}

function minutes(ms: number): string {
  const m = ms / 60_000;
  return m >= 1
    ? `${Math.round(m)} minute${Math.round(m) === 1 ? '' : 's'}`
    : `${Math.round(ms / 1000)} seconds`;
}

export function dashboardPage(
  chrome: Chrome & { user: User },
  flashHtml: string,
  facts: DashboardFacts,
): string {
  const since = facts.authenticatedAt === undefined ? undefined : new Date(facts.authenticatedAt);
  const until =
    facts.authenticatedAt === undefined ? undefined : new Date(facts.authenticatedAt + facts.absoluteTimeout);
  const transfers =
    facts.transfers.length === 0
      ? ''
      : `<h2>Transfers</h2>
    <ul class="transfers">
      ${facts.transfers
        .map(
          (t) =>
            `<li data-ref="${escapeHtml(t.ref)}">${escapeHtml(String(t.amount))} to ${escapeHtml(t.to)}</li>`,
        )
        .join('\n      ')}
    </ul>`;
  return layout(
    'Dashboard',
    `${flashHtml}
    <h1>Dashboard</h1>
    <p>Hello, <strong class="username">${escapeHtml(chrome.user.username)}</strong> (${escapeHtml(chrome.user.displayName)}).</p>
    <dl>
      <dt>Signed in at</dt><dd>${since ? escapeHtml(since.toUTCString()) : 'unknown'}</dd>
      <dt>Session ends</dt><dd>${until ? `by ${escapeHtml(until.toUTCString())} at the latest` : 'unknown'}</dd>
      <dt>Idle limit</dt><dd>${escapeHtml(minutes(facts.idleTimeout))} without activity</dd>
    </dl>
    <p class="muted">The session stores only your user id; everything else on this page is looked up per request.</p>
    <p><a href="/sessions" class="sessions-link">Your active sessions</a>: where you are signed in, and a way to sign out other devices.</p>
    ${transfers}`,
    chrome,
  );
}

export function flashPage(flashHtml: string, chrome: Chrome): string {
  return layout(
    'Messages',
    `<h1>Messages</h1>
    ${flashHtml || '<p class="muted">No messages.</p>'}
    <p><a href="/flash-set">Set a message</a> (shown once, after one redirect).</p>`,
    chrome,
  );
}

/** A specific explanation instead of the status's generic one, and where to go next. */
export interface ErrorDetail {
  title?: string;
  text?: string;
  back?: { href: string; label: string };
}

export function errorPage(status: number, chrome: Chrome, detail: ErrorDetail = {}): string {
  const [title, text] =
    status === 403
      ? [
          'Forbidden',
          'The form has expired or did not come from this site. Go back, reload the page and try again.',
        ]
      : status === 503
        ? ['Service unavailable', 'Sessions cannot be read or saved right now. Please retry in a moment.']
        : status === 404
          ? ['Not found', 'There is no page at this address.']
          : status === 405
            ? ['Method not allowed', 'This address does not accept that kind of request.']
            : status < 500
              ? ['Bad request', 'The request could not be understood.']
              : ['Something went wrong', 'An unexpected error occurred. Please retry.'];
  const heading = detail.title ?? title;
  const back = detail.back ?? { href: '/', label: 'Home' };
  return layout(
    heading,
    `<h1>${escapeHtml(heading)}</h1>
    <p>${escapeHtml(detail.text ?? text)}</p>
    <p><a href="${escapeHtml(back.href)}">${escapeHtml(back.label)}</a></p>`,
    chrome,
  );
}

/** One live session of the signed-in user, as the sessions page shows it. */
export interface SessionRow {
  /** The session's record id (`session.id`): what the revoke form sends. */
  id: string;
  /** "Chrome 156 on Linux", or "Unknown device". */
  device: string;
  /** The raw user agent, shown (escaped) when it could not be recognised. */
  userAgent?: string | undefined;
  deviceKnown: boolean;
  address?: string | undefined;
  lastSeenAt: number;
  signedInAt?: number | undefined;
  current: boolean;
}

export interface SessionsFacts {
  now: number;
  /** Empty when the store cannot list sessions; then `current` is shown alone. */
  rows: SessionRow[];
  /** False when the store cannot list a user's sessions (Memcached). */
  listable: boolean;
  /** The store's class name, for the "cannot list" notice. */
  storeName: string;
  /** The store can end the user's other sessions (by listing them, or natively). */
  canSignOutOthers: boolean;
}

/** "just now", "5 minutes ago", "3 hours ago", "2 days ago". */
export function timeAgo(now: number, at: number): string {
  const s = Math.max(0, Math.round((now - at) / 1000));
  if (s < 60) return 'just now';
  const plural = (n: number, unit: string) => `${n} ${unit}${n === 1 ? '' : 's'} ago`;
  if (s < 3600) return plural(Math.floor(s / 60), 'minute');
  if (s < 86_400) return plural(Math.floor(s / 3600), 'hour');
  return plural(Math.floor(s / 86_400), 'day');
}

function timeTag(now: number, at: number): string {
  const iso = new Date(at).toISOString();
  return `<time datetime="${escapeHtml(iso)}" title="${escapeHtml(new Date(at).toUTCString())}">${escapeHtml(timeAgo(now, at))}</time>`;
}

const USER_AGENT_SHOWN = 160;

function sessionRow(row: SessionRow, now: number, csrf: { field: string; token: string }): string {
  const ua = row.userAgent ?? '';
  const shownUa = ua.length > USER_AGENT_SHOWN ? `${ua.slice(0, USER_AGENT_SHOWN)}…` : ua;
  const facts = [
    row.address ? escapeHtml(row.address) : 'address unknown',
    `last seen ${timeTag(now, row.lastSeenAt)}`,
    ...(row.signedInAt === undefined ? [] : [`signed in ${timeTag(now, row.signedInAt)}`]),
  ];
  const action = row.current
    ? ''
    : `<form method="post" action="/sessions/revoke">
          <input type="hidden" name="${escapeHtml(csrf.field)}" value="${escapeHtml(csrf.token)}">
          <input type="hidden" name="id" value="${escapeHtml(row.id)}">
          <button type="submit" class="danger" title="Sign this session out">Revoke</button>
        </form>`;
  return `<li class="session${row.current ? ' current' : ''}"${ua ? ` title="${escapeHtml(ua)}"` : ''}>
        <div>
          <div class="device">${escapeHtml(row.device)}${row.current ? ' <span class="badge">This session</span>' : ''}${
            !row.deviceKnown && shownUa ? `<span class="ua muted">${escapeHtml(shownUa)}</span>` : ''
          }</div>
          <div class="facts muted">${facts.join(' · ')}</div>
        </div>
        ${action}
      </li>`;
}

/** `/sessions`: the user's live sessions, a revoke button on each other one, "sign out other devices". */
export function sessionsPage(
  chrome: Chrome & { user: User; csrf: { field: string; token: string } },
  flashHtml: string,
  facts: SessionsFacts,
): string {
  const csrf = chrome.csrf;
  const others = facts.rows.filter((r) => !r.current).length;
  const notice = facts.listable
    ? ''
    : `<div class="flash flash-warning" role="status">This server keeps sessions in a store that cannot list them
      (${escapeHtml(facts.storeName)}), so your other devices cannot be shown here.${
        facts.canSignOutOthers
          ? ' Signing out all other devices still works.'
          : ' It cannot sign them out either: to end them, ask the administrator.'
      }</div>`;
  const signOutOthers =
    facts.canSignOutOthers && (!facts.listable || others > 0)
      ? `<form method="post" action="/sessions/revoke-others">
        <input type="hidden" name="${escapeHtml(csrf.field)}" value="${escapeHtml(csrf.token)}">
        <button type="submit">Sign out other devices</button>
      </form>`
      : '';
  const summary = facts.listable
    ? `<p class="muted">${
        others === 0
          ? 'You are signed in on this device only.'
          : `You are signed in on ${others + 1} devices or browsers. If you do not recognise one, revoke it and change your password.`
      }</p>`
    : '';
  return layout(
    'Your sessions',
    `${flashHtml}
    <h1>Your sessions</h1>
    ${notice}
    ${summary}
    <ul class="sessions">
      ${facts.rows.map((r) => sessionRow(r, facts.now, csrf)).join('\n      ')}
    </ul>
    <div class="actions">
      ${signOutOthers}
      <a href="/dashboard">Back to the dashboard</a>
    </div>
    <p class="muted note">Device and address are remembered by this demo process only (in memory): a session
    it has not seen since it started shows as an unknown device.</p>`,
    chrome,
  );
}
