// Several presence-service processes sharing one real Redis: one view across nodes, crashed nodes
// reaped within the stated bound, logout reaching every node, and a Redis outage survived.
import { test, describe, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Presence, Redis, Tab, makeKey, mint, ids, eventually, assertNumbering } from './harness.mjs';

// Every socket these tests open stays on one connection: none may see the numbering break.
afterEach(assertNumbering);

const key = makeKey('gw-1');
const token = (sub, extra = {}) => mint(key, { sub, name: sub.toUpperCase(), ...extra });
// Config used below: heartbeat 300 ms, node TTL 1000 ms => a dead node's users are removed within
// node_ttl + heartbeat = 1.3 s (+ the diff window / one Redis round trip). Defaults: 3 s + 1 s.
const CRASH_BOUND_MS = 1000 + 300 + 200;

for (const mode of ['compat', 'diff']) {
  describe(`cluster of three nodes (${mode} mode)`, () => {
    let redis, a, b, c;
    const start = (prefix) => Presence.start({ keys: [key], presence: { mode }, backend: { kind: 'redis', redis_url: redis.url, key_prefix: prefix } });
    const joined = (tab, id) => mode === 'compat'
      ? tab.waitFor('user_connected', (d) => d.user.id === id)
      : tab.waitFor('presence_diff', (d) => d.joins.some((u) => u.id === id));
    const left = (tab, id, ms = 5000, from = 0) => mode === 'compat'
      ? tab.waitFor('user_disconnected', (d) => d.userId === id, ms, from)
      : tab.waitFor('presence_diff', (d) => d.leaves.includes(id), ms, from);

    before(async () => {
      redis = await Redis.start();
      [a, b, c] = await Promise.all([start(mode), start(mode), start(mode)]);
    });
    after(async () => {
      for (const n of [a, b, c]) await n.stop();
      await redis.stop();
    });

    test('a user on node A sees a user on node B, and a late joiner on A gets both in its snapshot', async () => {
      const alice = await new Tab(a.url, token('alice')).connected();
      const bob = await new Tab(b.url, token('bob'), { transports: ['websocket'] }).connected();
      await joined(alice, 'bob');
      assert.ok(ids((await bob.waitFor('online_users')).onlineUsers).includes('alice'));
      const late = await new Tab(a.url, token('late')).connected();
      const snapshot = ids((await late.waitFor('online_users')).onlineUsers);
      assert.ok(['alice', 'bob', 'late'].every((id) => snapshot.includes(id)), JSON.stringify(snapshot));
      assert.ok(ids((await late.ask()).onlineUsers).includes('bob'));
      const res = await c.get('/presence', token('ops'));
      assert.ok(ids((await res.json()).onlineUsers).includes('bob'));
      bob.close();
      await left(alice, 'bob');
      alice.close(); late.close();
    });

    test('the same user on two nodes stays online while either socket is left', async () => {
      const watcher = await new Tab(c.url, token('w1')).connected();
      const onA = await new Tab(a.url, token('multi')).connected();
      await joined(watcher, 'multi');
      const mark = watcher.mark();
      const onB = await new Tab(b.url, token('multi')).connected();
      onA.close();
      const s = await new Tab(a.url, token('sentinel')).connected();
      s.close();
      await left(watcher, 'sentinel', 5000, mark);
      assert.ok(ids((await watcher.ask()).onlineUsers).includes('multi'));
      onB.close();
      await left(watcher, 'multi', 5000, mark);
      watcher.close();
    });

    test('logout on node A disconnects that session\'s sockets on node B', async () => {
      const onB = await new Tab(b.url, token('lou', { sid: 'h-1' })).connected();
      const res = await fetch(a.url + '/internal/sessions/ended', { method: 'POST', headers: { 'x-identity-assertion': token('lou', { sid: 'h-1' }) } });
      assert.equal(res.status, 204);
      assert.equal(await onB.waitFor('disconnect'), 'io server disconnect');
    });

    test(`SIGKILL of node B removes its users from A's view within ${CRASH_BOUND_MS} ms`, async () => {
      const watcher = await new Tab(a.url, token('watcher')).connected();
      const victim = await new Tab(b.url, token('victim')).connected();
      await joined(watcher, 'victim');
      const killedAt = Date.now();
      b.kill('SIGKILL');
      await left(watcher, 'victim', CRASH_BOUND_MS + 2000);
      const took = Date.now() - killedAt;
      assert.ok(took <= CRASH_BOUND_MS, `took ${took} ms`);
      assert.ok(!ids((await watcher.ask()).onlineUsers).includes('victim'));
      victim.close(); watcher.close();
    });
  });
}

