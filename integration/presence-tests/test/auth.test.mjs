// Trust: only a valid gateway assertion gets a socket; everything else is a connect_error with
// the reason, counted in /metrics, and 401 on the HTTP routes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Presence, Tab, makeKey, mint, ids, eventually } from './harness.mjs';

const key = makeKey('gw-1');
const stranger = makeKey('gw-1'); // same kid, different key: a forgery
let node;

before(async () => { node = await Presence.start({ keys: [key] }); });
after(async () => { await node.stop(); });

const now = () => Math.floor(Date.now() / 1000);

const refusals = {
  missing: [null, 'unauthorized: missing'],
  forged: [mint(stranger, { sub: 'mallory' }), 'unauthorized: bad_signature'],
  expired: [mint(key, { sub: 'alice', iat: now() - 120, exp: now() - 60 }), 'unauthorized: expired'],
  'wrong audience': [mint(key, { sub: 'alice', aud: 'demo-service' }), 'unauthorized: wrong_audience'],
  'wrong issuer': [mint(key, { sub: 'alice', iss: 'someone-else' }), 'unauthorized: wrong_issuer'],
  'unknown kid': [mint({ ...key, kid: 'gw-9' }, { sub: 'alice' }), 'unauthorized: unknown_kid'],
  garbage: ['not.a.jwt', 'unauthorized: malformed'],
};

for (const [name, [token, message]] of Object.entries(refusals)) {
  for (const transports of [['polling', 'websocket'], ['websocket']]) {
    test(`${name} assertion is refused (${transports.join('+')})`, async () => {
      const tab = new Tab(node.url, token, { transports });
      assert.equal(await tab.refused(), message);
      tab.close();
    });
  }
}

test('refusals are counted by reason and logged without the token', async () => {
  const token = mint(stranger, { sub: 'mallory' });
  const tab = new Tab(node.url, token);
  await tab.refused();
  tab.close();
  const metrics = await (await node.get('/metrics')).text();
  for (const reason of ['missing', 'bad_signature', 'expired', 'wrong_audience', 'unknown_kid']) {
    assert.match(metrics, new RegExp(`presence_rejected_handshakes_total\\{reason="${reason}"\\} \\d+`));
  }
  await eventually(() => node.stderr.includes('reason="bad_signature"'), 3000, 'log line');
  assert.ok(!node.stderr.includes(token.split('.')[2]), 'the token must never be logged');
});

test('a client cannot change who it is: auth payload and query are ignored', async () => {
  const tab = await new Tab(node.url, mint(key, { sub: 'carol', name: 'Carol' }), {
    auth: { userId: 'admin', name: 'Admin' }, query: { userId: 'admin' },
  }).connected();
  const { onlineUsers } = await tab.ask();
  assert.ok(onlineUsers.some((u) => u.id === 'carol' && u.name === 'Carol'));
  assert.ok(!onlineUsers.some((u) => u.id === 'admin'));
  tab.close();
});

test('GET /presence needs an assertion and lists who is online', async () => {
  assert.equal((await node.get('/presence')).status, 401);
  assert.equal((await node.get('/presence', mint(stranger, { sub: 'x' }))).status, 401);
  const tab = await new Tab(node.url, mint(key, { sub: 'dave', name: 'Dave' })).connected();
  const res = await node.get('/presence', mint(key, { sub: 'ops' }));
  assert.equal(res.status, 200);
  assert.ok(ids((await res.json()).onlineUsers).includes('dave'));
  tab.close();
});

test('health, readiness and metrics', async () => {
  assert.equal((await node.get('/healthz')).status, 200);
  assert.equal((await node.get('/readyz')).status, 200);
  const m = await (await node.get('/metrics')).text();
  for (const name of ['presence_connected_sockets', 'presence_online_users', 'presence_events_emitted_total']) assert.match(m, new RegExp(name));
});

test('JWKS: keys are fetched from the gateway and a rotated-in kid works without restart', async () => {
  const k1 = makeKey('rot-1');
  const k2 = makeKey('rot-2');
  let published = [k1.jwk];
  const jwks = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ keys: published }));
  });
  await new Promise((ok) => jwks.listen(0, '127.0.0.1', ok));
  const gw = await Presence.start({ jwksUrl: `http://127.0.0.1:${jwks.address().port}/.well-known/jwks.json` });
  try {
    const a = await new Tab(gw.url, mint(k1, { sub: 'ann' })).connected();
    assert.equal(await new Tab(gw.url, mint(k2, { sub: 'bob' })).refused(), 'unauthorized: unknown_kid');
    published = [k2.jwk, k1.jwk]; // the gateway rotates: k2 signs, k1 still verifies
    // Refetches are rate-limited (200 ms in this config): the new kid is accepted once allowed.
    const b = await eventually(async () => {
      const t = new Tab(gw.url, mint(k2, { sub: 'bob' }));
      try { return await t.connected(); } catch { t.close(); return null; }
    }, 5000, 'rotated key to be accepted');
    a.close(); b.close();
  } finally {
    await gw.stop();
    jwks.close();
  }
});
