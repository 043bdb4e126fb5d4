// Real parts for the client tests: redis-server, the gateway binary with a TLS listener and dev
// certificates it made itself, and a real Socket.IO server as the upstream.
import { spawn, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { Server } from 'socket.io';
import { freePort } from '../../lib/free-port.mjs';

const repo = path.resolve(import.meta.dirname, '../../..');
export const gatewayBin = process.env.GATEWAY_BIN || path.join(repo, 'target/debug/gateway');

export { freePort };

export async function until(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try { if (await check()) return; } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise(r => setTimeout(r, 50));
  }
}

const stops = [];
export async function stopAll() { while (stops.length) await stops.pop()(); }

function started(child, name) {
  stops.push(() => new Promise(resolve => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill('SIGKILL');
  }));
  child.on('error', e => { throw new Error(`${name}: ${e.message}`); });
  return child;
}

export async function startRedis(dir) {
  const port = await freePort();
  started(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' }), 'redis');
  await until('redis', () => redisCmd(port, ['PING']).then(r => r.startsWith('+PONG')));
  return { port, url: `redis://127.0.0.1:${port}`, cmd: args => redisCmd(port, args) };
}

function redisCmd(port, args) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', reject);
    s.write(`*${args.length}\r\n` + args.map(a => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(''));
    s.once('data', d => { resolve(d.toString()); s.end(); });
  });
}

/** express-session's cookie for `sid` (cookie-signature: base64 HMAC-SHA256 without `=`). */
export function expressCookie(sid, secret) {
  const sig = createHmac('sha256', secret).update(sid).digest('base64').replace(/=+$/, '');
  return 'connect.sid=' + encodeURIComponent(`s:${sid}.${sig}`);
}

export async function storeExpressSession(redis, sid, user) {
  const expires = new Date(Date.now() + 3600_000).toISOString();
  const value = JSON.stringify({ cookie: { originalMaxAge: 3600_000, expires, httpOnly: true, path: '/' }, passport: { user } });
  await redis.cmd(['SET', `sess:${sid}`, value, 'EX', '3600']);
}

/** A Socket.IO server that tells each client who the gateway said it is. */
export async function startSocketIoUpstream() {
  const port = await freePort();
  const server = http.createServer();
  const io = new Server(server);
  io.on('connection', socket => {
    const token = socket.handshake.headers['x-identity-assertion'];
    const claims = token ? JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()) : null;
    socket.emit('whoami', { sub: claims?.sub ?? null, transport: socket.conn.transport.name });
    socket.on('echo', (msg, ack) => ack(msg));
  });
  await new Promise(r => server.listen(port, '127.0.0.1', r));
  stops.push(() => new Promise(r => { io.close(); r(); }));
  return { port };
}

export async function startGateway({ redisUrl, upstreamPort, http2 = false }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-js-'));
  execFileSync(gatewayBin, ['dev-certs', '--out', dir]);
  const [https, admin] = [await freePort(), await freePort()];
  const config = `
[gateway]
threads = 1
shutdown_grace_secs = 0
shutdown_timeout_secs = 1

[admin]
listen = "127.0.0.1:${admin}"

[[listener]]
listen = "127.0.0.1:${https}"
tls = { cert = "server.crt", key = "server.key" }
http2 = ${http2}

[[assertion.keys]]
kid = "js-1"
private_key = { file = "assertion-signing.pem" }

[session]
flavour = "express"
secrets = [{ value = "the secret key" }]
store = { kind = "redis", url = "${redisUrl}", prefix = "sess:" }

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["127.0.0.1:${upstreamPort}"]
auth = "socketio-handshake"
audience = "presence-service"
allowed_origins = ["https://localhost:${https}"]
health_check_interval_secs = 1
`;
  fs.writeFileSync(path.join(dir, 'gateway.toml'), config);
  const log = fs.openSync(path.join(dir, 'gateway.log'), 'w');
  started(spawn(gatewayBin, ['--config', path.join(dir, 'gateway.toml')], { stdio: ['ignore', 'ignore', log] }), 'gateway');
  await until('gateway ready', async () => (await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 200);
  return { url: `https://localhost:${https}`, ca: fs.readFileSync(path.join(dir, 'ca.crt')), log: path.join(dir, 'gateway.log') };
}
