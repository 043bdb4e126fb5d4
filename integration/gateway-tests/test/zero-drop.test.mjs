// Zero-drop operations with real clients: Engine.IO long-polling sessions
// that keep their node through two gateway processes serving them alternately, through a
// gateway restart and through a binary upgrade (the official socket.io-client with
// `transports: ['polling']`, and python-socketio); and the presence service's paced drain.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { io } from 'socket.io-client';
import {
  freePort, until, startRedis, startSocketIoUpstream, storeExpressSession, expressCookie,
  stopAll, gatewayBin,
} from './harness.mjs';

const repo = path.resolve(import.meta.dirname, '../../..');
const presenceBin = process.env.PRESENCE_BIN || path.join(repo, 'target/debug/presence-service');
const python = process.env.PYTHON || path.join(repo, 'var/venv-presence/bin/python');
const SECRET = 'the secret key';

let redis;
const children = new Set();
/** Closes whatever a test left open if it failed half-way (clients, the TCP front). */
const cleanups = [];
process.on('exit', () => { for (const c of children) try { c.kill('SIGKILL'); } catch {} });

before(async () => {
  redis = await startRedis(fs.mkdtempSync(path.join(os.tmpdir(), 'gw-redis-')));
});
after(async () => {
  for (const f of cleanups.splice(0)) try { await f(); } catch {}
  for (const c of children) try { c.kill('SIGKILL'); } catch {}
  await stopAll();
});

function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve(child.exitCode)
    : new Promise(ok => child.once('exit', code => ok(code)));
}

/** A gateway config: plain listener, express sessions in Redis, one Socket.IO route. */
function gatewayConfig({ dir, port, admin, upstreams, extraGateway = '' }) {
  return `
[gateway]
threads = 1
shutdown_grace_secs = 0
shutdown_timeout_secs = 2
drain_secs = 2
upgrade_sock = "${path.join(dir, 'upgrade.sock')}"
${extraGateway}

[admin]
listen = "127.0.0.1:${admin}"

[[listener]]
listen = "127.0.0.1:${port}"

[[assertion.keys]]
kid = "js-1"
private_key = { file = "${path.join(dir, '..', 'signing.pem')}" }
generate_if_missing = true

[affinity]
keys = [{ value = "shared by every gateway process of this test" }]

[session]
flavour = "express"
secrets = [{ value = "${SECRET}" }]
store = { kind = "redis", url = "${redis.url}", prefix = "sess:" }

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = [${upstreams.map(u => `"${u}"`).join(', ')}]
auth = "socketio-handshake"
audience = "presence-service"
health_check_interval_secs = 1
`;
}

/** Starts a gateway process on `config` (optionally `--upgrade`), waiting until it serves. */
async function startGatewayProcess(dir, config, { upgrade = false, name = 'gw' } = {}) {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'gateway.toml');
  fs.writeFileSync(file, config);
  const log = path.join(dir, `${name}.log`);
  const args = ['--config', file, ...(upgrade ? ['--upgrade'] : [])];
  const child = track(spawn(gatewayBin, args, {
    stdio: ['ignore', 'ignore', fs.openSync(log, 'w')],
    env: { ...process.env, RUST_LOG: 'info,pingora_proxy=off' },
  }));
  return { child, log, text: () => fs.readFileSync(log, 'utf8') };
}

async function serving(admin) {
  await until('gateway ready', async () => (await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 200, 20000);
}

/**
 * A TCP front that sends each new connection to the next gateway in turn (skipping one that
 * refuses): two gateway processes serving the same clients alternately.
 */
async function alternatingFront(ports) {
  const port = await freePort();
  let next = 0;
  const sockets = new Set();
  const out = new Set();
  const server = net.createServer(client => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    const attempt = (tries) => {
      const live = ports.filter(p => !out.has(p));
      const target = live[next++ % live.length];
      const upstream = net.connect(target, '127.0.0.1');
      upstream.once('connect', () => {
        client.pipe(upstream).pipe(client);
      });
      upstream.once('error', () => {
        if (tries > 1 && !upstream.bytesWritten) attempt(tries - 1);
        else client.destroy();
      });
      client.once('error', () => upstream.destroy());
      client.once('close', () => upstream.destroy());
      upstream.once('close', () => client.destroy());
    };
    attempt(ports.length);
  });
  await new Promise(r => server.listen(port, '127.0.0.1', r));
  const close = () => { for (const s of sockets) s.destroy(); server.close(); };
  cleanups.push(close);
  // Like a load balancer taking a node out of rotation (and back) before a rolling restart.
  return { port, close, take: p => out.add(p), restore: p => out.delete(p) };
}

