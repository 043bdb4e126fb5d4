// `docker compose kill` of one presence instance (SIGKILL: no goodbye): the survivor removes the
// dead node's users within node_ttl + heartbeat (+ the grace period before "offline" is sent),
// and clients of the dead node that keep reconnecting come back through the gateway to the
// survivor. Afterwards presence-a is started again and must become healthy.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  GATEWAY_URL, closeAllClients, compose, connectClient, loginExpress, presenceMetric, presenceSetting,
  serviceHealthy, socketsPerInstance, untilNoSockets, users,
} from './lib/stack.mjs';

const open = [];
after(async () => {
  closeAllClients();
  await compose('start', 'presence-a');
  await serviceHealthy('presence-a');
});

const BOUND_MS = presenceSetting('node_ttl_ms') + presenceSetting('heartbeat_interval_ms')
  + presenceSetting('grace_ms') + 2_000; // + scheduling and event delivery slack

test(`killing presence-a: its users leave the other view within ${BOUND_MS} ms, reconnecting clients move to presence-b`, async () => {
  const names = users('crash', 12);
  await untilNoSockets();
  const cookies = await Promise.all(names.map(loginExpress));
  for (const [i, name] of names.entries()) {
    open.push(await connectClient(GATEWAY_URL, cookies[i], { reconnection: true, label: name }));
  }
  const landed = await socketsPerInstance();
  assert.ok(landed.a >= 2 && landed.b >= 1, `sockets on both instances: ${JSON.stringify(landed)}`);
  await Promise.all(open.map((c) => c.waitFor((cl) => names.every((n) => cl.online.has(n)), 5_000, 'all users')));

  // Clients that lose their node: every other one gives up (its user must vanish), the rest
  // reconnect through the gateway (their user must stay listed).
  const leavers = [];
  const movers = [];
  for (const client of open) {
    client.socket.once('disconnect', () => {
      if (leavers.length <= movers.length) {
        client.socket.io.reconnection(false);
        leavers.push(client);
      } else {
        movers.push(client);
      }
    });
  }

  const killedAt = Date.now();
  await compose('kill', 'presence-a');

  const survivors = () => open.filter((c) => c.disconnects.length === 0);
  // The dead node's sockets drop at once (TCP reset); wait for that before splitting the roles.
  await open[0].waitFor(() => leavers.length >= 1 && movers.length >= 1, 10_000, 'presence-a clients dropped');
  const observers = survivors();
  assert.ok(observers.length >= 1, 'some clients were on presence-b and stayed connected');

  const gone = leavers.map((c) => c.label);
  await Promise.all(observers.map((o) => o.waitFor(
    (c) => gone.every((n) => !c.online.has(n)), BOUND_MS, `${gone} removed from ${o.label}'s view`)));
  const removedAfter = Date.now() - killedAt;
  assert.ok(removedAfter <= BOUND_MS, `removed after ${removedAfter} ms`);
  console.log(`# dead node's users removed from the survivor's view after ${removedAfter} ms (bound ${BOUND_MS} ms)`);

  await Promise.all(movers.map((m) => m.waitFor((c) => c.socket.connected && c.connects === 2, 20_000, 'reconnect')));
  const onB = await presenceMetric('presence-b', 'presence_connected_sockets');
  assert.ok(onB >= observers.length + movers.length, `every live socket is on presence-b now (${onB})`);
  const stillOnline = [...observers, ...movers].map((c) => c.label);
  await Promise.all(observers.map((o) => o.waitFor(
    (c) => stillOnline.every((n) => c.online.has(n)) && gone.every((n) => !c.online.has(n)),
    10_000, 'movers listed again, leavers absent')));
});
