// Long-polling clients stay on one instance for the life of their Engine.IO session: every
// polling request carries the sid, and only the instance that issued it knows it. Without
// stickiness, round-robin would send the next request to the other instance ("unknown sid") and
// the client would drop. Websocket clients need no stickiness (one connection) and land anywhere.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  GATEWAY_URL, closeAllClients, connectClient, loginExpress, socketsPerInstance, untilNoSockets, users,
} from './lib/stack.mjs';

const open = [];
after(closeAllClients);

test('six polling clients keep their Engine.IO session through many requests', async () => {
  const names = users('poll', 6);
  await untilNoSockets();
  const cookies = await Promise.all(names.map(loginExpress));
  for (const [i, name] of names.entries()) {
    open.push(await connectClient(GATEWAY_URL, cookies[i], { transports: ['polling'], label: name }));
  }
  const landed = await socketsPerInstance();
  assert.equal(landed.a + landed.b, 6, `sockets per instance: ${JSON.stringify(landed)}`);
  assert.ok(landed.a >= 1 && landed.b >= 1, `polling sessions on both instances: ${JSON.stringify(landed)}`);

  const sids = open.map((c) => c.socket.io.engine.id);
  // Each ask is a POST and a long-poll GET answered by the instance; pings (every 2 s in the
  // compose config) add a round trip each. Two pings per client prove long-lived sessions too.
  await Promise.all(open.map(async (client) => {
    const pings = new Promise((resolve) => {
      let n = 0;
      client.socket.io.engine.on('ping', () => { n += 1; if (n === 2) resolve(); });
    });
    for (let i = 0; i < 10; i += 1) {
      const reply = await client.ask();
      assert.ok(reply.onlineUsers.some((u) => u.id === client.label), `${client.label} in its own ack`);
    }
    await pings;
  }));

  open.forEach((client, i) => {
    assert.equal(client.socket.io.engine.transport.name, 'polling');
    assert.equal(client.socket.io.engine.id, sids[i], `${client.label} kept its Engine.IO sid`);
    assert.deepEqual(client.disconnects, [], `${client.label} never dropped`);
    assert.equal(client.connects, 1);
  });
});
