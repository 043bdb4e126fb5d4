// A port for a server a test is about to start, shared by the JS suites.
import fs from 'node:fs';
import net from 'node:net';

/** The first port the kernel hands to outgoing connections (Linux; the usual default elsewhere). */
function ephemeralStart() {
  try {
    return Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 32768;
  } catch {
    return 32768;
  }
}

/** Whether nothing listens on `port` now (a bind succeeds). */
function bindable(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

const handed = new Set();

/**
 * A port free now, below the kernel's ephemeral range. A port the kernel picks (listen on 0)
 * comes from the range it also gives outgoing connections, and a suite opens many (clients,
 * Redis, health checks): one can take the port between this check and the server's start
 * (`Address already in use`). Below the range only another server can take it. A port is
 * handed out once per process.
 */
export async function freePort() {
  const top = ephemeralStart();
  const low = Math.max(1024, top - 16384);
  for (let i = 0; i < 100; i++) {
    const port = low + Math.floor(Math.random() * (top - low));
    if (handed.has(port) || !(await bindable(port))) continue;
    handed.add(port);
    return port;
  }
  const srv = net.createServer();
  await new Promise((resolve, reject) => { srv.once('error', reject); srv.listen(0, '127.0.0.1', resolve); });
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}
