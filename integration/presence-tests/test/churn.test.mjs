// Presence under churn and faults: sockets that close at once leave no ghosts, an oversized
// websocket message closes its session, a new socket's first presence event is its snapshot,
// and a node whose users were reaped during a long Redis pause stores them again.
import { test, describe, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Presence, Redis, Tab, makeKey, mint, ids, eventually, assertNumbering } from './harness.mjs';

// Every socket these tests open stays on one connection: none may see the numbering break.
afterEach(assertNumbering);

const key = makeKey('gw-1');
const token = (sub, extra = {}) => mint(key, { sub, name: sub.toUpperCase(), ...extra });
const wsUrl = (node) => node.url.replace('http', 'ws') + '/socket.io/?EIO=4&transport=websocket';

async function metric(node, name) {
  const text = await (await node.get('/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.split(' ')[1]) : NaN;
}

/** A raw websocket that sends the Socket.IO connect and closes at a chosen moment. */
function closeEarly(node, tok, when) {
  return new Promise((done) => {
    const ws = new WebSocket(wsUrl(node), { headers: { 'x-identity-assertion': tok } });
    const finish = () => { clearTimeout(bound); ws.terminate(); done(); };
    // Bounded: a cycle whose answer never comes is cut at the same point as any other.
    const bound = setTimeout(finish, 2000);
    ws.on('error', () => done());
    ws.on('close', () => done());
    ws.on('open', () => {
      if (when === 'on-open') return finish();
    });
    ws.on('message', (data) => {
      const m = data.toString();
      if (m.startsWith('0')) { // Engine.IO open: send the Socket.IO connect
        ws.send('40');
        if (when === 'after-connect') finish();
        else if (when === 'next-tick') setImmediate(finish);
      } else if (m.startsWith('40') && when === 'after-ack') finish();
    });
  });
}

describe('ghost sockets', () => {
  let node;
  before(async () => { node = await Presence.start({ keys: [key], presence: { mode: 'diff', grace_ms: 300 } }); });
  after(async () => { await node.stop(); });

  test('sockets closed right after connecting are all uncounted, and their user goes offline', { timeout: 60_000 }, async () => {
    const seed = Number(process.env.CHURN_SEED ?? Date.now() % 100000);
    console.log(`ghost churn seed ${seed} (CHURN_SEED to replay)`);
    let s = seed;
    const rand = () => { s = (s * 1103515245 + 12345) % 2147483648; return s / 2147483648; };
    const watcher = await new Tab(node.url, token('watcher'), { transports: ['websocket'] }).connected();
    const tok = token('flaky');
    const moments = ['on-open', 'after-connect', 'next-tick', 'after-ack'];
    // Bounded: 400 cycles, 16 at a time.
    for (let round = 0; round < 25; round++) {
      await Promise.all(Array.from({ length: 16 }, () => closeEarly(node, tok, moments[Math.floor(rand() * moments.length)])));
    }
    // Only the watcher's socket is open: the gauge must come back to 1, and the flaky user go.
    await eventually(async () => (await metric(node, 'presence_connected_sockets')) === 1, 5000, 'connected sockets back to 1');
    await eventually(async () => !ids((await (await node.get('/presence', token('ops'))).json()).onlineUsers).includes('flaky'), 5000, 'flaky offline');
    // The per-user cap is not eaten by leaked sockets: the user can still connect.
    const again = await new Tab(node.url, tok, { transports: ['websocket'] }).connected();
    again.close(); watcher.close();
  });
});

describe('max_payload', () => {
  let node;
  before(async () => { node = await Presence.start({ keys: [key], limits: { max_payload: 10000 } }); });
  after(async () => { await node.stop(); });

  test('a websocket message over max_payload closes the session; one under it is answered', { timeout: 60_000 }, async () => {
    const ws = new WebSocket(wsUrl(node), { headers: { 'x-identity-assertion': token('big') } });
    const inbox = [];
    let wake = () => {};
    ws.on('message', (d) => { inbox.push(d.toString()); wake(); });
    const closed = new Promise((ok) => ws.on('close', (code) => ok(code)));
    const next = async (pred) => {
      const deadline = Date.now() + 5000;
      for (;;) {
        const found = inbox.findIndex(pred);
        if (found >= 0) return inbox.splice(found, 1)[0];
        if (Date.now() > deadline) throw new Error(`no such message; got ${JSON.stringify(inbox)}`);
        await new Promise((ok) => { wake = ok; setTimeout(ok, 100); });
      }
    };
    await next((m) => m.startsWith('0'));
    ws.send('40');
    await next((m) => m.startsWith('40'));
    ws.send(`421${JSON.stringify(['get_online_users', 'x'.repeat(100)])}`);
    assert.match(await next((m) => m.startsWith('431')), /onlineUsers/);
    ws.send(`422${JSON.stringify(['get_online_users', 'x'.repeat(50000)])}`);
    const code = await Promise.race([closed, new Promise((ok) => setTimeout(() => ok('still open after 5 s'), 5000))]);
    ws.terminate();
    assert.ok(!inbox.some((m) => m.startsWith('432')), 'the oversized message was answered');
    assert.ok([1005, 1009].includes(code), `close code ${code}`);
  });
});

describe('first event', () => {
  let node;
  before(async () => { node = await Presence.start({ keys: [key] }); });
  after(async () => { await node.stop(); });

  test('an event sent the moment the connect ack arrives is answered', { timeout: 60_000 }, async () => {
    const one = (i) => new Promise((ok, bad) => {
      const ws = new WebSocket(wsUrl(node), { headers: { 'x-identity-assertion': token(`eager${i}`) } });
      const timer = setTimeout(() => { ws.terminate(); bad(new Error(`socket ${i}: no answer`)); }, 5000);
      ws.on('message', (d) => {
        const m = d.toString();
        if (m.startsWith('0')) ws.send('40');
        else if (m.startsWith('40')) ws.send(`421${JSON.stringify(['get_online_users'])}`);
        else if (m.startsWith('431')) { clearTimeout(timer); ws.terminate(); ok(); }
      });
      ws.on('error', (e) => { clearTimeout(timer); bad(e); });
    });
    for (let round = 0; round < 5; round++) await Promise.all(Array.from({ length: 10 }, (_, i) => one(round * 10 + i)));
  });
});

describe('diff mode order', () => {
  let node;
  before(async () => { node = await Presence.start({ keys: [key], presence: { mode: 'diff', diff_window_ms: 5 } }); });
  after(async () => { await node.stop(); });

  test('each new socket gets online_users before any presence_diff, while others keep joining', { timeout: 60_000 }, async () => {
    const tabs = [];
    for (let round = 0; round < 4; round++) {
      const batch = Array.from({ length: 8 }, (_, i) => new Tab(node.url, token(`u${round}-${i}`), { transports: ['websocket'] }));
      tabs.push(...batch);
      await Promise.all(batch.map((t) => t.connected()));
    }
    const bad = tabs.filter((t) => t.events.find((e) => e.event === 'online_users' || e.event === 'presence_diff')?.event !== 'online_users');
    for (const t of tabs) t.close();
    assert.equal(bad.length, 0, `${bad.length} of ${tabs.length} sockets got a presence_diff before their snapshot`);
  });
});

describe('Redis paused longer than node_ttl', () => {
  let redis, a, b;
  before(async () => {
    redis = await Redis.start();
    const start = () => Presence.start({ keys: [key], presence: { mode: 'diff' }, backend: { kind: 'redis', redis_url: redis.url } });
    [a, b] = await Promise.all([start(), start()]);
  });
  after(async () => {
    redis.resume();
    for (const n of [a, b]) await n.stop();
    await redis.stop();
  });

  test('a node reaped during the pause stores its users again; every view converges', { timeout: 60_000 }, async () => {
    const alice = await new Tab(a.url, token('alice'), { transports: ['websocket'] }).connected();
    const bob = await new Tab(b.url, token('bob'), { transports: ['websocket'] }).connected();
    const view = (node) => async () => ids((await (await node.get('/presence', token('ops'))).json()).onlineUsers);
    await eventually(async () => (await view(a)()).join() === 'alice,bob', 5000, 'both online');
    redis.pause();
    // node_ttl 1000 ms: long enough that whichever node heartbeats first after the pause reaps
    // the other. Waited out on /readyz turning 503 and then three TTLs.
    await eventually(async () => (await a.get('/readyz')).status === 503, 5000, 'readyz 503');
    await new Promise((ok) => setTimeout(ok, 3000));
    redis.resume();
    const t0 = Date.now();
    for (const node of [a, b]) {
      await eventually(async () => (await view(node)()).join() === 'alice,bob', 5000, 'both online again');
    }
    // Stays so: a later heartbeat does not lose anyone.
    await new Promise((ok) => setTimeout(ok, 1000));
    for (const node of [a, b]) assert.equal((await view(node)()).join(), 'alice,bob');
    for (const t of [alice, bob]) assert.ok(t.socket.connected);
    console.log(`views converged ${Date.now() - t0} ms after Redis resumed`);
    alice.close(); bob.close();
  });
});
