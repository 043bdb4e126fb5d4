// What every test file needs to talk to the compose stack from the host: HTTPS requests that trust
// the stack's development CA, logins against both backends, real socket.io-client connections
// through the gateway, and `docker compose` commands for the failure tests.
//
// The stack is started by integration/docker/run-suite.sh, which exports:
//   GATEWAY_URL       https://127.0.0.1:<port>, the one gateway: the Express app under /express/,
//                     the demo service at /, presence at /socket.io/ (either app's cookie admits)
//   CA_FILE           the gateway's development CA
//   COMPOSE           the compose command ("docker-compose" or "docker compose"), with
//                     COMPOSE_FILE and COMPOSE_PROJECT_NAME set in the environment.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { promisify } from 'node:util';
import { io } from 'socket.io-client';

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the suite through integration/docker/run-suite.sh`);
  return value;
}

export const GATEWAY_URL = required('GATEWAY_URL');
/** Where the gateway mounts the Express app (config/compose/gateway.toml, route "express"). */
export const EXPRESS_PREFIX = '/express';
const ca = readFileSync(required('CA_FILE'));

/** One HTTPS request; resolves with status, headers and the body as text. */
export function request(base, path, { method = 'GET', body, cookie, headers = {} } = {}) {
  const url = new URL(path, base);
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = https.request(url, {
      method,
      ca,
      agent: false,
      headers: {
        ...(payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
        ...(cookie ? { cookie } : {}),
        ...headers,
      },
      timeout: 10_000,
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: text }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} timed out`)));
    req.on('error', reject);
    req.end(payload);
  });
}

/** The `name=value` pair of a Set-Cookie header, ready for a Cookie header. */
function cookiePair(res, name) {
  const header = [res.headers['set-cookie'] ?? []].flat().find((c) => c.startsWith(`${name}=`));
  if (!header) throw new Error(`no ${name} cookie in ${JSON.stringify(res.headers)}`);
  return header.split(';')[0];
}

/** Logs in to the Express app through the gateway (any name, password "pw"); returns the cookie. */
export async function loginExpress(user) {
  const res = await request(GATEWAY_URL, `${EXPRESS_PREFIX}/api/auth/login`, {
    method: 'POST', body: { username: user, password: 'pw' },
  });
  if (res.status !== 200) throw new Error(`express login ${user}: ${res.status} ${res.body}`);
  return cookiePair(res, 'connect.sid');
}

/** Logs in to the demo service through the gateway (password "<user>-pass"); returns the cookie. */
export async function loginDemo(user) {
  const res = await request(GATEWAY_URL, '/api/auth/login', {
    method: 'POST', body: { username: user, password: `${user}-pass` },
  });
  if (res.status !== 200) throw new Error(`demo login ${user}: ${res.status} ${res.body}`);
  return cookiePair(res, 'id');
}

/** A Socket.IO handshake request by hand, to read the gateway's status code. */
export function handshake(cookie) {
  return request(GATEWAY_URL, '/socket.io/?EIO=4&transport=polling', cookie ? { cookie } : {});
}

/**
 * A socket.io-client connection through the gateway, with the presence list it has seen so far.
 * `waitFor(pred)` resolves as soon as an event makes `pred(client)` true: tests await events,
 * never sleep.
 */
const everyClient = new Set();

/** Closes every client made in this process; each test file calls it in `after`. */
export function closeAllClients() {
  for (const c of everyClient) c.close();
  everyClient.clear();
}

