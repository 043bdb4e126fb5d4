// Many websocket upgrades at once through the gateway (cloudflare/pingora#946): a presence
// instance answers the upgrade so fast that Pingora used to read its 101 before the request's
// empty body end and then took that end for the end of the tunnel, closing it right after the
// 101, for a few percent of upgrades. The gateway now runs a WebSocket handshake's upstream leg
// itself (gateway/src/upgrade.rs); here every tunnel of a burst must relay both ways and stay open.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  GATEWAY_URL, closeAllClients, connectClient, loginExpress, socketsPerInstance, untilNoSockets, users,
} from './lib/stack.mjs';

const BURST = 60;
after(closeAllClients);

test(`${BURST} websocket clients connecting at once all stay connected and answer a round trip`, async () => {
  await untilNoSockets();
  const [user] = users('burst', 1);
  const cookie = await loginExpress(user);
  const clients = await Promise.all(Array.from({ length: BURST }, (_, i) => connectClient(
    GATEWAY_URL, cookie, { transports: ['websocket'], label: `${user}#${i}` })));
  // One request/response per tunnel after the 101: both directions relay.
  const acks = await Promise.all(clients.map((c) => c.ask()));
  for (const ack of acks) assert.ok(ack.onlineUsers.some((u) => u.id === user), 'own user in the ack');
  const landed = await socketsPerInstance();
  assert.equal(landed.a + landed.b, BURST, `every tunnel still open: ${JSON.stringify(landed)}`);
  const dropped = clients.filter((c) => c.disconnects.length > 0 || c.connects !== 1);
  assert.deepEqual(dropped.map((c) => `${c.label}: ${JSON.stringify(c.disconnects)}`), []);
});
