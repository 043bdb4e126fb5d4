// The seed's Node design under the same measurement: N logged-in socket.io-client sockets, then
// one more user connects; time until all N got the event, and bytes of that event per client.
// Usage: node seed_bench.mjs <seed-node copy with node_modules> <N>
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';

const [seedDir, nArg] = process.argv.slice(2);
const n = Number(nArg || 1000);
const { io } = createRequire(path.join(seedDir, 'package.json'))('socket.io-client');
const port = 3900 + Math.floor(Math.random() * 1000);
const server = spawn('node', ['server.js'], { cwd: seedDir, env: { ...process.env, PORT: String(port) }, stdio: ['ignore', 'pipe', 'inherit'] });
await new Promise((ok) => server.stdout.once('data', ok));
const base = `http://127.0.0.1:${port}`;
const rss = () => Number(require('node:fs').readFileSync(`/proc/${server.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
var require = createRequire(import.meta.url);
async function login(name) {
  const r = await fetch(base + '/api/auth/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: name, password: 'pw' }) });
  return r.headers.get('set-cookie').split(';')[0];
}
const rss0 = rss();
const t0 = Date.now();
const socks = [];
let bytes = 0; let change = null; const lat = [];
for (let i = 0; i < n; i += 100) {
  await Promise.all(Array.from({ length: Math.min(100, n - i) }, async (_, j) => {
    const s = io(base, { extraHeaders: { cookie: await login('user' + (i + j)) }, transports: ['websocket'], reconnection: false, forceNew: true });
    s.on('user_connected', (d) => { if (change && d.onlineUsers.some((u) => u.id === 'probe')) { lat.push(Date.now() - change); bytes += JSON.stringify(['user_connected', d]).length + 2; } });
    await new Promise((ok, bad) => { s.on('connect', ok); s.on('connect_error', bad); });
    socks.push(s);
  }));
}
const ramp = (Date.now() - t0) / 1000;
await new Promise((r) => setTimeout(r, 2000));
const rss1 = rss();
const cookie = await login('probe');
change = Date.now();
io(base, { extraHeaders: { cookie }, transports: ['websocket'], reconnection: false, forceNew: true });
const end = Date.now() + 20000;
while (lat.length < n && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
lat.sort((a, b) => a - b);
const pct = (p) => lat[Math.max(0, Math.ceil(lat.length * p) - 1)];
console.log(`seed-node (whole list on every change) N=${n}`);
console.log(`  connect: ${n} clients in ${ramp.toFixed(2)} s = ${(n / ramp).toFixed(0)} conn/s (includes one HTTP login each)`);
console.log(`  one change reached ${lat.length}/${n} clients: p50 ${pct(0.5)} ms, p99 ${pct(0.99)} ms, max ${lat.at(-1)} ms (client-side timing, one Node process)`);
console.log(`  bytes sent per change: ${bytes} (${(bytes / n).toFixed(1)} x N)`);
console.log(`  server RSS: ${rss0} kB idle, ${rss1} kB with N sockets => ${((rss1 - rss0) / n).toFixed(1)} KB per idle socket (includes sessions)`);
server.kill('SIGKILL');
process.exit(0);
