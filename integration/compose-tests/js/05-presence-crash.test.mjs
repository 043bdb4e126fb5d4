// `docker compose kill` of one presence instance (SIGKILL: no goodbye): the survivor removes the
// dead node's users within node_ttl + heartbeat (+ the grace period before "offline" is sent),
// and clients of the dead node that keep reconnecting come back through the gateway to the
// survivor. Then presence-a is started again on a different IP address (a placeholder container
// takes its old one, as happens when a node is rescheduled): the gateway finds it by name again
// (it re-resolves upstream names every 5 s) and sends new connections to it.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  GATEWAY_URL, closeAllClients, compose, connectClient, docker, eventually, loginExpress, presenceMetric,
  presenceSetting, serviceHealthy, socketsPerInstance, untilNoSockets, users,
} from './lib/stack.mjs';

const open = [];
let placeholder;
after(async () => {
  closeAllClients();
  if (placeholder) await docker('rm', '-f', placeholder);
  await compose('start', 'presence-a'); // leave the stack whole even when an assertion failed
  await serviceHealthy('presence-a');
});

/** The container's IP address on the compose network, and that network's name. */
async function address(service) {
  const id = (await compose('ps', '-q', service)).trim();
  const [network, ip] = (await docker('inspect', '--format',
    '{{range $name, $n := .NetworkSettings.Networks}}{{$name}} {{$n.IPAddress}}{{end}}', id)).trim().split(' ');
  return { id, network, ip };
}

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

test('presence-a back on a new IP address: the gateway resolves its name again and sends it connections', async () => {
  closeAllClients(); // the crash test's clients: this test counts its own
  // Down since the test above: started again it gets its old address back (it is still free).
  await compose('start', 'presence-a');
  await serviceHealthy('presence-a');
  const before = await address('presence-a');
  await compose('kill', 'presence-a');
  // Docker hands out the lowest free address: a placeholder on the network takes presence-a's.
  const image = (await docker('inspect', '--format', '{{.Config.Image}}', before.id)).trim();
  placeholder = (await docker('run', '-d', '--rm', '--network', before.network, '--entrypoint', 'sleep',
    image, '300')).trim();
  await compose('start', 'presence-a');
  await serviceHealthy('presence-a');
  const now = await address('presence-a');
  assert.notEqual(now.ip, before.ip, `presence-a moved from ${before.ip}`);

  // Round-robin over two healthy upstreams puts one of two consecutive handshakes on each; until
  // the gateway knows the new address, both land on presence-b.
  await untilNoSockets();
  const [user] = users('moved', 1);
  const cookie = await loginExpress(user);
  const startedAt = Date.now();
  await eventually(async () => {
    const pair = [await connectClient(GATEWAY_URL, cookie, { label: user }),
      await connectClient(GATEWAY_URL, cookie, { label: user })];
    const landed = await socketsPerInstance();
    pair.forEach((c) => c.close());
    await untilNoSockets();
    return landed.a >= 1 || JSON.stringify(landed);
  }, 20_000, 'a new connection on presence-a at its new address');
  console.log(`# presence-a (${before.ip} -> ${now.ip}) got connections ${Date.now() - startedAt} ms after it was healthy`);
});