/** A polling-only official client that echoes until stopped, recording what went wrong. */
function pollingClient(url, cookie) {
  const socket = io(url, {
    transports: ['polling'], withCredentials: true, reconnection: false, timeout: 10000,
    extraHeaders: { cookie },
  });
  const c = { socket, acks: 0, failures: [], stopped: false };
  // Each failure with its time, to find it in the gateways' logs.
  const fail = what => c.failures.push(`${new Date().toISOString()} ${what}`);
  socket.on('disconnect', (reason, detail) => {
    if (!c.stopped) fail(`disconnect: ${reason} ${detail?.description?.message ?? detail?.description ?? ''}`);
  });
  socket.on('connect_error', err => fail(`connect_error: ${err.message} ${err.context?.responseText ?? ''}`));
  c.connected = new Promise((ok, bad) => {
    socket.once('whoami', ok);
    socket.once('connect_error', err => bad(new Error(`${err.message}: ${err.description?.message ?? err.description ?? ''} ${err.context?.status ?? ''} ${err.context?.responseText ?? ''}`)));
  });
  c.loop = (async () => {
    await c.connected;
    for (let i = 0; !c.stopped; i++) {
      try {
        assert.equal(await socket.timeout(8000).emitWithAck('echo', i), i);
        c.acks++;
      } catch (e) {
        if (!c.stopped) fail(`echo ${i}: ${e.message}`);
      }
      await new Promise(r => setTimeout(r, 50));
    }
  })();
  c.stop = async () => { c.stopped = true; await c.loop.catch(() => {}); socket.close(); };
  cleanups.push(() => { c.stopped = true; socket.close(); });
  return c;
}

