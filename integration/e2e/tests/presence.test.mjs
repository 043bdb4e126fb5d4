// The whole system in a real browser: Debian's Chromium, driven by playwright-core, talks to the
// gateway's TLS listener; behind it the demo login service and the presence service (both event
// modes). What is asserted is what a user sees on the page.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import { REPO, metric, startStack } from './stack.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// As root on a closed network: no sandbox, and none of Chromium's own background connections.
const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const ARTIFACTS = path.join(REPO, 'integration', 'artifacts');
const GRACE_MS = 1000;
const UI_TIMEOUT = 15_000;
// Recovery after a restart: the services start, the gateway's health check (every 2 s) finds the
// presence service again, and socket.io-client's next attempt (backoff up to 5 s) gets through.
const RECOVERY_TIMEOUT = 30_000;
// Raw error texts that belong in the console, never on screen.
const INTERNAL_CODES = /unknown_kid|unauthorized|xhr poll error|xhr post error|websocket error|transport close|transport error|io server disconnect|ping timeout/i;

const LOGINS = {
  alice: { password: 'alice-pass', name: 'Alice Archer' },
  bob: { password: 'bob-pass', name: 'Bob Baker' },
  carol: { password: 'carol-pass', name: 'Carol Cooper' },
};

/** Resolves once the page's online list shows exactly `ids` (in any order). */
async function waitForOnline(page, ids, what) {
  const want = [...ids].sort();
  try {
    await page.waitForFunction(
      (expected) => {
        const shown = [...document.querySelectorAll('[data-testid="online-users"] li')].map((li) => li.dataset.userId).sort();
        return JSON.stringify(shown) === JSON.stringify(expected);
      },
      want,
      { timeout: UI_TIMEOUT },
    );
  } catch (err) {
    const shown = await onlineIds(page).catch(() => '?');
    throw new Error(`${what}: expected online [${want}], page shows [${shown}] at ${page.url()} (${err.message.split('\n')[0]})`);
  }
}

async function onlineIds(page) {
  return (await page.locator('[data-testid="online-users"] li').evaluateAll((lis) => lis.map((li) => li.dataset.userId))).sort();
}

async function waitForConnection(page, state, timeout = UI_TIMEOUT) {
  await page.locator(`[data-testid="connection"][data-state="${state}"]`).waitFor({ timeout });
}

async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** No internal error code anywhere in the page's visible text. */
async function assertNoInternalCodes(page, what) {
  const text = await page.locator('body').innerText();
  assert.doesNotMatch(text, INTERNAL_CODES, `${what}: internal code on screen:\n${text}`);
}

/**
 * While not live the page says so in plain words, offers Retry, and the online list is greyed
 * out (or empty), so nobody trusts a stale one.
 */
async function assertNotLive(page, what) {
  const banner = page.locator('[data-testid="connection-banner"]');
  await banner.waitFor({ timeout: UI_TIMEOUT });
  assert.match(await banner.innerText(), /Reconnecting…|Can’t reach the presence service — retrying/, `${what}: banner`);
  assert.equal(await banner.locator('button:has-text("Retry")').count(), 1, `${what}: a Retry button`);
  const list = page.locator('[data-testid="online-users"]');
  assert.equal(await list.getAttribute('data-stale'), 'true', `${what}: the list is marked stale`);
  // Greyed out: wait out the fade (a CSS transition), then the list is faint, or empty.
  await page.waitForFunction(
    () => {
      const ul = document.querySelector('[data-testid="online-users"]');
      return ul.children.length === 0 || Number(getComputedStyle(ul).opacity) <= 0.5;
    },
    null,
    { timeout: UI_TIMEOUT },
  );
  await assertNoInternalCodes(page, what);
}

/** Live again: the list is trusted (not greyed), and shows exactly `ids`. */
async function assertLive(page, ids, what) {
  await waitForConnection(page, 'online', RECOVERY_TIMEOUT);
  await waitForOnline(page, ids, what);
  assert.equal(await page.locator('[data-testid="online-users"]').getAttribute('data-stale'), 'false', `${what}: list not stale`);
  assert.equal(await page.locator('[data-testid="connection-banner"]').count(), 0, `${what}: no banner while live`);
  await assertNoInternalCodes(page, what);
}

