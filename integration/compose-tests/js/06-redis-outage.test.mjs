// Stopping Redis: the gateway cannot check express sessions, so handshakes fail closed with 503
// at the edge (never a pass without a check); once Redis is back, the same cookie works again
// and the two presence instances share one view again, without restarting anything.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  GATEWAY_URL, closeAllClients, compose, connectClient, eventually, handshake, loginExpress,
  serviceHealthy, socketsPerInstance, untilNoSockets, users,
} from './lib/stack.mjs';

const open = [];
after(async () => {
  closeAllClients();
  await compose('start', 'redis'); // leave the stack whole even when an assertion failed
  await serviceHealthy('redis');
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
