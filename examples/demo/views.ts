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

export function errorPage(status: number, chrome: Chrome): string {
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
  return layout(
    title,
    `<h1>${escapeHtml(title)}</h1>
    <p>${escapeHtml(text)}</p>
    <p><a href="/">Home</a></p>`,
    chrome,
  );
}