// Issue 11, case 4: joins at nearly the same moment on different nodes. Each list a node sends
// is numbered, so a client can tell (and a node must never send) an older view after a newer one.
for (const mode of ['compat', 'diff']) {
  describe(`near-simultaneous joins over three nodes (${mode} mode)`, () => {
    let redis, nodes;
    before(async () => {
      redis = await Redis.start();
      nodes = await Promise.all([0, 1, 2].map(() => Presence.start({ keys: [key], presence: { mode }, backend: { kind: 'redis', redis_url: redis.url } })));
    });
    after(async () => {
      for (const n of nodes) await n.stop();
      await redis.stop();
    });

    /** What a seed-style compat client shows: the last list it was sent, whatever its number. */
    const lastList = (tab) => {
      const last = tab.events.findLast((e) => ['online_users', 'user_connected', 'user_disconnected'].includes(e.event));
      return last ? ids(last.data.onlineUsers) : [];
    };

    test('bursts of 9 connects spread over the nodes: every list equals the truth, no gap, no older list', { timeout: 60_000 }, async () => {
      const watchers = await Promise.all(nodes.map((n, i) => new Tab(n.url, token(`watch${i}`), { transports: ['websocket'] }).connected()));
      const tabs = [...watchers];
      for (let round = 0; round < 3; round++) {
        const burst = Array.from({ length: 9 }, (_, i) => new Tab(nodes[i % 3].url, token(`b${round}-${i}`), { transports: ['websocket'] }));
        tabs.push(...burst);
        await Promise.all(burst.map((t) => t.connected()));
        const truth = tabs.map((t) => t.who.split('@')[0]).sort();
        // Lists converge (there is no one event that says "all joins are out" on every node).
        await eventually(() => tabs.every((t) => t.list().join() === truth.join()), 5000, `round ${round}: every tab's list is the truth`)
          .catch((e) => { throw new Error(`${e.message}: ${tabs.filter((t) => t.list().join() !== truth.join()).map((t) => `${t.who} ${t.list()}`).join('; ')}`); });
        if (mode === 'compat') {
          const behind = tabs.filter((t) => lastList(t).join() !== truth.join()).map((t) => `${t.who} ${lastList(t)}`);
          assert.deepEqual(behind, [], `round ${round}: a seed-style client shows an older list`);
        }
        for (const t of tabs) {
          assert.deepEqual(t.seqGaps(), [], `${t.who} saw a gap`);
          assert.deepEqual(t.regressions(), [], `${t.who} was sent an older list`);
        }
      }
      for (const t of tabs) t.close();
    });
  });
}