/** python-socketio, polling only, for `seconds`; resolves with its report. */
function pythonClient(url, seconds) {
  const cookie = expressCookie('alice-session', SECRET).split('=');
  const child = track(spawn(python, [path.join(import.meta.dirname, '../python/polling_client.py'),
    url, cookie[0], cookie.slice(1).join('='), String(seconds)],
  { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '', err = '';
  child.stdout.on('data', d => { out += d; });
  child.stderr.on('data', d => { err += d; });
  const connected = new Promise((ok, bad) => {
    const on = () => { if (out.includes('connected')) { child.stdout.off('data', on); ok(); } };
    child.stdout.on('data', on);
    child.once('exit', () => bad(new Error(`python client ended before connecting: ${out} ${err}`)));
  });
  const done = exited(child).then(code => {
    const line = out.trim().split('\n').pop();
    try { return JSON.parse(line); } catch { throw new Error(`python client (exit ${code}): ${out}\n${err}`); }
  });
  return { connected, done };
}

test('python-socketio is available (the polling tests below need it)', () => {
  const r = spawnSync(python, ['-c', 'import socketio, requests']);
  assert.equal(r.status, 0, `${python} cannot import socketio: set PYTHON to a python with python-socketio (integration/presence-tests/requirements.txt)`);
});

test('polling clients keep their sessions through two gateways alternately and a gateway restart', async () => {
  const [a, b] = [await startSocketIoUpstream(), await startSocketIoUpstream()];
  await storeExpressSession(redis, 'alice-session', 'alice');
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-affinity-'));
  const ports = [await freePort(), await freePort()];
  const admins = [await freePort(), await freePort()];
  const upstreams = [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`];
  const cfg = i => gatewayConfig({ dir: path.join(base, `g${i}`), port: ports[i], admin: admins[i], upstreams });
  const gws = [];
  for (const i of [0, 1]) {
    gws[i] = await startGatewayProcess(path.join(base, `g${i}`), cfg(i));
    await serving(admins[i]);
  }
  const front = await alternatingFront(ports);
  const url = `http://127.0.0.1:${front.port}`;
  const cookie = expressCookie('alice-session', SECRET);

  const clients = Array.from({ length: 8 }, () => pollingClient(url, cookie));
  await Promise.all(clients.map(c => c.connected));
  const py = pythonClient(url, 12);
  await py.connected;
  await new Promise(r => setTimeout(r, 3000));
  // A rolling restart of gateway 0: out of the front's rotation, SIGTERM (it finishes the
  // requests in flight and exits; its memory of every sid goes with it), a new process on the
  // same ports, back in rotation. Meanwhile gateway 1 serves everything.
  front.take(ports[0]);
  gws[0].child.kill('SIGTERM');
  assert.equal(await exited(gws[0].child), 0, gws[0].text().slice(-2000));
  gws[0] = await startGatewayProcess(path.join(base, 'g0'), cfg(0), { name: 'gw-restarted' });
  await serving(admins[0]);
  front.restore(ports[0]);
  await new Promise(r => setTimeout(r, 3000));
  const report = await py.done;
  await Promise.all(clients.map(c => c.stop()));
  front.close();

  const logs = gws.map(g => g.text()).join('\n');
  for (const c of clients) {
    assert.deepEqual(c.failures, [], `official client failures: ${JSON.stringify(c.failures)}\n${logs.slice(-1500)}`);
    assert.ok(c.acks > 20, `echoes went through: ${c.acks}`);
  }
  assert.deepEqual(report.errors, [], JSON.stringify(report));
  assert.deepEqual(report.disconnects, [], JSON.stringify(report));
  assert.equal(report.missed, 0, JSON.stringify(report));
  assert.ok(report.acks > 20, JSON.stringify(report));
  assert.equal(report.affinity_cookie, true, 'python-socketio kept the affinity cookie');
  assert.doesNotMatch(logs, /status=400/, 'no request was answered 400 (Session ID unknown)');
  for (const g of gws) g.child.kill('SIGKILL');
});

test('polling clients keep their sessions through a binary upgrade', async () => {
  const [a, b] = [await startSocketIoUpstream(), await startSocketIoUpstream()];
  await storeExpressSession(redis, 'alice-session', 'alice');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-upgrade-'));
  const [port, admin] = [await freePort(), await freePort()];
  const config = gatewayConfig({ dir: path.join(dir, 'g'), port, admin, upstreams: [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`] });
  const old = await startGatewayProcess(path.join(dir, 'g'), config, { name: 'old' });
  await serving(admin);
  const url = `http://127.0.0.1:${port}`;
  const clients = Array.from({ length: 8 }, () => pollingClient(url, expressCookie('alice-session', SECRET)));
  await Promise.all(clients.map(c => c.connected));
  const py = pythonClient(url, 14);
  await py.connected;
  await new Promise(r => setTimeout(r, 1000));

  const next = await startGatewayProcess(path.join(dir, 'g'), config, { upgrade: true, name: 'new' });
  await until('the new process waits for the sockets', () => fs.existsSync(path.join(dir, 'g', 'upgrade.sock')), 20000);
  old.child.kill('SIGQUIT');
  const code = await exited(old.child);
  assert.equal(code, 0, old.text().slice(-2000));
  await new Promise(r => setTimeout(r, 2000));
  const report = await py.done;
  await Promise.all(clients.map(c => c.stop()));

  const logs = old.text() + next.text();
  for (const c of clients) {
    assert.deepEqual(c.failures, [], `official client failures: ${JSON.stringify(c.failures)}\n${logs.slice(-1500)}`);
    assert.ok(c.acks > 20, `echoes went through: ${c.acks}`);
  }
  assert.deepEqual([report.errors, report.disconnects, report.missed], [[], [], 0], JSON.stringify(report));
  assert.match(next.text(), /request/, 'the new process served requests');
  assert.doesNotMatch(logs, /status=400/, 'no request was answered 400 (Session ID unknown)');
  next.child.kill('SIGKILL');
});

/** Starts presence-service (Redis mode, trusting the gateway's JWKS); resolves with its address. */
async function startPresence(dir, { jwks, drainMs, drainRate }) {
  fs.mkdirSync(dir, { recursive: true });
  const config = path.join(dir, 'presence.toml');
  fs.writeFileSync(config, `
[server]
listen = "127.0.0.1:0"
drain_ms = ${drainMs}
drain_max_per_sec = ${drainRate}
[trust]
leeway_secs = 2
jwks_url = "${jwks}"
jwks_refetch_min_interval_ms = 200
[presence]
grace_ms = 5000
diff_window_ms = 30
[backend]
kind = "redis"
redis_url = "${redis.url}"
# One presence cluster per test (its nodes share the test's folder): the Redis is shared, and a
# test's users being reaped after it ended must not reach the next test's clients.
key_prefix = "${path.basename(path.dirname(dir))}"
heartbeat_interval_ms = 300
node_ttl_ms = 1000
op_timeout_ms = 500
`);
  const child = track(spawn(presenceBin, ['--config', config], { stdio: ['ignore', 'pipe', fs.openSync(path.join(dir, 'presence.log'), 'w')] }));
  const addr = await new Promise((ok, bad) => {
    let buf = '';
    child.stdout.on('data', d => {
      buf += d;
      const m = buf.match(/listening on (\S+)/);
      if (m) ok(m[1]);
    });
    child.once('exit', () => bad(new Error(`presence-service exited: ${fs.readFileSync(path.join(dir, 'presence.log'), 'utf8')}`)));
  });
  return { child, addr, log: () => fs.readFileSync(path.join(dir, 'presence.log'), 'utf8') };
}

/**
 * A logged-in WebSocket client through the gateway that reconnects quickly and records what it
 * saw: connects, refused attempts, disconnects (with when), who it was told left, its last list.
 */
async function watchingClient(url, sessionId, user) {
  await storeExpressSession(redis, sessionId, user);
  const socket = io(url, {
    transports: ['websocket'], extraHeaders: { cookie: expressCookie(sessionId, SECRET) },
    reconnectionDelay: 100, reconnectionDelayMax: 300, timeout: 5000,
  });
  const c = { socket, user, connects: 0, errors: [], disconnects: [], leaves: [], lastList: [] };
  const ids = users => (users ?? []).map(u => u.id);
  socket.on('connect', () => { c.connects++; });
  socket.on('connect_error', e => c.errors.push(String(e?.message ?? e)));
  socket.on('disconnect', reason => c.disconnects.push({ reason, at: Date.now() }));
  // Whichever event mode the node runs: compat events carry the whole list, diff mode changes it.
  socket.on('online_users', l => { c.lastList = ids(l.onlineUsers); });
  socket.on('user_connected', d => { c.lastList = ids(d.onlineUsers); });
  socket.on('user_disconnected', d => { c.leaves.push(d.userId); c.lastList = ids(d.onlineUsers); });
  socket.on('presence_diff', d => {
    const list = new Set(c.lastList);
    for (const u of d.joins ?? []) list.add(u.id);
    for (const id of d.leaves ?? []) { c.leaves.push(id); list.delete(id); }
    c.lastList = [...list];
  });
  cleanups.push(() => socket.close());
  return c;
}

/** Whether a client's list holds every one of `clients`' users. */
function everyoneSeen(clients) {
  const everyone = clients.map(c => c.user);
  return c => everyone.every(u => c.lastList.includes(u));
}

test('presence SIGTERM: clients move to the other node at the configured rate and nobody flaps offline', async () => {
  const USERS = 12, RATE = 4, DRAIN_MS = 3000;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'presence-drain-'));
  const [port, admin] = [await freePort(), await freePort()];
  const jwks = `http://127.0.0.1:${admin}/.well-known/jwks.json`;
  const nodes = [
    await startPresence(path.join(dir, 'p0'), { jwks, drainMs: DRAIN_MS, drainRate: RATE }),
    await startPresence(path.join(dir, 'p1'), { jwks, drainMs: DRAIN_MS, drainRate: RATE }),
  ];
  const gw = await startGatewayProcess(path.join(dir, 'g'), gatewayConfig({ dir: path.join(dir, 'g'), port, admin, upstreams: nodes.map(n => n.addr) }));
  await serving(admin);
  const url = `http://127.0.0.1:${port}`;

  const clients = [];
  for (let i = 0; i < USERS; i++) clients.push(await watchingClient(url, `drain-${i}`, `user-${i}`));
  const seesEveryone = everyoneSeen(clients);
  await until('every client connected and sees everyone', () => clients.every(c => c.connects === 1 && seesEveryone(c)), 20000);

  const termAt = Date.now();
  nodes[0].child.kill('SIGTERM');
  const code = await exited(nodes[0].child);
  assert.equal(code, 0, nodes[0].log().slice(-2000));
  await until('every client is back and sees everyone', () => clients.every(c => c.socket.connected && seesEveryone(c)), 20000);
  // Past the grace period of anyone released late: a flap would have been announced by now.
  await new Promise(r => setTimeout(r, 1500));

  const moved = clients.filter(c => c.disconnects.length > 0);
  const times = moved.flatMap(c => c.disconnects.map(d => d.at)).sort((a, b) => a - b);
  const busiest = Math.max(0, ...times.map((t, i) => times.slice(i).filter(x => x - t < 1000).length));
  console.log(`presence drain: ${moved.length}/${USERS} clients moved between ${times[0] - termAt} and ${times.at(-1) - termAt} ms after SIGTERM, at most ${busiest} in one second (limit ${RATE})`);
  assert.ok(moved.length >= 2, `some clients were on the drained node: ${moved.length}`);
  for (const c of moved) {
    assert.deepEqual(c.disconnects.map(d => d.reason), ['transport close'], `${c.user} was closed once, as a transport close`);
    assert.equal(c.connects, 2, `${c.user} reconnected`);
  }
  assert.ok(busiest <= RATE + 1, `closed too fast: ${busiest} in one second`);
  assert.ok(times.at(-1) - times[0] >= 1000, 'paced, not all at once');
  for (const c of clients) assert.deepEqual(c.leaves, [], `${c.user} saw someone go offline`);
  for (const c of clients) c.socket.close();
  nodes[1].child.kill('SIGKILL');
  gw.child.kill('SIGKILL');
});

test('gateway binary upgrade with WebSocket clients: old tunnels drained in a trickle, nobody seen offline', async () => {
  const USERS = 12;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-upgrade-ws-'));
  const [port, admin] = [await freePort(), await freePort()];
  const jwks = `http://127.0.0.1:${admin}/.well-known/jwks.json`;
  const node = await startPresence(path.join(dir, 'p0'), { jwks, drainMs: 1000, drainRate: 100 });
  const config = gatewayConfig({ dir: path.join(dir, 'g'), port, admin, upstreams: [node.addr] });
  const old = await startGatewayProcess(path.join(dir, 'g'), config, { name: 'old' });
  await serving(admin);
  const url = `http://127.0.0.1:${port}`;

  const clients = [];
  for (let i = 0; i < USERS; i++) clients.push(await watchingClient(url, `upgrade-${i}`, `up-${i}`));
  const seesEveryone = everyoneSeen(clients);
  await until('every client connected and sees everyone', () => clients.every(c => c.connects === 1 && seesEveryone(c)), 20000);

  const next = await startGatewayProcess(path.join(dir, 'g'), config, { upgrade: true, name: 'new' });
  await until('the new process waits for the sockets', () => fs.existsSync(path.join(dir, 'g', 'upgrade.sock')), 20000);
  old.child.kill('SIGQUIT');
  const code = await exited(old.child);
  assert.equal(code, 0, old.text().slice(-2000));
  await until('every client is back through the new process and sees everyone', () => clients.every(c => c.socket.connected && c.connects === 2 && seesEveryone(c)), 20000);
  // Past the presence grace period: a user who had gone offline would have been announced.
  await new Promise(r => setTimeout(r, 1500));

  const times = clients.flatMap(c => c.disconnects.map(d => d.at)).sort((a, b) => a - b);
  console.log(`gateway upgrade: ${times.length} tunnels closed over ${times.at(-1) - times[0]} ms by the old process`);
  for (const c of clients) {
    assert.deepEqual(c.disconnects.map(d => d.reason), ['transport close'], `${c.user}: closed once by the drain`);
    assert.deepEqual(c.errors, [], `${c.user}: no connection attempt refused`);
    assert.deepEqual(c.leaves, [], `${c.user} saw someone go offline`);
  }
  // drain_secs = 2 in gatewayConfig: a trickle, not all at once.
  assert.ok(times.at(-1) - times[0] >= 1000, `paced, not all at once: ${times.at(-1) - times[0]} ms`);
  assert.match(next.text(), /request/, 'the new process served the reconnects');
  for (const c of clients) c.socket.close();
  node.child.kill('SIGKILL');
  next.child.kill('SIGKILL');
});
