/**
 * The demo in a real headless Chromium: what a user does (type, click, reload, sign out) and
 * what the browser really stores. Skipped with a visible reason when Chromium is not installed;
 * a failure under CI=true.
 */
import { access, constants } from 'node:fs/promises';
import { type Browser, type BrowserContext, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ALICE, type DemoServer, startDemo } from '../helpers/demo.js';
import { serverAvailable } from '../helpers/servers.js';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];
const SCREENSHOT = '/tmp/sessionflow-dashboard.png';

const skip = await serverAvailable(`Chromium at ${CHROMIUM}`, () => access(CHROMIUM, constants.X_OK));

describe.skipIf(skip)(`the demo in headless Chromium${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let browser: Browser;
  let context: BrowserContext;
  let demo: DemoServer;

  beforeAll(async () => {
    demo = await startDemo();
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
    context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  });
  afterAll(async () => {
    await context?.close();
    await browser?.close();
    await demo?.close();
  });

  it('SM-19/SM-32/SM-65/SM-66: sign in through the form, see the dashboard, reload, sign out', async () => {
    const page = await context.newPage();
    await page.goto(`${demo.url}/login`);
    expect(await page.title()).toContain('Sign in');
    const preLogin = (await context.cookies()).find((c) => c.name === 'id');
    expect(preLogin).toBeDefined();

    await page.locator('#username').pressSequentially(ALICE.username);
    await page.locator('#password').pressSequentially(ALICE.password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForURL(`${demo.url}/dashboard`);

    await expect.poll(() => page.locator('.flash-success').textContent()).toBe('Welcome back!');
    expect(await page.locator('strong.username').textContent()).toBe('alice');
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    // The ID changed at login, and the session cookie is out of JavaScript's reach.
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === 'id');
    expect(session).toBeDefined();
    expect(session!.value).not.toBe(preLogin!.value);
    expect(session!.httpOnly).toBe(true);
    expect(session!.sameSite).toBe('Lax');
    expect(session!.path).toBe('/');
    expect(session!.expires).toBe(-1); // a browser-session cookie
    const visible = (await page.evaluate('document.cookie')) as string;
    expect(visible).not.toContain(session!.value);
    expect(visible).not.toMatch(/(^|;\s*)id=/);

    // Flash messages are shown once.
    await page.reload();
    expect(await page.locator('strong.username').textContent()).toBe('alice');
    expect(await page.locator('.flash').count()).toBe(0);

    // Sign out: back on the login page, and the dashboard is out of reach.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL(`${demo.url}/login`);
    expect(await page.locator('form[action="/login"]').count()).toBe(1);
    const after = (await context.cookies()).find((c) => c.name === 'id');
    expect(after?.value).not.toBe(session!.value);

    const res = await page.goto(`${demo.url}/dashboard`);
    expect(page.url()).toBe(`${demo.url}/login`);
    expect(res?.status()).toBe(200);
    expect(await page.locator('strong.username').count()).toBe(0);
    await page.close();
  });

  it('SM-33: after sign-out, Back does not show the dashboard from the cache', async () => {
    const page = await context.newPage();
    await page.goto(`${demo.url}/login`);
    await page.locator('#username').pressSequentially(ALICE.username);
    await page.locator('#password').pressSequentially(ALICE.password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForURL(`${demo.url}/dashboard`);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL(`${demo.url}/login`);
    await page.goBack();
    await page.waitForLoadState();
    expect(page.url()).toBe(`${demo.url}/login`);
    expect(await page.locator('strong.username').count()).toBe(0);
    await page.close();
  });
});
