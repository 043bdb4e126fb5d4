// The drain bench (see drain-bench.sh, which builds the release binaries and runs this).
// Real processes: redis-server, two presence-service nodes (Redis mode), the gateway; real
// socket.io-client sockets. Prints one table row per scenario.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { freePort } from '../lib/free-port.mjs';

const repo = path.resolve(import.meta.dirname, '../..');
const require = createRequire(path.join(repo, 'integration/gateway-tests/package.json'));
const { io } = require('socket.io-client');

const N = Number(process.env.BENCH_SOCKETS || 3000);
const DRAIN_SECS = Number(process.env.BENCH_DRAIN_SECS || 10);
const DRAIN_RATE = Number(process.env.BENCH_DRAIN_RATE || 500);
const PER_USER = 30; // below the presence service's per-user socket cap
const gatewayBin = process.env.GATEWAY_BIN || path.join(repo, 'target/release/gateway');
const presenceBin = process.env.PRESENCE_BIN || path.join(repo, 'target/release/presence-service');
const SECRET = 'bench secret';

const procs = new Set();
const cleanup = () => { for (const p of procs) try { p.kill('SIGKILL'); } catch {} };
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

const sleep = ms => new Promise(r => setTimeout(r, ms));
async function until(what, check, ms = 60000) {
  const end = Date.now() + ms;
  for (;;) {
    try { if (await check()) return; } catch {}
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(100);
  }
}
function run(bin, args, log, opts = {}) {
  const p = spawn(bin, args, { stdio: ['ignore', 'pipe', fs.openSync(log, 'w')], ...opts });
  procs.add(p);
  p.once('exit', () => procs.delete(p));
  return p;
}
const exited = p => (p.exitCode !== null || p.signalCode !== null) ? Promise.resolve() : new Promise(r => p.once('exit', r));
function redisCmd(port, args) {
  return new Promise((ok, bad) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', bad);
    s.write(`*${args.length}\r\n` + args.map(a => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(''));
    s.once('data', d => { ok(d.toString()); s.end(); });
  });
}
function expressCookie(sid) {
  const sig = createHmac('sha256', SECRET).update(sid).digest('base64').replace(/=+$/, '');
  return 'connect.sid=' + encodeURIComponent(`s:${sid}.${sig}`);
}