describe('Redis outage', () => {
  let redis, a, b;
  before(async () => {
    redis = await Redis.start();
    const start = () => Presence.start({ keys: [key], presence: { mode: 'compat' }, backend: { kind: 'redis', redis_url: redis.url } });
    [a, b] = await Promise.all([start(), start()]);
  });
  after(async () => {
    redis.resume();
    for (const n of [a, b]) await n.stop();
    await redis.stop();
  });

  test('local sockets stay connected and served; the cluster view heals when Redis returns', async () => {
    const alice = await new Tab(a.url, token('alice'), { transports: ['websocket'] }).connected();
    const bob = await new Tab(b.url, token('bob'), { transports: ['websocket'] }).connected();
    await alice.waitFor('user_connected', (d) => d.user.id === 'bob');
    // Node A's view of the cluster is refreshed every heartbeat (and by any read, like this one).
    assert.ok(ids((await alice.ask()).onlineUsers).includes('bob'));
    redis.pause(); // unreachable: commands time out (op_timeout 500 ms)
    await eventually(async () => (await a.get('/readyz')).status === 503, 5000, 'readyz 503');
    // Local users still connect and hear about each other on their node.
    const carol = await new Tab(a.url, token('carol'), { transports: ['websocket'] }).connected();
    await alice.waitFor('user_connected', (d) => d.user.id === 'carol', 5000);
    // The last known view is still served.
    assert.ok(ids((await alice.ask()).onlineUsers).includes('bob'));
    for (const t of [alice, bob, carol]) assert.ok(t.socket.connected);
    redis.resume();
    await eventually(async () => (await a.get('/readyz')).status === 200, 5000, 'readyz 200');
    // Carol, who arrived during the outage, is re-synced into Redis and announced cluster-wide.
    await eventually(async () => ids((await bob.ask()).onlineUsers).includes('carol'), 5000, 'carol visible on B');
    const dave = await new Tab(b.url, token('dave')).connected();
    await alice.waitFor('user_connected', (d) => d.user.id === 'dave');
    for (const t of [alice, bob, carol, dave]) t.close();
  });
});

describe('clean stop (SIGTERM)', () => {
  const GRACE_MS = 800; // the harness's presence.grace_ms
  let redis, a, b;
  before(async () => {
    redis = await Redis.start();
    // A node TTL far beyond the bound below: a leave within it can only come from node B leaving
    // the cluster itself, not from node A reaping it.
    const start = () => Presence.start({ keys: [key], presence: { mode: 'compat' }, backend: { kind: 'redis', redis_url: redis.url, node_ttl_ms: 30000 } });
    [a, b] = await Promise.all([start(), start()]);
  });
  after(async () => {
    await Promise.all([a.stop(), b.stop()]);
    await redis.stop();
  });

  test('node B leaves the cluster: its users go offline after the grace period, users also on A stay online', async () => {
    const watcher = await new Tab(a.url, token('watcher'), { transports: ['websocket'] }).connected();
    const onlyB = await new Tab(b.url, token('onlyb'), { transports: ['websocket'] }).connected();
    const multiA = await new Tab(a.url, token('multi'), { transports: ['websocket'] }).connected();
    const multiB = await new Tab(b.url, token('multi'), { transports: ['websocket'] }).connected();
    await watcher.waitFor('user_connected', (d) => d.user.id === 'onlyb');
    await watcher.waitFor('user_connected', (d) => d.user.id === 'multi');
    const mark = watcher.mark();
    const exited = new Promise((ok) => b.proc.once('exit', (code, signal) => ok({ code, signal })));
    const stoppedAt = Date.now();
    b.kill('SIGTERM');
    // The connection is closed, not the Socket.IO session: socket.io-client would reconnect by itself.
    assert.equal(await onlyB.waitFor('disconnect'), 'transport close');
    assert.equal(await multiB.waitFor('disconnect'), 'transport close');
    await watcher.waitFor('user_disconnected', (d) => d.userId === 'onlyb', 5000, mark);
    const took = Date.now() - stoppedAt;
    assert.ok(took >= GRACE_MS - 50 && took <= GRACE_MS + 1500, `onlyb left ${took} ms after SIGTERM`);
    assert.deepEqual(await exited, { code: 0, signal: null });
    assert.ok(!watcher.events.slice(mark).some((e) => e.event === 'user_disconnected' && e.data.userId === 'multi'), 'multi never left');
    assert.deepEqual(ids((await watcher.ask()).onlineUsers), ['multi', 'watcher']);
    watcher.close(); multiA.close();
  });
});
