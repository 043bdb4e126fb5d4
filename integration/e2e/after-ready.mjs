// README's first command, then a browser, with nothing in between: starts integration/dev-stack.sh,
// and the moment it prints "ready" a real Chromium logs in through the gateway and must reach the
// live dashboard without one socket being refused after "ready". Then the stack is stopped
// (Ctrl-C) and, with a count, all of it again.
//
//   node integration/e2e/after-ready.mjs [ROUNDS]     # default 1; SKIP_BUILD=1 is passed through
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ROUNDS = Number(process.argv[2] || 1);
const PRESENCE_METRICS = 'http://127.0.0.1:3001/metrics';
const URL = 'https://localhost:8443';
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** Every socket refusal the presence service counted so far, summed over reasons. */
async function refusals() {
  const text = await (await fetch(PRESENCE_METRICS)).text();
  return text.split('\n').filter((l) => l.startsWith('presence_rejected_handshakes_total'))
    .reduce((n, l) => n + Number(l.split(' ').pop()), 0);
}

function startStack() {
  const child = spawn(path.join(REPO, 'integration/dev-stack.sh'), [], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let log = '';
  const ready = new Promise((ok, bad) => {
    const on = (d) => { log += d; if (/\[dev-stack\]\S* ready\b/.test(log.replace(/\x1b\[[0-9;]*m/g, ''))) ok(); };
    child.stdout.on('data', on);
    child.stderr.on('data', (d) => { log += d; });
    child.once('exit', (code) => bad(new Error(`dev-stack.sh exited (${code}) before ready:\n${log.slice(-2000)}`)));
  });
  const stop = async () => {
    const gone = new Promise((ok) => child.once('exit', ok));
    process.kill(-child.pid, 'SIGINT');
    await gone;
  };
  return { ready, stop, log: () => log };
}

async function round(i) {
  const stack = startStack();
  const t0 = Date.now();
  await stack.ready;
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: FLAGS });
  try {
    const before = await refusals();
    const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
    await page.goto(`${URL}/login`);
    await page.fill('input[name="username"]', 'alice');
    await page.fill('input[name="password"]', 'alice-pass');
    await page.click('button[type="submit"]');
    await page.locator('[data-testid="connection"][data-state="online"]').waitFor({ timeout: 15000 });
    await page.locator('[data-testid="online-users"] li[data-user-id="alice"]').waitFor({ timeout: 15000 });
    const refused = (await refusals()) - before;
    console.log(`round ${i}: ready after ${((Date.now() - t0) / 1000).toFixed(1)} s; page live; ${refused} sockets refused after ready`);
    if (refused !== 0) throw new Error(`round ${i}: ${refused} sockets refused after ready`);
  } finally {
    await browser.close();
    await stack.stop();
  }
}

let failed = 0;
for (let i = 1; i <= ROUNDS; i++) {
  try { await round(i); } catch (e) { failed++; console.log(`not ok: ${e.message}`); }
}
console.log(`${ROUNDS - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