export class PresenceClient {
  constructor(base, cookie, { transports = ['websocket'], reconnection = false, label = '' } = {}) {
    everyClient.add(this);
    this.label = label;
    this.online = new Map();
    this.events = [];
    this.connects = 0;
    this.disconnects = [];
    this.waiters = new Set();
    this.socket = io(base, {
      transports,
      reconnection,
      reconnectionDelay: 200,
      reconnectionDelayMax: 1000,
      extraHeaders: cookie ? { cookie } : {},
      ca,
      forceNew: true,
      timeout: 10_000,
    });
    const record = (name, list) => (payload) => {
      this.events.push({ name, payload, at: Date.now() });
      this.online = new Map((payload?.[list] ?? []).map((u) => [u.id, u]));
      this.notify();
    };
    this.socket.on('online_users', record('online_users', 'onlineUsers'));
    this.socket.on('user_connected', record('user_connected', 'onlineUsers'));
    this.socket.on('user_disconnected', record('user_disconnected', 'onlineUsers'));
    this.socket.on('connect', () => { this.connects += 1; this.notify(); });
    this.socket.on('disconnect', (reason) => { this.disconnects.push({ reason, at: Date.now() }); this.notify(); });
    this.socket.on('connect_error', (err) => { this.connectError = err; this.notify(); });
  }

  ids() { return [...this.online.keys()].sort(); }

  notify() {
    for (const w of this.waiters) w();
  }

  waitFor(pred, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const check = () => {
        let ok = false;
        try { ok = pred(this); } catch (err) { finish(); reject(err); return; }
        if (ok) { finish(); resolve(this); }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`${this.label}: timed out after ${timeoutMs} ms waiting for ${what}; `
          + `connected=${this.socket.connected} online=[${this.ids()}] `
          + `connectError=${this.connectError?.message ?? '-'} disconnects=${JSON.stringify(this.disconnects)}`));
      }, timeoutMs);
      const finish = () => { clearTimeout(timer); this.waiters.delete(check); };
      this.waiters.add(check);
      check();
    });
  }

  connected(timeoutMs = 10_000) {
    return this.waitFor((c) => {
      if (c.socket.connected) return true;
      if (c.connectError && !c.socket.io._reconnection) throw new Error(`${c.label}: connect_error ${c.connectError.message}`);
      return false;
    }, timeoutMs, 'connect');
  }

  /** Resolves with the ack of `get_online_users`: one request/response round trip. */
  ask(timeoutMs = 5_000) {
    return this.socket.timeout(timeoutMs).emitWithAck('get_online_users');
  }

  close() { this.socket.disconnect(); }
}

/** Connects and waits for the first `online_users` snapshot. */
export async function connectClient(base, cookie, opts) {
  const client = new PresenceClient(base, cookie, opts);
  try {
    await client.connected();
    await client.waitFor((c) => c.events.some((e) => e.name === 'online_users'), 10_000, 'online_users snapshot');
  } catch (err) {
    client.close(); // a reconnecting client left behind would keep the test process alive
    throw err;
  }
  return client;
}

const exec = promisify(execFile);

/** Runs a compose command (the runner's COMPOSE, with COMPOSE_FILE/PROJECT_NAME from env). */
export async function compose(...args) {
  const [cmd, ...pre] = (process.env.COMPOSE || 'docker-compose').split(' ');
  const { stdout } = await exec(cmd, [...pre, ...args], { maxBuffer: 16 << 20, timeout: 120_000 });
  return stdout;
}

/** Runs the runner's docker CLI. */
export async function docker(...args) {
  const { stdout } = await exec(process.env.DOCKER || 'docker', args, { maxBuffer: 16 << 20, timeout: 120_000 });
  return stdout;
}

/**
 * The container the tests run curl in to reach the presence instances: they sit on the stack's
 * `internal` network only, which the gateway shares with them (the apps do not).
 */
export const INSIDE = 'gateway';

/** `curl` from inside a compose container (default: on the presence network); 0 = no answer. */
export async function curlInside(url, headers = {}, { from = INSIDE, maxTime = 5 } = {}) {
  const hdrs = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  const script = 'curl -s -o /dev/null --max-time "$0" -w %{http_code} "$@" || true';
  const out = await compose('exec', '-T', from, 'sh', '-c', script, String(maxTime), ...hdrs, url);
  return Number(out.trim() || 0);
}

