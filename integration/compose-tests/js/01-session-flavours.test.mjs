// Both session flavours through the gateways, with the official socket.io-client:
// express-session (connect.sid, sessions in Redis written by the unmodified Express app) and
// tower-sessions (the demo service's SQLite file), over websocket and over long-polling.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import {
  GATEWAY_DEMO_URL, GATEWAY_URL, PresenceClient, compose, connectClient, handshake, loginDemo,
  closeAllClients, loginExpress, request, users,
} from './lib/stack.mjs';

const open = [];
after(closeAllClients);

describe('express-session flavour (Express + connect-redis + Passport behind the gateway)', () => {
  test('the Express app works through the gateway unchanged, its session is in Redis', async () => {
    const [user] = users('exp', 1);
    const cookie = await loginExpress(user);
    const me = await request(GATEWAY_URL, '/api/auth/user', { cookie });
    assert.equal(me.status, 200);
    assert.deepEqual(JSON.parse(me.body).user, { id: user, name: user });

    // connect.sid = s:<sid>.<signature>, URL-encoded; connect-redis keeps it at sess:<sid>.
    const sid = decodeURIComponent(cookie.split('=')[1]).slice(2).split('.')[0];
    const stored = await compose('exec', '-T', 'redis', 'redis-cli', 'get', `sess:${sid}`);
    assert.equal(JSON.parse(stored).passport.user, user);
  });

  for (const transports of [['websocket'], ['polling']]) {
    test(`a logged-in user connects over ${transports[0]} and sees themself online`, async () => {
      const [user] = users(`exp-${transports[0]}`, 1);
      const client = await connectClient(GATEWAY_URL, await loginExpress(user), { transports, label: user });
      open.push(client);
      assert.equal(client.socket.io.engine.transport.name, transports[0]);
      await client.waitFor((c) => c.online.has(user), 5_000, `${user} in the online list`);
    });
  }

  test('a logged-out session is refused at the handshake', async () => {
    const [user] = users('exp-out', 1);
    const cookie = await loginExpress(user);
    assert.equal((await handshake(GATEWAY_URL, cookie)).status, 200);
    assert.equal((await request(GATEWAY_URL, '/api/auth/logout', { method: 'POST', cookie })).status, 200);
    assert.equal((await handshake(GATEWAY_URL, cookie)).status, 401);
  });
});

describe('tower-sessions flavour (demo service, SQLite sessions, behind gateway-demo)', () => {
  for (const transports of [['websocket'], ['polling']]) {
    test(`alice connects over ${transports[0]} and is listed with her display name`, async () => {
      const client = await connectClient(GATEWAY_DEMO_URL, await loginDemo('alice'), { transports, label: 'alice' });
      open.push(client);
      await client.waitFor((c) => c.online.get('alice')?.name === 'Alice Archer', 5_000, 'alice as "Alice Archer"');
    });
  }
});

describe('one presence view behind both gateways', () => {
  test('an Express user and a demo user see each other', async () => {
    const [user] = users('exp-both', 1);
    const express = await connectClient(GATEWAY_URL, await loginExpress(user), { label: user });
    const demo = await connectClient(GATEWAY_DEMO_URL, await loginDemo('carol'), { label: 'carol' });
    open.push(express, demo);
    await express.waitFor((c) => c.online.get('carol')?.name === 'Carol Cooper', 5_000, 'carol');
    await demo.waitFor((c) => c.online.has(user), 5_000, user);
  });
});

describe('refusals at the edge', () => {
  for (const [name, base] of [['gateway', GATEWAY_URL], ['gateway-demo', GATEWAY_DEMO_URL]]) {
    test(`${name}: no cookie or a forged cookie gets 401, and the client gets connect_error`, async () => {
      assert.equal((await handshake(base)).status, 401);
      const forged = base === GATEWAY_URL
        ? 'connect.sid=s%3Aforged-session-id.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
        : 'id=AAAAAAAAAAAAAAAAAAAAAA';
      assert.equal((await handshake(base, forged)).status, 401);

      const client = new PresenceClient(base, forged, { transports: ['polling'], label: `${name}-forged` });
      open.push(client);
      await client.waitFor((c) => c.connectError !== undefined, 10_000, 'connect_error');
      assert.equal(client.connects, 0);
    });
  }
});
