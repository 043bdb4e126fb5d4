// Starts the real stack for one test run: demo-service, presence-service and the gateway (TLS),
// each on a free loopback port, with their own config files, dev certificate, signing key and
// SQLite file in a fresh temp folder. Everything started here is stopped by PID in stop(); a test
// can also stop and start one service, or all of them, on the same ports (stopService, startAll).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../lib/free-port.mjs';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const BIN = path.join(REPO, 'target', 'debug');
// E2E_WEB_DIST: test another build of the page (say, an older one) without touching web/dist.
const WEB_DIST = process.env.E2E_WEB_DIST || path.join(REPO, 'integration', 'web', 'dist');


const client = (url) => (url.startsWith('https:') ? https : http);

/** GET `url` (self-signed TLS accepted); resolves to the status code, or null on a network error. */
function probe(url) {
  return new Promise((resolve) => {
    const req = client(url).get(url, { rejectUnauthorized: false, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(null));
    req.on('timeout', () => req.destroy());
  });
}

/** GET `url` and return its status and body as text. */
export function getText(url) {
  return new Promise((resolve, reject) => {
    client(url)
      .get(url, { rejectUnauthorized: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      })
      .on('error', reject);
  });
}

/** Resolves once `url` answers 2xx; fails early if `child` exits, or after `timeoutMs`. */
async function waitReady(name, url, child, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${name} exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${child.logTail()}`);
    }
    const status = await probe(url);
    if (status !== null && status >= 200 && status < 300) return;
    if (Date.now() > deadline) throw new Error(`${name} not ready at ${url} after ${timeoutMs} ms:\n${child.logTail()}`);
    await new Promise((r) => setTimeout(r, 100)); // readiness polling: no event exists to await
  }
}

function gatewayToml({ tls, admin, demo, presence }) {
  return `# written by integration/e2e/tests/stack.mjs
[gateway]
id = "edge-gateway"
shutdown_grace_secs = 0
shutdown_timeout_secs = 2

[admin]
listen = "127.0.0.1:${admin}"

[[listener]]
listen = "127.0.0.1:${tls}"
[listener.tls]
cert = "certs/server.crt"
key = "certs/server.key"
generate_dev_cert = true

[[assertion.keys]]
kid = "e2e-1"
private_key = { file = "certs/assertion-signing.pem" }
generate_if_missing = true

[session]
flavour = "tower-sessions"
cookie = "id"
user_id_field = "axum-login.data.user_id"
display_name_field = "display_name"
[session.store]
kind = "sqlite"
path = "sessions.db"

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["127.0.0.1:${presence}"]
auth = "socketio-handshake"
audience = "presence-service"

[[route]]
name = "demo"
path_prefix = "/"
upstreams = ["127.0.0.1:${demo}"]
[route.logout]
path = "/api/auth/logout"
notify = ["http://127.0.0.1:${presence}/internal/sessions/ended"]
audience = "presence-service"
`;
}

/**
 * The presence service reads the gateway's keys through this relay, so a test can hold them
 * back (`publish(false)`: 503) and see what a page does while the service answers every
 * handshake with `unauthorized: unknown_kid`, as after a start before the gateway's.
 */
async function startJwksRelay(port, adminPort) {
  let published = true;
  const server = http.createServer((req, res) => {
    if (!published) {
      res.writeHead(503, { 'content-type': 'text/plain' });
      return res.end('keys not published yet\n');
    }
    const upstream = http.get(`http://127.0.0.1:${adminPort}/.well-known/jwks.json`, (up) => {
      res.writeHead(up.statusCode, { 'content-type': up.headers['content-type'] || 'application/json' });
      up.pipe(res);
    });
    upstream.on('error', () => {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end('gateway unreachable\n');
    });
    return undefined;
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  return {
    publish: (yes) => {
      published = yes;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

function presenceToml({ presence, jwks, mode, graceMs }) {
  return `# written by integration/e2e/tests/stack.mjs
[server]
listen = "127.0.0.1:${presence}"
[trust]
jwks_url = "http://127.0.0.1:${jwks}/.well-known/jwks.json"
jwks_refetch_min_interval_ms = 200
[presence]
mode = "${mode}"
grace_ms = ${graceMs}
`;
}

/**
 * @param {{ mode: 'compat' | 'diff', graceMs: number }} options
 */
export async function startStack({ mode, graceMs }) {
  for (const bin of ['gateway', 'presence-service', 'demo-service']) {
    if (!fs.existsSync(path.join(BIN, bin))) {
      throw new Error(`${BIN}/${bin} is missing: run \`cargo build -p gateway -p presence-service -p demo-service\` first`);
    }
  }
  if (!fs.existsSync(path.join(WEB_DIST, 'index.html'))) {
    throw new Error(`${WEB_DIST}/index.html is missing: run \`npm ci && npm run build\` in integration/web first`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `e2e-stack-${mode}-`));
  const ports = { tls: await freePort(), admin: await freePort(), demo: await freePort(), presence: await freePort(), jwks: await freePort() };
  fs.writeFileSync(path.join(dir, 'gateway.toml'), gatewayToml(ports));
  fs.writeFileSync(path.join(dir, 'presence.toml'), presenceToml({ ...ports, mode, graceMs }));

  // Each service's command line and readiness URLs: the same ports every time, so a service can
  // be stopped and started again (a crash, a restart of the whole stack) behind an open page.
  const services = {
    'demo-service': {
      args: ['--listen', `127.0.0.1:${ports.demo}`, '--sessions-db', 'sessions.db', '--web-dist', WEB_DIST],
      ready: [`http://127.0.0.1:${ports.demo}/healthz`],
    },
    'presence-service': { args: ['--config', 'presence.toml'], ready: [`http://127.0.0.1:${ports.presence}/healthz`] },
    gateway: {
      args: ['--config', 'gateway.toml'],
      ready: [`http://127.0.0.1:${ports.admin}/readyz`, `https://localhost:${ports.tls}/healthz`],
    },
  };
  const running = new Map(); // name -> child process
  const jwks = await startJwksRelay(ports.jwks, ports.admin);

  const spawnService = (name) => {
    const logPath = path.join(dir, `${name}.log`);
    const log = fs.openSync(logPath, 'a');
    const child = spawn(path.join(BIN, name), services[name].args, {
      cwd: dir,
      stdio: ['ignore', log, log],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    });
    fs.closeSync(log);
    child.logTail = () => fs.readFileSync(logPath, 'utf8').split('\n').slice(-30).join('\n');
    child.stackName = name;
    running.set(name, child);
    return child;
  };
  const ready = async (name) => {
    for (const url of services[name].ready) await waitReady(name, url, running.get(name));
  };

  /** Stops one service by PID (SIGTERM, or `signal`) and resolves once it has exited. */
  const stopService = async (name, signal = 'SIGTERM') => {
    const child = running.get(name);
    running.delete(name);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };

  /** Starts a stopped service again, on its old port, and resolves once it is ready. */
  const startService = async (name) => {
    if (running.has(name)) throw new Error(`${name} is already running`);
    spawnService(name);
    await ready(name);
  };

  const stop = async () => {
    for (const name of ['gateway', 'presence-service', 'demo-service']) await stopService(name);
    await jwks.close();
    if (!process.env.E2E_KEEP_TMP) fs.rmSync(dir, { recursive: true, force: true });
  };

  /** Starts the three services in order: the demo service creates the sessions table first. */
  const startAll = async () => {
    spawnService('demo-service');
    await ready('demo-service');
    spawnService('presence-service');
    spawnService('gateway');
    await ready('presence-service');
    await ready('gateway');
  };

  try {
    await startAll();
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    url: `https://localhost:${ports.tls}`,
    adminUrl: `http://127.0.0.1:${ports.admin}`,
    presenceUrl: `http://127.0.0.1:${ports.presence}`,
    dir,
    stop,
    stopService,
    startService,
    /** Stops every service (SIGTERM, gateway first) and resolves once all have exited. */
    stopAll: async () => {
      for (const name of ['gateway', 'presence-service', 'demo-service']) await stopService(name);
    },
    startAll,
    jwks,
  };
}

/** Current value of a Prometheus gauge/counter (no labels) from a /metrics page. */
export async function metric(url, name) {
  const { body } = await getText(url);
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}