/** `redis-cli` in the redis container, authenticated with the stack's password secret. */
export async function redisCli(...args) {
  return compose('exec', '-T', 'redis', 'sh', '-c',
    'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" exec redis-cli "$@"', 'redis-cli', ...args);
}

/**
 * A whole Socket.IO connect over long-polling, by hand with curl inside the compose network,
 * straight to a presence instance (no gateway): the Engine.IO handshake, the CONNECT packet
 * ("40"), then the poll that carries the namespace's answer ("40{sid}" accepted, "44{...}"
 * refused). Returns that answer.
 */
export async function socketioConnectInside(instance, headers = {}) {
  const hdrs = Object.entries(headers).map(([k, v]) => `-H '${k}: ${v}'`).join(' ');
  const script = `set -e
base='http://${instance}:3001/socket.io/?EIO=4&transport=polling'
open=$(curl -fsS ${hdrs} "$base")
sid=$(printf '%s' "$open" | sed -n 's/.*"sid":"\\([^"]*\\)".*/\\1/p')
test -n "$sid" || { echo "no sid in: $open"; exit 1; }
curl -fsS -o /dev/null -X POST -H 'content-type: text/plain;charset=UTF-8' --data '40' "$base&sid=$sid"
curl -fsS "$base&sid=$sid"`;
  return (await compose('exec', '-T', INSIDE, 'sh', '-c', script)).trim();
}

/**
 * A gauge or counter from one presence instance's /metrics, read inside the network, summed over
 * labels. A labelled counter has no line until its first increment: that reads as 0.
 */
export async function presenceMetric(instance, name) {
  const text = await compose('exec', '-T', INSIDE, 'curl', '-fsS', `http://${instance}:3001/metrics`);
  let total = 0;
  let seen = false;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) {
      total += Number(line.trim().split(/\s+/).pop());
      seen = true;
    }
  }
  if (!seen && !name.endsWith('_total')) throw new Error(`${instance} /metrics has no ${name}`);
  return total;
}

/** Sockets connected to each presence instance right now. */
export async function socketsPerInstance() {
  return {
    a: await presenceMetric('presence-a', 'presence_connected_sockets'),
    b: await presenceMetric('presence-b', 'presence_connected_sockets'),
  };
}

/**
 * Waits until no socket of an earlier test is left on either instance (a client's close reaches
 * the server a moment later), so that counts taken afterwards are this test's own.
 */
export async function untilNoSockets() {
  await eventually(async () => {
    const s = await socketsPerInstance();
    return (s.a === 0 && s.b === 0) || JSON.stringify(s);
  }, 15_000, 'no sockets left from earlier tests');
}

/** Polls `probe` until it returns true; for states only observable by asking (HTTP status). */
export async function eventually(probe, timeoutMs, what, everyMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last === true) return;
    } catch (err) {
      last = err.message;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => { setTimeout(r, everyMs); });
  }
}

/** Waits until a compose service's container reports healthy. */
export async function serviceHealthy(service, timeoutMs = 60_000) {
  await eventually(async () => {
    const id = (await compose('ps', '-q', service)).trim();
    const state = (await docker('inspect', '--format', '{{.State.Health.Status}}', id)).trim();
    return state === 'healthy' || state;
  }, timeoutMs, `${service} healthy`, 500);
}

/** Unique user names per test run, so the presence lists of different tests never mix. */
export function users(prefix, n) {
  const run = Math.random().toString(36).slice(2, 7);
  return Array.from({ length: n }, (_, i) => `${prefix}-${run}-${i}`);
}

/** Reads a number from a compose presence config, so bounds in tests follow the config. */
export function presenceSetting(key) {
  const text = readFileSync(new URL('../../../../config/compose/presence-a.toml', import.meta.url), 'utf8');
  const m = text.match(new RegExp(`^${key}\\s*=\\s*(\\d+)`, 'm'));
  if (!m) throw new Error(`config/compose/presence-a.toml has no ${key}`);
  return Number(m[1]);
}
