// Users spread over the two presence instances see one list: the gateway balances websocket
// handshakes over presence-a and presence-b, and the instances share presence through Redis.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  GATEWAY_URL, closeAllClients, connectClient, loginExpress, socketsPerInstance, untilNoSockets, users,
} from './lib/stack.mjs';

const open = [];
after(closeAllClients);

test('eight websocket users land on both instances and every one sees all eight', async () => {
  const names = users('spread', 8);
  await untilNoSockets();
  const cookies = await Promise.all(names.map(loginExpress));
  for (const [i, name] of names.entries()) {
    open.push(await connectClient(GATEWAY_URL, cookies[i], { transports: ['websocket'], label: name }));
  }
  const landed = await socketsPerInstance();
  assert.equal(landed.a + landed.b, 8, `sockets per instance: ${JSON.stringify(landed)}`);
  assert.ok(landed.a >= 1 && landed.b >= 1, `both instances hold sockets: ${JSON.stringify(landed)}`);

  await Promise.all(open.map((c) => c.waitFor(
    (cl) => names.every((n) => cl.online.has(n)), 5_000, 'all eight users')));

  // A newcomer's first snapshot already has everyone, whichever instance it lands on.
  const [late] = users('spread-late', 1);
  const newcomer = await connectClient(GATEWAY_URL, await loginExpress(late), { label: late });
  open.push(newcomer);
  const snapshot = newcomer.events.find((e) => e.name === 'online_users').payload.onlineUsers.map((u) => u.id);
  for (const n of names) assert.ok(snapshot.includes(n), `${n} in the newcomer's snapshot`);
});
