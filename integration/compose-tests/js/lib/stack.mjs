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
 * The service whose network the tests reach the presence instances from: they sit on the
 * stack's `internal` network only, which the gateway shares with them (the apps do not).
 */
export const INSIDE = 'gateway';

/**
 * The image whose node runs requests inside the stack's networks: the Express app's, the one
 * runtime image with an interpreter (the Rust images hold their binary and healthprobe only, no
 * curl). It runs as a throwaway container in the network namespace of a service's container, so
 * a request leaves from that very container's addresses and networks.
 */
const PROBE_IMAGE = `${process.env.IMAGE_PREFIX || 'edge'}/express-service:${process.env.IMAGE_TAG || 'dev'}`;

/**
 * Runs `fn(...args)` (a self-contained async function: it is sent as source text) with node in
 * the network namespace of `from`'s container, and returns what it resolves to (JSON).
 */
export async function runInside(from, fn, ...args) {
  const id = (await compose('ps', '-q', from)).trim();
  if (!id) throw new Error(`no container for ${from}`);
  const script = `const fn = ${fn.toString()};
fn(...JSON.parse(process.argv[1])).then(
  (r) => process.stdout.write(JSON.stringify(r ?? null)),
  (e) => { console.error(e); process.exit(1); });`;
  const out = await docker('run', '--rm', '--network', `container:${id}`, '--entrypoint', 'node',
    PROBE_IMAGE, '-e', script, JSON.stringify(args));
  return JSON.parse(out);
}

/** GET requests, in order, with a per-request deadline: each gives its status and body, or 0. */
async function getAll(requests, timeoutMs) {
  const results = [];
  for (const { url, headers } of requests) {
    try {
      const res = await fetch(url, { headers, signal: AbortSignal.timeout(timeoutMs) });
      results.push({ status: res.status, body: await res.text() });
    } catch (err) {
      results.push({ status: 0, body: String(err.cause?.code ?? err.name) });
    }
  }
  return results;
}

/** Status of a GET from inside a compose container (default: on the presence network); 0 = no answer. */
export async function statusInside(url, headers = {}, { from = INSIDE, timeoutMs = 5_000 } = {}) {
  const [status] = await statusesInside([url], { headers, from, timeoutMs });
  return status;
}

/** `statusInside` for several URLs, one after the other in one throwaway container. */
export async function statusesInside(urls, { headers = {}, from = INSIDE, timeoutMs = 5_000 } = {}) {
  const results = await runInside(from, getAll, urls.map((url) => ({ url, headers })), timeoutMs);
  return results.map((r) => r.status);
}

/** `redis-cli` in the redis container as its `admin` ACL user. */
export async function redisCli(...args) {
  return redisCliAs('admin', ...args);
}

/**
 * `redis-cli` in the redis container as one of its ACL users (redis-users.acl: admin, gateway,
 * presence, express), with that user's password from the secret the redis container mounts.
 * redis-cli prints a refusal (NOPERM, NOAUTH) and still exits 0: read the output.
 */
export async function redisCliAs(user, ...args) {
  return compose('exec', '-T', 'redis', 'sh', '-c',
    'REDISCLI_AUTH="$(head -n1 "/run/secrets/redis_$0_password")" exec redis-cli --no-auth-warning --user "$0" "$@"',
    user, ...args);
}

/** Redis's `ACL LOG` (read as admin): { reason, object, username } per entry, newest first. */
export async function aclLog() {
  // redis-cli without a terminal prints every element of the nested reply on its own line; each
  // entry is field, value, field, value, ...
  // Without a count ACL LOG returns only the latest ten.
  const lines = (await redisCli('ACL', 'LOG', '1000')).split('\n');
  const entries = [];
  let current = null;
  for (let i = 0; i < lines.length - 1; i += 1) {
    if (lines[i] === 'count') { current = {}; entries.push(current); }
    if (current && ['reason', 'object', 'username'].includes(lines[i])) current[lines[i]] = lines[i + 1];
  }
  return entries;
}

/**
 * What Redis's ACL refused a service since its last start or `ACL LOG RESET`: commands, keys or
 * channels outside a user's rules (integration/docker/redis-users.acl), as "user reason object"
 * strings. Failed logins (reason "auth") are left out: the tests make those on purpose.
 */
export async function aclDenials() {
  return (await aclLog()).filter((e) => e.reason !== 'auth').map((e) => `${e.username} ${e.reason} ${e.object}`);
}

/**
 * A whole Socket.IO connect over long-polling, by hand inside the compose network, straight to a
 * presence instance (no gateway): the Engine.IO handshake, the CONNECT packet ("40"), then polls
 * until one carries the namespace's answer ("40{sid}" accepted, "44{...}" refused). Returns the
 * packets those polls carried (pings among them), joined by the record separator.
 */
export async function socketioConnectInside(instance, headers = {}) {
  return runInside(INSIDE, async (host, hdrs) => {
    const base = `http://${host}:3001/socket.io/?EIO=4&transport=polling`;
    const ask = async (url, init = {}) => {
      const res = await fetch(url, { ...init, headers: { ...hdrs, ...init.headers }, signal: AbortSignal.timeout(5000) });
      const text = await res.text();
      if (!res.ok) throw new Error(`${init.method ?? 'GET'} ${url}: ${res.status} ${text}`);
      return text;
    };
    const open = await ask(base);
    const sid = /"sid":"([^"]*)"/.exec(open)?.[1];
    if (!sid) throw new Error(`no sid in: ${open}`);
    await ask(`${base}&sid=${sid}`, { method: 'POST', headers: { 'content-type': 'text/plain;charset=UTF-8' }, body: '40' });
    // The answer to the CONNECT may come after a ping (2 s apart in the compose configs) that
    // a poll returns alone: poll until a Socket.IO packet arrives, a few times at most.
    const packets = [];
    for (let i = 0; i < 5 && !packets.some((p) => p.startsWith('4')); i += 1) {
      packets.push(...(await ask(`${base}&sid=${sid}`)).trim().split('\x1e'));
    }
    return packets.join('\x1e');
  }, instance, headers);
}

/** Sums a metric's samples over labels; null when /metrics has no line for it. */
function metricValue(text, name) {
  let total = 0;
  let seen = false;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) {
      total += Number(line.trim().split(/\s+/).pop());
      seen = true;
    }
  }
  return seen ? total : null;
}

/** The /metrics text of each presence instance, read inside the network in one probe run. */
async function presenceMetricsText(instances) {
  const results = await runInside(INSIDE, getAll,
    instances.map((i) => ({ url: `http://${i}:3001/metrics`, headers: {} })), 5_000);
  return results.map((r, k) => {
    if (r.status !== 200) throw new Error(`${instances[k]} /metrics: ${r.status} ${r.body}`);
    return r.body;
  });
}

/**
 * A gauge or counter from one presence instance's /metrics, read inside the network, summed over
 * labels. A labelled counter has no line until its first increment: that reads as 0.
 */
export async function presenceMetric(instance, name) {
  const [text] = await presenceMetricsText([instance]);
  const value = metricValue(text, name);
  if (value === null && !name.endsWith('_total')) throw new Error(`${instance} /metrics has no ${name}`);
  return value ?? 0;
}

/** Sockets connected to each presence instance right now. */
export async function socketsPerInstance() {
  const [a, b] = (await presenceMetricsText(['presence-a', 'presence-b']))
    .map((text) => metricValue(text, 'presence_connected_sockets'));
  if (a === null || b === null) throw new Error('a presence instance has no presence_connected_sockets');
  return { a, b };
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
