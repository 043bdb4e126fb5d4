// The official socket.io-client, through the gateway's TLS listener (verified against the dev
// CA), to a real Socket.IO server: both transport setups, and refusal without a session.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { io } from 'socket.io-client';
import { startRedis, startSocketIoUpstream, startGateway, storeExpressSession, expressCookie, stopAll } from './harness.mjs';

let gw;
let redis;

before(async () => {
  redis = await startRedis(fs.mkdtempSync(path.join(os.tmpdir(), 'gw-redis-')));
  const upstream = await startSocketIoUpstream();
  gw = await startGateway({ redisUrl: redis.url, upstreamPort: upstream.port });
  await storeExpressSession(redis, 'alice-session', 'alice');
});

after(stopAll);

function connect(opts) {
  return io(gw.url, { ca: gw.ca, reconnection: false, timeout: 5000, ...opts });
}

function outcome(socket) {
  return new Promise(resolve => {
    socket.once('whoami', who => resolve({ ok: true, who }));
    socket.once('connect_error', err => resolve({ ok: false, err }));
  });
}

const cookie = () => expressCookie('alice-session', 'the secret key');

test('default transports: polling handshake, then upgrade to websocket', async () => {
  const socket = connect({ extraHeaders: { cookie: cookie() } });
  const r = await outcome(socket);
  assert.equal(r.ok, true, String(r.err));
  assert.equal(r.who.sub, 'alice');
  assert.equal(r.who.transport, 'polling');
  await new Promise((resolve, reject) => {
    if (socket.io.engine.transport.name === 'websocket') return resolve();
    const timer = setTimeout(() => reject(new Error('no upgrade to websocket within 10 s')), 10_000);
    socket.io.engine.once('upgrade', () => { clearTimeout(timer); resolve(); });
  });
  assert.equal(socket.io.engine.transport.name, 'websocket');
  assert.equal(await socket.timeout(5000).emitWithAck('echo', 'after upgrade'), 'after upgrade');
  socket.close();
});

test('websocket only', async () => {
  const socket = connect({ transports: ['websocket'], extraHeaders: { cookie: cookie() } });
  const r = await outcome(socket);
  assert.equal(r.ok, true, String(r.err));
  assert.deepEqual(r.who, { sub: 'alice', transport: 'websocket' });
  assert.equal(await socket.timeout(5000).emitWithAck('echo', 42), 42);
  socket.close();
});

for (const transports of [['polling', 'websocket'], ['websocket']]) {
  test(`refused without a session (${transports.join('+')})`, async () => {
    const socket = connect({ transports });
    const r = await outcome(socket);
    assert.equal(r.ok, false);
    if (transports[0] === 'polling') {
      assert.equal(r.err.context?.status, 401, 'the HTTP handshake is answered 401');
    }
    socket.close();
  });

  test(`refused with a forged cookie (${transports.join('+')})`, async () => {
    const socket = connect({ transports, extraHeaders: { cookie: expressCookie('alice-session', 'guessed secret') } });
    assert.equal((await outcome(socket)).ok, false);
    socket.close();
  });
}

test('a spoofed assertion is not what the upstream sees', async () => {
  const fake = 'e30.' + Buffer.from(JSON.stringify({ sub: 'mallory' })).toString('base64url') + '.x';
  const socket = connect({ transports: ['websocket'], extraHeaders: { cookie: cookie(), 'x-identity-assertion': fake } });
  const r = await outcome(socket);
  assert.equal(r.ok, true);
  assert.equal(r.who.sub, 'alice');
  socket.close();
});
