// Redis restarted for real: the redis-server process is killed (every connection drops, pub/sub
// subscriptions included) and a new process starts on the same port, with its data or without.
// Two presence nodes, real socket.io-client users on each. Cross-node broadcasts must come back by
// themselves, and /readyz must say "not ready" while they cannot work.
import { test, describe, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Presence, Redis, Tab, makeKey, mint, ids, eventually, assertNumbering } from './harness.mjs';

// The sockets stay connected while Redis goes away and comes back: their numbering must not break.
afterEach(assertNumbering);

const key = makeKey('gw-1');
const token = (sub) => mint(key, { sub, name: sub.toUpperCase() });
// Config below: heartbeat 300 ms (the link check runs on it), reconnect attempts at most 500 ms
// apart (op_timeout; up to 1 s with jitter). From the new process being ready to a change on one node reaching a user on the
// other: one back-off step + one check + one broadcast. 3 s leaves room for a loaded CI machine.
const RECOVERY_BOUND_MS = 3000;

for (const persist of [false, true]) {
  describe(`Redis restart (${persist ? 'data kept' : 'data lost'})`, () => {
    let redis, a, b;
    before(async () => {
      redis = await Redis.start({ persist });
      const start = () => Presence.start({ keys: [key], presence: { mode: 'compat' }, backend: { kind: 'redis', redis_url: redis.url } });
      [a, b] = await Promise.all([start(), start()]);
    });
    after(async () => {
      await Promise.all([a.stop(), b.stop()]);
      await redis.stop();
    });

    test(`cross-node broadcasts resume within ${RECOVERY_BOUND_MS} ms; /readyz is 503 while they cannot work`, async (t) => {
      const alice = await new Tab(a.url, token('alice'), { transports: ['websocket'] }).connected();
      const bob = await new Tab(b.url, token('bob'), { transports: ['websocket'] }).connected();
      await alice.waitFor('user_connected', (d) => d.user.id === 'bob');

      await redis.kill();
      for (const n of [a, b]) await eventually(async () => (await n.get('/readyz')).status === 503, 5000, 'readyz 503 while Redis is down');
      for (const tab of [alice, bob]) assert.ok(tab.socket.connected, 'local sockets stay connected');
      // A change while Redis is gone: node A's own sockets hear it at once, node B's cannot yet.
      const markDown = bob.mark();
      const erin = await new Tab(a.url, token('erin'), { transports: ['websocket'] }).connected();
      await alice.waitFor('user_connected', (d) => d.user.id === 'erin');

      await redis.restart();
      const restartedAt = Date.now();
      // Ready again means: presence store reachable AND this node subscribed to the cluster channels.
      for (const n of [a, b]) await eventually(async () => (await n.get('/readyz')).status === 200, RECOVERY_BOUND_MS + 2000, 'readyz 200 after the restart');
      const readyAfter = Date.now() - restartedAt;
      // What node B missed during the outage reaches its user once the link is back.
      const hasErin = (d) => ids(d.onlineUsers).includes('erin');
      await Promise.any([
        bob.waitFor('online_users', hasErin, RECOVERY_BOUND_MS + 2000, markDown),
        bob.waitFor('user_connected', hasErin, RECOVERY_BOUND_MS + 2000, markDown),
      ]);

      // A change on node A reaches the user on node B, and one on B reaches the user on A.
      const markBob = bob.mark();
      const carol = await new Tab(a.url, token('carol'), { transports: ['websocket'] }).connected();
      await bob.waitFor('user_connected', (d) => d.user.id === 'carol', RECOVERY_BOUND_MS + 2000, markBob);
      const took = Date.now() - restartedAt;
      t.diagnostic(`ready ${readyAfter} ms after the restart; node B heard of carol after ${took} ms`);
      assert.ok(took <= RECOVERY_BOUND_MS, `node B heard of carol ${took} ms after the restart (ready after ${readyAfter} ms)`);
      const markAlice = alice.mark();
      const dave = await new Tab(b.url, token('dave'), { transports: ['websocket'] }).connected();
      await alice.waitFor('user_connected', (d) => d.user.id === 'dave', 2000, markAlice);
      // Leaves cross too, and every node's view holds everyone who is still connected.
      carol.close();
      await bob.waitFor('user_disconnected', (d) => d.userId === 'carol', 5000, markBob);
      const viewB = ids((await bob.ask()).onlineUsers);
      assert.deepEqual(viewB, ['alice', 'bob', 'dave', 'erin']);
      for (const tab of [alice, bob, dave, erin]) tab.close();
    });
  });
}
