// Stopping Redis: connected sockets stay connected and both presence containers stay healthy
// (their health is liveness, /healthz; /readyz reports Redis), so no supervisor restarts them and
// drops every socket. The gateway cannot check express sessions, so new handshakes fail closed
// with 503 at the edge (never a pass without a check); once Redis is back, the same cookie works
// again and the two presence instances share one view again, without restarting anything.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  GATEWAY_URL, INSIDE, aclDenials, closeAllClients, compose, connectClient, docker, eventually,
  handshake, loginExpress, serviceHealthy, socketsPerInstance, statusInside, untilNoSockets, users,
} from './lib/stack.mjs';

const open = [];
after(async () => {
  closeAllClients();
  await compose('start', 'redis'); // leave the stack whole even when an assertion failed
  await serviceHealthy('redis');
});

/** Health status and failing streak of a service's container. */
async function health(service) {
  const id = (await compose('ps', '-q', service)).trim();
  const [status, streak, restarts] = (await docker('inspect', '--format',
    '{{.State.Health.Status}} {{.State.Health.FailingStreak}} {{.RestartCount}}', id)).trim().split(' ');
  return { status, failingStreak: Number(streak), restarts: Number(restarts) };
}

// Longer than the presence healthcheck's interval x retries (2 s x 5): with /readyz as the
// container health, both instances were unhealthy by then.
const OUTAGE_MS = 15_000;

test(`Redis down ${OUTAGE_MS / 1000} s: both presence containers stay healthy, every socket stays connected`, async () => {
  await untilNoSockets();
  const names = users('steady', 8);
  const clients = [];
  for (const name of names) {
    clients.push(await connectClient(GATEWAY_URL, await loginExpress(name), { label: name }));
  }
  const landed = await socketsPerInstance();
  assert.ok(landed.a >= 1 && landed.b >= 1, `clients on both instances: ${JSON.stringify(landed)}`);
  const before = { a: await health('presence-a'), b: await health('presence-b') };
  // Stopping Redis empties its ACL LOG: first check that the earlier tests' traffic (logins,
  // handshakes, both instances' presence and pub/sub) stayed within each service's rules.
  assert.deepEqual(await aclDenials(), [], 'ACL denials caused by the services');

  await compose('stop', '-t', '5', 'redis');
  try {
    // Readiness does report the outage (for the gateway and orchestrators that separate them).
    await eventually(async () => (await statusInside('http://presence-a:3001/readyz', {}, { from: INSIDE })) === 503,
      10_000, 'presence-a /readyz 503 with Redis stopped');
    await new Promise((r) => { setTimeout(r, OUTAGE_MS); });
    for (const service of ['presence-a', 'presence-b']) {
      const h = await health(service);
      assert.equal(h.status, 'healthy', `${service} during the outage: ${JSON.stringify(h)}`);
      assert.equal(h.restarts, before[service.slice(-1)].restarts, `${service} was not restarted`);
    }
    for (const c of clients) {
      assert.ok(c.socket.connected, `${c.label} still connected`);
      assert.deepEqual(c.disconnects, [], `${c.label} never disconnected`);
    }
  } finally {
    await compose('start', 'redis');
    await serviceHealthy('redis');
  }
  for (const c of clients) assert.deepEqual(c.disconnects, [], `${c.label} never disconnected`);
  closeAllClients();
});

test('Redis stopped gives 503 at the edge; it recovers by itself when Redis returns', async () => {
  const [user] = users('outage', 1);
  const cookie = await loginExpress(user);
  assert.equal((await handshake(cookie)).status, 200);

  await compose('stop', '-t', '5', 'redis');
  const down = await handshake(cookie);
  assert.equal(down.status, 503, `handshake with Redis stopped: ${down.status} ${down.body}`);

  await compose('start', 'redis');
  await eventually(async () => (await handshake(cookie)).status === 200, 30_000,
    'handshake 200 after Redis returned');
  // Presence (also on Redis) is back too: users on both instances see each other again.
  await serviceHealthy('presence-a');
  await serviceHealthy('presence-b');
  const names = [user, ...users('after-outage', 3)];
  const cookies = [cookie, ...await Promise.all(names.slice(1).map(loginExpress))];
  await untilNoSockets();
  for (const [i, name] of names.entries()) {
    open.push(await connectClient(GATEWAY_URL, cookies[i], { label: name }));
  }
  const landed = await socketsPerInstance();
  assert.ok(landed.a >= 1 && landed.b >= 1, `clients on both instances: ${JSON.stringify(landed)}`);
  await Promise.all(open.map((c) => c.waitFor(
    (cl) => names.every((n) => cl.online.has(n)), 10_000, 'every user after recovery')));
});
