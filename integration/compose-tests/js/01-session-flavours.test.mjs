// Both session flavours through the one gateway, with the official socket.io-client:
// express-session (connect.sid, sessions in Redis written by the unmodified Express app under
// /express/) and tower-sessions (the demo service's SQLite file, the app at /), over websocket
// and over long-polling. /socket.io/ takes either cookie.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import {
  EXPRESS_PREFIX, GATEWAY_URL, PresenceClient, connectClient, handshake, loginDemo,
  closeAllClients, loginExpress, redisCli, request, users,
} from './lib/stack.mjs';

const open = [];
after(closeAllClients);

const FORGED_EXPRESS = 'connect.sid=s%3Aforged-session-id.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
const FORGED_DEMO = 'id=AAAAAAAAAAAAAAAAAAAAAA';

describe('two apps on one gateway origin', () => {
  test('each app answers its own routes: the Express app under /express/, the demo app at /', async () => {
    const [user] = users('exp-routes', 1);
    const expressCookie = await loginExpress(user);
    const demoCookie = await loginDemo('alice');
    const expressMe = await request(GATEWAY_URL, `${EXPRESS_PREFIX}/api/auth/user`, { cookie: expressCookie });
    assert.equal(expressMe.status, 200);
    assert.deepEqual(JSON.parse(expressMe.body).user, { id: user, name: user });
    const demoMe = await request(GATEWAY_URL, '/api/auth/user', { cookie: demoCookie });
    assert.equal(demoMe.status, 200, demoMe.body);
    assert.deepEqual(JSON.parse(demoMe.body).user, { id: 'alice', name: 'Alice Archer' });
    // Neither app knows the other's cookie.
    assert.equal((await request(GATEWAY_URL, `${EXPRESS_PREFIX}/api/auth/user`, { cookie: demoCookie })).status, 401);
    assert.equal((await request(GATEWAY_URL, '/api/auth/user', { cookie: expressCookie })).status, 401);
  });
});

describe('the web page', () => {
  test('the demo app serves the seed\'s page and its script at / on the gateway origin', async () => {
    const page = await request(GATEWAY_URL, '/');
    assert.equal(page.status, 200);
    assert.match(page.headers['content-type'], /text\/html/);
    const script = page.body.match(/<script[^>]*src="([^"]+)"/)?.[1];
    assert.ok(script, `a script in the page: ${page.body}`);
    const js = await request(GATEWAY_URL, script);
    assert.equal(js.status, 200);
    assert.match(js.headers['content-type'], /javascript/);
  });
});

describe('express-session flavour (Express + connect-redis + Passport behind the gateway)', () => {
  test('the Express app works through the gateway unchanged, its session is in Redis', async () => {
    const [user] = users('exp', 1);
    const cookie = await loginExpress(user);
    const me = await request(GATEWAY_URL, `${EXPRESS_PREFIX}/api/auth/user`, { cookie });
    assert.equal(me.status, 200);
    assert.deepEqual(JSON.parse(me.body).user, { id: user, name: user });

    // connect.sid = s:<sid>.<signature>, URL-encoded; connect-redis keeps it at sess:<sid>.
    const sid = decodeURIComponent(cookie.split('=')[1]).slice(2).split('.')[0];
    const stored = await redisCli('get', `sess:${sid}`);
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
    assert.equal((await handshake(cookie)).status, 200);
    assert.equal((await request(GATEWAY_URL, `${EXPRESS_PREFIX}/api/auth/logout`, { method: 'POST', cookie })).status, 200);
    assert.equal((await handshake(cookie)).status, 401);
  });
});

describe('tower-sessions flavour (demo service, SQLite sessions, same gateway)', () => {
  for (const transports of [['websocket'], ['polling']]) {
    test(`alice connects over ${transports[0]} and is listed with her display name`, async () => {
      const client = await connectClient(GATEWAY_URL, await loginDemo('alice'), { transports, label: 'alice' });
      open.push(client);
      await client.waitFor((c) => c.online.get('alice')?.name === 'Alice Archer', 5_000, 'alice as "Alice Archer"');
    });
  }

  test('a logged-out demo session is refused at the handshake', async () => {
    const cookie = await loginDemo('dave');
    assert.equal((await handshake(cookie)).status, 200);
    assert.equal((await request(GATEWAY_URL, '/api/auth/logout', { method: 'POST', cookie })).status, 200);
    assert.equal((await handshake(cookie)).status, 401);
  });
});

describe('one presence view for both apps', () => {
  test('an Express user and a demo user see each other', async () => {
    const [user] = users('exp-both', 1);
    const express = await connectClient(GATEWAY_URL, await loginExpress(user), { label: user });
    const demo = await connectClient(GATEWAY_URL, await loginDemo('carol'), { label: 'carol' });
    open.push(express, demo);
    await express.waitFor((c) => c.online.get('carol')?.name === 'Carol Cooper', 5_000, 'carol');
    await demo.waitFor((c) => c.online.has(user), 5_000, user);
  });

  test('a browser logged in to both apps (both cookies) is the Express user: the first source decides', async () => {
    const [user] = users('exp-two-cookies', 1);
    const both = `${await loginExpress(user)}; ${await loginDemo('bob')}`;
    const client = await connectClient(GATEWAY_URL, both, { label: user });
    open.push(client);
    await client.waitFor((c) => c.online.has(user), 5_000, `${user} in the list`);
    assert.ok(!client.online.has('bob'), `listed as ${user}, not as bob: ${client.ids()}`);
    // A forged Express cookie next to a valid demo cookie is refused: the Express source decides.
    assert.equal((await handshake(`${FORGED_EXPRESS}; ${await loginDemo('bob')}`)).status, 401);
  });
});

describe('refusals at the edge', () => {
  for (const [name, forged] of [['express-session', FORGED_EXPRESS], ['tower-sessions', FORGED_DEMO]]) {
    test(`no cookie or a forged ${name} cookie gets 401, and the client gets connect_error`, async () => {
      assert.equal((await handshake()).status, 401);
      assert.equal((await handshake(forged)).status, 401);

      const client = new PresenceClient(GATEWAY_URL, forged, { transports: ['polling'], label: `${name}-forged` });
      open.push(client);
      await client.waitFor((c) => c.connectError !== undefined, 10_000, 'connect_error');
      assert.equal(client.connects, 0);
    });
  }
});