/** Logs in through the login form, as a user would, and waits for the live dashboard. */
async function logIn(context, url, user, shotName) {
  const page = await context.newPage();
  await page.goto(`${url}/login`);
  await page.locator('button[type="submit"]').waitFor({ timeout: UI_TIMEOUT });
  if (shotName) await screenshot(page, shotName);
  await page.fill('input[name="username"]', user);
  await page.fill('input[name="password"]', LOGINS[user].password);
  await page.click('button[type="submit"]');
  await page.waitForURL('**/dashboard', { timeout: UI_TIMEOUT });
  assert.equal(await page.locator('[data-testid="me"]').textContent(), LOGINS[user].name);
  await waitForConnection(page, 'online');
  return page;
}

/** Resolves once the presence service counts `n` connected sockets. */
async function waitForSockets(stack, n) {
  const deadline = Date.now() + UI_TIMEOUT;
  let seen;
  while ((seen = await metric(`${stack.presenceUrl}/metrics`, 'presence_connected_sockets')) !== n) {
    if (Date.now() > deadline) throw new Error(`presence_connected_sockets stayed ${seen}, expected ${n}`);
    await new Promise((r) => setTimeout(r, 50)); // a metric has no event to await
  }
}

/** Resolves once the presence service's metric `name` (labels included) satisfies `ok`. */
async function waitForMetric(stack, name, ok, what) {
  const deadline = Date.now() + UI_TIMEOUT;
  let seen;
  while (!ok((seen = await metric(`${stack.presenceUrl}/metrics`, name)) || 0)) {
    if (Date.now() > deadline) throw new Error(`${what}: ${name} stayed ${seen}`);
    await new Promise((r) => setTimeout(r, 50)); // a metric has no event to await
  }
}