async function stack(dir, { drainSecs, drainRate }) {
  const redisPort = await freePort();
  run('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], path.join(dir, 'redis.log'));
  await until('redis', async () => (await redisCmd(redisPort, ['PING'])).startsWith('+PONG'));
  const redisUrl = `redis://127.0.0.1:${redisPort}`;
  const [port, admin] = [await freePort(), await freePort()];
  const presence = [];
  for (const i of [0, 1]) {
    const cfg = path.join(dir, `presence${i}.toml`);
    fs.writeFileSync(cfg, `[server]\nlisten = "127.0.0.1:0"\ndrain_ms = ${drainSecs * 1000}\ndrain_max_per_sec = ${drainRate}\n`
      + `[trust]\njwks_url = "http://127.0.0.1:${admin}/.well-known/jwks.json"\njwks_refetch_min_interval_ms = 200\n`
      + `[presence]\ngrace_ms = 3000\n[backend]\nkind = "redis"\nredis_url = "${redisUrl}"\n`);
    const p = run(presenceBin, ['--config', cfg], path.join(dir, `presence${i}.log`));
    const addr = await new Promise((ok, bad) => {
      let buf = '';
      p.stdout.on('data', d => { buf += d; const m = buf.match(/listening on (\S+)/); if (m) ok(m[1]); });
      p.once('exit', () => bad(new Error('presence-service exited; see ' + dir)));
    });
    presence.push({ proc: p, addr });
  }
  const gwCfg = path.join(dir, 'gateway.toml');
  fs.writeFileSync(gwCfg, `
[gateway]
threads = 2
shutdown_grace_secs = 0
shutdown_timeout_secs = 5
drain_secs = ${drainSecs}
drain_max_per_sec = ${drainRate}
upgrade_sock = "${path.join(dir, 'upgrade.sock')}"
access_log = { polling = "skip" }
[admin]
listen = "127.0.0.1:${admin}"
[[listener]]
listen = "127.0.0.1:${port}"
[[assertion.keys]]
kid = "bench-1"
private_key = { file = "signing.pem" }
generate_if_missing = true
[session]
flavour = "express"
secrets = [{ value = "${SECRET}" }]
store = { kind = "redis", url = "${redisUrl}", prefix = "sess:" }
[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["${presence[0].addr}", "${presence[1].addr}"]
auth = "socketio-handshake"
audience = "presence-service"
health_check_interval_secs = 1
`);
  const env = { ...process.env, RUST_LOG: 'warn' };
  const gw = run(gatewayBin, ['--config', gwCfg], path.join(dir, 'gateway-0.log'), { env });
  await until('gateway ready', async () => (await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 200);
  for (let u = 0; u < Math.ceil(N / PER_USER); u++) {
    const expires = new Date(Date.now() + 3600_000).toISOString();
    await redisCmd(redisPort, ['SET', `sess:bench-${u}`, JSON.stringify({ cookie: { expires }, passport: { user: `user-${u}` } }), 'EX', '3600']);
  }
  return { port, admin, gw, gwCfg, presence, env };
}

/** Connects N clients; each records its disconnects and (re)connects. */
async function connectAll(port) {
  const clients = [];
  for (let i = 0; i < N; i++) {
    const socket = io(`http://127.0.0.1:${port}`, {
      transports: ['websocket'], extraHeaders: { cookie: expressCookie(`bench-${Math.floor(i / PER_USER)}`) },
      reconnectionDelay: 500, reconnectionDelayMax: 5000, timeout: 20000,
    });
    const c = { socket, downs: [], ups: [], errors: 0 };
    socket.on('connect', () => c.ups.push(Date.now()));
    socket.on('disconnect', () => c.downs.push(Date.now()));
    socket.on('connect_error', () => { c.errors++; });
    clients.push(c);
    if (i % 200 === 199) await until('a batch connected', () => clients.every(x => x.socket.connected), 60000);
  }
  await until('every client connected', () => clients.every(c => c.socket.connected), 120000);
  return clients;
}

const peakPerSec = ts => {
  const t = [...ts].sort((a, b) => a - b);
  let best = 0;
  for (let i = 0, j = 0; i < t.length; i++) { while (t[i] - t[j] >= 1000) j++; best = Math.max(best, i - j + 1); }
  return best;
};

async function measure(clients, t0, act) {
  const mark = clients.map(c => [c.downs.length, c.ups.length, c.errors]);
  await act();
  await until('every client back', () => clients.every(c => c.socket.connected), 180000);
  const moved = clients.filter((c, i) => c.downs.length > mark[i][0]);
  const downs = moved.flatMap((c, i) => c.downs.slice(mark[clients.indexOf(c)][0]));
  const ups = moved.flatMap(c => c.ups.slice(mark[clients.indexOf(c)][1]));
  const errors = clients.reduce((n, c, i) => n + c.errors - mark[i][2], 0);
  return {
    moved: moved.length,
    closedOver: downs.length ? ((Math.max(...downs) - Math.min(...downs)) / 1000).toFixed(1) : '-',
    peakDown: peakPerSec(downs),
    peakUp: peakPerSec(ups),
    // From the signal to the last reconnect.
    lastUp: ups.length ? Math.max(...ups) : Date.now(),
    errors,
  };
}

async function scenario(label, { drainSecs, drainRate }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'drain-bench-'));
  const s = await stack(dir, { drainSecs, drainRate });
  const clients = await connectAll(s.port);
  // 1. gateway binary upgrade
  let t0 = Date.now();
  const upgrade = await measure(clients, t0, async () => {
    const next = run(gatewayBin, ['--config', s.gwCfg, '--upgrade'], path.join(dir, 'gateway-1.log'), { env: s.env });
    await until('the new gateway waits', () => fs.existsSync(path.join(dir, 'upgrade.sock')));
    t0 = Date.now();
    s.gw.kill('SIGQUIT');
    s.next = next;
    await exited(s.gw);
  });
  upgrade.allBack = ((upgrade.lastUp - t0) / 1000).toFixed(1);
  // 2. presence SIGTERM on one node
  const t1 = Date.now();
  const drain = await measure(clients, t1, async () => {
    s.presence[0].proc.kill('SIGTERM');
    // Its sockets are closed within the drain window; it exits after the grace period.
    await exited(s.presence[0].proc);
  });
  drain.allBack = ((drain.lastUp - t1) / 1000).toFixed(1);
  for (const c of clients) c.socket.close();
  cleanup();
  return [[`${label}: gateway upgrade`, upgrade], [`${label}: presence SIGTERM`, drain]];
}

const rows = [
  ...(await scenario(`paced (${DRAIN_SECS} s, ≤${DRAIN_RATE}/s)`, { drainSecs: DRAIN_SECS, drainRate: DRAIN_RATE })),
  ...(await scenario('unpaced (all at once)', { drainSecs: 0, drainRate: 1_000_000 })),
];
console.log(`\n${N} idle sockets (socket.io-client, websocket, reconnection delay 0.5-5 s), two presence nodes; ${path.relative(repo, gatewayBin)}, ${path.relative(repo, presenceBin)}`);
console.log('gateway upgrade: times from SIGQUIT (Pingora keeps both processes accepting for 5 s first); presence: from SIGTERM\n');
const head = ['scenario', 'clients moved', 'closed over s', 'peak closes/s', 'peak reconnects/s', 'all back after s', 'connect errors'];
const table = [head, ...rows.map(([l, r]) => [l, r.moved, r.closedOver, r.peakDown, r.peakUp, r.allBack, r.errors])];
const widths = head.map((_, i) => Math.max(...table.map(r => String(r[i]).length)));
for (const r of table) console.log(r.map((v, i) => String(v).padEnd(widths[i])).join('  '));
process.exit(0);
