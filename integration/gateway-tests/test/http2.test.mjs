// A listener with `http2 = true`: browsers speak HTTP/2 to it for ordinary requests (and
// Socket.IO long-polling), while WebSocket upgrades still work over HTTP/1.1 on the same port.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http2 from 'node:http2';
import os from 'node:os';
import path from 'node:path';
import { io } from 'socket.io-client';
import { startRedis, startSocketIoUpstream, startGateway, storeExpressSession, expressCookie, stopAll } from './harness.mjs';

let gw;

before(async () => {
  const redis = await startRedis(fs.mkdtempSync(path.join(os.tmpdir(), 'gw-redis-')));
  const upstream = await startSocketIoUpstream();
  gw = await startGateway({ redisUrl: redis.url, upstreamPort: upstream.port, http2: true });
  await storeExpressSession(redis, 'h2-session', 'alice');
});

after(stopAll);

function h2get(pathAndQuery, headers = {}) {
  return new Promise((resolve, reject) => {
    const client = http2.connect(gw.url, { ca: gw.ca });
    client.on('error', reject);
    const req = client.request({ ':path': pathAndQuery, ...headers });
    let body = '';
    let status;
    req.on('response', h => { status = h[':status']; });
    req.setEncoding('utf8');
    req.on('data', d => { body += d; });
    req.on('end', () => { client.close(); resolve({ status, body, alpn: client.alpnProtocol }); });
    req.on('error', reject);
    req.end();
  });
}

test('an HTTP/2 polling handshake is authenticated like an HTTP/1.1 one', async () => {
  const cookie = expressCookie('h2-session', 'the secret key');
  const ok = await h2get('/socket.io/?EIO=4&transport=polling', { cookie });
  assert.equal(ok.alpn, 'h2');
  assert.equal(ok.status, 200);
  assert.match(ok.body, /^0\{"sid":/);
  const refused = await h2get('/socket.io/?EIO=4&transport=polling');
  assert.equal(refused.status, 401);
});

test('websocket upgrades still work on the HTTP/2-enabled listener', async () => {
  const socket = io(gw.url, { ca: gw.ca, reconnection: false, transports: ['websocket'], extraHeaders: { cookie: expressCookie('h2-session', 'the secret key') } });
  const who = await new Promise((resolve, reject) => {
    socket.once('whoami', resolve);
    socket.once('connect_error', reject);
  });
  assert.deepEqual(who, { sub: 'alice', transport: 'websocket' });
  socket.close();
});