for (const mode of ['compat', 'diff']) {
  describe(`presence through the TLS gateway (${mode} events)`, () => {
    let stack;
    let browser;
    let alice;
    let bobContext;
    let bob;

    before(async () => {
      stack = await startStack({ mode, graceMs: GRACE_MS });
      browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
    });

    after(async () => {
      await browser?.close();
      await stack?.stop();
    });

    const newContext = () => browser.newContext({ ignoreHTTPSErrors: true });

    test('alice logs in and sees only herself', async () => {
      alice = await logIn(await newContext(), stack.url, 'alice', `login-${mode}`);
      await waitForOnline(alice, ['alice'], 'alice alone');
      await assertNoInternalCodes(alice, 'dashboard');
    });

    test('bob logs in in a second browser context and both see each other', async () => {
      bobContext = await newContext();
      bob = await logIn(bobContext, stack.url, 'bob');
      await waitForOnline(bob, ['alice', 'bob'], 'bob sees both');
      await waitForOnline(alice, ['alice', 'bob'], 'alice sees bob arrive');
      await screenshot(alice, `dashboard-${mode}`);
    });

    test('bob opens a second tab and closes it: alice still sees bob', async () => {
      const second = await bobContext.newPage();
      await second.goto(`${stack.url}/dashboard`); // the session cookie restores the login
      await waitForConnection(second, 'online');
      await waitForOnline(second, ['alice', 'bob'], "bob's second tab");
      await waitForSockets(stack, 3);
      await second.close();
      await waitForSockets(stack, 2);
      // Nothing to await for "nothing happens": outlast the grace period (and a diff window), then look.
      await new Promise((r) => setTimeout(r, GRACE_MS * 2));
      assert.deepEqual(await onlineIds(alice), ['alice', 'bob']);
      assert.deepEqual(await onlineIds(bob), ['alice', 'bob']);
    });

    test('the presence service crashes: both pages say so, grey the list, and go live again when it is back', async () => {
      await stack.stopService('presence-service', 'SIGKILL');
      for (const [page, who] of [[alice, 'alice'], [bob, 'bob']]) {
        // The lost connection is retried; the attempts fail at the gateway (no upstream).
        await waitForConnection(page, 'retrying');
        await assertNotLive(page, `${who} while the presence service is down`);
      }
      await screenshot(alice, `reconnecting-${mode}`);
      await stack.startService('presence-service');
      await assertLive(alice, ['alice', 'bob'], 'alice live again');
      await assertLive(bob, ['alice', 'bob'], 'bob live again');
    });

    test('the presence service restarts without the gateway keys: pages retry its unknown_kid refusal until it has them', async () => {
      stack.jwks.publish(false);
      await stack.stopService('presence-service'); // SIGTERM: it closes its sockets
      await stack.startService('presence-service');
      const refused = `presence_rejected_handshakes_total{reason="unknown_kid"}`;
      await waitForMetric(stack, refused, (n) => n >= 2, 'both pages refused with unknown_kid');
      for (const [page, who] of [[alice, 'alice'], [bob, 'bob']]) {
        await waitForConnection(page, 'retrying');
        await assertNotLive(page, `${who} while refused with unknown_kid`);
      }
      stack.jwks.publish(true);
      // Alice's page retries by itself (socket.io-client would not: the refusal ends its
      // attempts); Bob does not wait for the next attempt and presses Retry.
      const retry = bob.locator('[data-testid="connection-banner"] button:has-text("Retry")');
      await retry.click({ timeout: 5000 }).catch(async (err) => {
        if (await retry.count()) throw err; // else bob's own scheduled retry got there first
      });
      await assertLive(bob, ['alice', 'bob'], 'bob after Retry');
      await assertLive(alice, ['alice', 'bob'], 'alice after her automatic retry');
    });

    test('a restart of the whole stack: the open pages recover by themselves, still signed in', async () => {
      await stack.stopAll();
      for (const [page, who] of [[alice, 'alice'], [bob, 'bob']]) {
        await waitForConnection(page, 'retrying');
        await assertNotLive(page, `${who} while the stack is down`);
        assert.match(page.url(), /\/dashboard$/, `${who} stays signed in while the API is unreachable`);
      }
      await stack.startAll();
      await assertLive(alice, ['alice', 'bob'], 'alice after the restart');
      await assertLive(bob, ['alice', 'bob'], 'bob after the restart');
      await waitForSockets(stack, 2);
    });

    test('bob logs out and alice sees him leave', async () => {
      await bob.click('button:has-text("Log out")');
      await bob.waitForURL('**/login', { timeout: UI_TIMEOUT });
      await bob.locator('[data-testid="signed-out-notice"]:has-text("You have been signed out")').waitFor({ timeout: UI_TIMEOUT });
      await screenshot(bob, `signed-out-${mode}`);
      await waitForOnline(alice, ['alice'], 'alice sees bob leave');
      // The session is gone: a reload of /dashboard lands on /login.
      await bob.goto(`${stack.url}/dashboard`);
      await bob.waitForURL('**/login', { timeout: UI_TIMEOUT });
    });

    test('a logout that leaves the socket open still takes the user offline', async () => {
      const carol = await logIn(await newContext(), stack.url, 'carol');
      await waitForOnline(alice, ['alice', 'carol'], 'alice sees carol arrive');
      // Log out behind the app's back: the page keeps its socket; the gateway must end it.
      const status = await carol.evaluate(async () => (await fetch('/api/auth/logout', { method: 'POST' })).status);
      assert.equal(status, 200);
      await waitForOnline(alice, ['alice'], 'alice sees carol leave');
      // Carol's page learns its socket was ended by the server and goes back to the login form.
      await carol.waitForURL('**/login', { timeout: UI_TIMEOUT });
      await carol.locator('[data-testid="signed-out-notice"]:has-text("You have been signed out")').waitFor({ timeout: UI_TIMEOUT });
      await assertNoInternalCodes(carol, "carol's sign-in page");
    });

    test('an anonymous visitor of /dashboard lands on /login and its socket handshake is refused', async () => {
      const page = await (await newContext()).newPage();
      await page.goto(`${stack.url}/dashboard`);
      await page.waitForURL('**/login', { timeout: UI_TIMEOUT });
      assert.equal(await page.locator('[data-testid="online-users"]').count(), 0);

      const polling = await page.evaluate(async () => (await fetch('/socket.io/?EIO=4&transport=polling')).status);
      assert.equal(polling, 401, 'polling handshake without a session');
      const websocket = await page.evaluate(
        () =>
          new Promise((resolve) => {
            const ws = new WebSocket(`wss://${location.host}/socket.io/?EIO=4&transport=websocket`);
            ws.onopen = () => resolve('opened');
            ws.onerror = () => resolve('refused');
          }),
      );
      assert.equal(websocket, 'refused', 'websocket handshake without a session');
      assert.deepEqual(await onlineIds(alice), ['alice'], 'nobody joined');
    });
  });
}
