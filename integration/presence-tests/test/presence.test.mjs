// The presence model as users see it, in both event modes, on one node (in memory).
import { test, describe, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Presence, Tab, makeKey, mint, ids, assertNumbering } from './harness.mjs';

// Every socket these tests open stays on one connection: none may see the numbering break.
afterEach(assertNumbering);

const key = makeKey('gw-1');
const token = (sub, extra = {}) => mint(key, { sub, name: sub.toUpperCase(), ...extra });

describe('compat mode (the seed events)', () => {
  let node;
  before(async () => { node = await Presence.start({ keys: [key], presence: { mode: 'compat', max_sockets_per_user: 3 } }); });
  after(async () => { await node.stop(); });

  test('two users see each other', async () => {
    const alice = await new Tab(node.url, token('alice')).connected();
    assert.deepEqual((await alice.waitFor('online_users')).onlineUsers, [{ id: 'alice', name: 'ALICE' }]);
    const bob = await new Tab(node.url, token('bob'), { transports: ['websocket'] }).connected();
    const seen = await alice.waitFor('user_connected', (d) => d.user.id === 'bob');
    assert.deepEqual(seen.user, { id: 'bob', name: 'BOB' });
    assert.deepEqual(ids(seen.onlineUsers), ['alice', 'bob']);
    assert.deepEqual(ids((await bob.waitFor('online_users')).onlineUsers), ['alice', 'bob']);
    bob.close();
    const gone = await alice.waitFor('user_disconnected', (d) => d.userId === 'bob');
    assert.deepEqual(ids(gone.onlineUsers), ['alice']);
    alice.close();
  });

  test('a second tab does not re-announce; closing one of two tabs keeps the user online', async () => {
    const watcher = await new Tab(node.url, token('watcher')).connected();
    const tab1 = await new Tab(node.url, token('carol')).connected();
    await watcher.waitFor('user_connected', (d) => d.user.id === 'carol');
    const mark = watcher.mark();
    const tab2 = await new Tab(node.url, token('carol'), { transports: ['websocket'] }).connected();
    tab1.close();
    // A sentinel user's full cycle, after both tab events, bounds the wait: anything carol's tabs
    // caused would have been emitted before the sentinel's leave (grace is the same for both).
    const s = await new Tab(node.url, token('sentinel1')).connected();
    s.close();
    await watcher.waitFor('user_disconnected', (d) => d.userId === 'sentinel1', 5000, mark);
    const carolEvents = watcher.events.slice(mark).filter((e) => e.data?.user?.id === 'carol' || e.data?.userId === 'carol');
    assert.deepEqual(carolEvents, []);
    assert.ok(ids((await watcher.ask()).onlineUsers).includes('carol'));
    tab2.close();
    await watcher.waitFor('user_disconnected', (d) => d.userId === 'carol', 5000, mark);
    watcher.close();
  });

  test('a reload within the grace period causes no offline/online pair', async () => {
    const watcher = await new Tab(node.url, token('watcher2')).connected();
    const page = await new Tab(node.url, token('dan')).connected();
    await watcher.waitFor('user_connected', (d) => d.user.id === 'dan');
    const mark = watcher.mark();
    page.close();
    const reloaded = await new Tab(node.url, token('dan')).connected(); // the reload
    const s = await new Tab(node.url, token('sentinel2')).connected();
    s.close();
    await watcher.waitFor('user_disconnected', (d) => d.userId === 'sentinel2', 5000, mark);
    const danEvents = watcher.events.slice(mark).filter((e) => e.data?.user?.id === 'dan' || e.data?.userId === 'dan');
    assert.deepEqual(danEvents, [], 'no user_disconnected/user_connected for a reload');
    reloaded.close();
    watcher.close();
  });

  test('the user goes offline only after the grace period', async () => {
    const watcher = await new Tab(node.url, token('watcher3')).connected();
    const eve = await new Tab(node.url, token('eve')).connected();
    await watcher.waitFor('user_connected', (d) => d.user.id === 'eve');
    const closedAt = Date.now();
    eve.close();
    await watcher.waitFor('user_disconnected', (d) => d.userId === 'eve');
    const at = watcher.events.find((e) => e.data?.userId === 'eve').at;
    assert.ok(at - closedAt >= 700, `offline after ${at - closedAt} ms, grace is 800 ms`);
    watcher.close();
  });

  test('get_online_users answers with the current list', async () => {
    const a = await new Tab(node.url, token('fay')).connected();
    const b = await new Tab(node.url, token('gus')).connected();
    const { onlineUsers } = await a.ask();
    assert.ok(['fay', 'gus'].every((id) => ids(onlineUsers).includes(id)));
    assert.deepEqual(onlineUsers.find((u) => u.id === 'gus'), { id: 'gus', name: 'GUS' });
    a.close(); b.close();
  });

  test('the per-user socket cap refuses the extra socket with a clear connect_error', async () => {
    const tabs = [];
    for (let i = 0; i < 3; i++) tabs.push(await new Tab(node.url, token('hal')).connected());
    const extra = new Tab(node.url, token('hal'));
    assert.equal(await extra.refused(), 'too many connections for this user (limit 3)');
    const other = await new Tab(node.url, token('ida')).connected(); // others are unaffected
    tabs.forEach((t) => t.close()); other.close(); extra.close();
  });

  test('POST /internal/sessions/ended disconnects every socket of that session only', async () => {
    const watcher = await new Tab(node.url, token('watcher4')).connected();
    const s1 = await new Tab(node.url, token('jo', { sid: 'h-logout' })).connected();
    const s2 = await new Tab(node.url, token('jo', { sid: 'h-logout' }), { transports: ['websocket'] }).connected();
    const other = await new Tab(node.url, token('jo', { sid: 'h-phone' })).connected();
    const post = (tok) => fetch(node.url + '/internal/sessions/ended', { method: 'POST', headers: tok ? { 'x-identity-assertion': tok } : {} });
    assert.equal((await post(null)).status, 401);
    assert.equal((await post(mint(makeKey('gw-1'), { sub: 'jo', sid: 'h-logout' }))).status, 401);
    assert.equal((await post(token('jo', { sid: 'h-logout' }))).status, 204);
    assert.equal(await s1.waitFor('disconnect'), 'io server disconnect');
    assert.equal(await s2.waitFor('disconnect'), 'io server disconnect');
    assert.ok(other.socket.connected, 'the other session stays');
    other.close();
    await watcher.waitFor('user_disconnected', (d) => d.userId === 'jo');
    watcher.close();
  });
});

describe('diff mode', () => {
  let node;
  before(async () => { node = await Presence.start({ keys: [key], presence: { mode: 'diff', diff_window_ms: 100 } }); });
  after(async () => { await node.stop(); });

  test('snapshot on connect, then presence_diff joins and leaves; no seed events', async () => {
    const alice = await new Tab(node.url, token('alice')).connected();
    assert.deepEqual((await alice.waitFor('online_users')).onlineUsers, [{ id: 'alice', name: 'ALICE' }]);
    const bob = await new Tab(node.url, token('bob'), { transports: ['websocket'] }).connected();
    const join = await alice.waitFor('presence_diff', (d) => d.joins.some((u) => u.id === 'bob'));
    assert.deepEqual(join.joins.find((u) => u.id === 'bob'), { id: 'bob', name: 'BOB' });
    assert.deepEqual(ids((await bob.waitFor('online_users')).onlineUsers), ['alice', 'bob']);
    bob.close();
    const leave = await alice.waitFor('presence_diff', (d) => d.leaves.includes('bob'));
    assert.deepEqual(leave.joins, []);
    assert.equal(alice.named('user_connected').length + alice.named('user_disconnected').length, 0);
    assert.deepEqual(ids((await alice.ask()).onlineUsers), ['alice']);
    alice.close();
  });

  test('changes within one window arrive as one diff', async () => {
    const watcher = await new Tab(node.url, token('watcher')).connected();
    const mark = watcher.mark();
    const tabs = ['u1', 'u2', 'u3', 'u4'].map((id) => new Tab(node.url, token(id), { transports: ['websocket'] }));
    await Promise.all(tabs.map((t) => t.connected()));
    const all = () => new Set(watcher.events.slice(mark).filter((e) => e.event === 'presence_diff').flatMap((e) => e.data.joins.map((u) => u.id)));
    await watcher.waitFor('presence_diff', () => ['u1', 'u2', 'u3', 'u4'].every((id) => all().has(id)), 5000, mark);
    const diffs = watcher.events.slice(mark).filter((e) => e.event === 'presence_diff');
    assert.ok(diffs.length < 4, `4 joins took ${diffs.length} diffs`);
    tabs.forEach((t) => t.close());
    watcher.close();
  });

  // Broadcasts reach websocket-only and upgraded clients whole and in order (the abuse test in
  // python/test_abuse.py does the same under a ping flood with stalled reads).
  test('broadcasts reach websocket sockets in order', async () => {
    const watchers = await Promise.all(['d-w1', 'd-w2', 'd-w3'].map((id) => new Tab(node.url, token(id), { transports: ['websocket'] }).connected()));
    const marks = watchers.map((w) => w.mark());
    const order = ['d-1', 'd-2', 'd-3', 'd-4', 'd-5'];
    const joiners = [];
    for (const id of order) {
      joiners.push(await new Tab(node.url, token(id), { transports: ['websocket'] }).connected());
      await Promise.all(watchers.map((w, i) => w.waitFor('presence_diff', (d) => d.joins.some((u) => u.id === id), 5000, marks[i])));
    }
    for (const [i, w] of watchers.entries()) {
      const seen = w.events.slice(marks[i]).filter((e) => e.event === 'presence_diff').flatMap((e) => e.data.joins.map((u) => u.id)).filter((id) => order.includes(id));
      assert.deepEqual(seen, order);
    }
    [...joiners, ...watchers].forEach((t) => t.close());
  });

  test('a client upgraded from polling gets its broadcasts in order too', async () => {
    const watcher = await new Tab(node.url, token('u-w')).connected();
    const engine = watcher.socket.io.engine;
    if (engine.transport.name !== 'websocket') await new Promise((resolve) => engine.once('upgrade', resolve));
    // Its own join comes back to it as a diff too: out of the way first.
    await watcher.waitFor('presence_diff', (d) => d.joins.some((u) => u.id === 'u-w'));
    const mark = watcher.mark();
    const order = ['u-1', 'u-2', 'u-3'];
    const joiners = [];
    for (const id of order) {
      joiners.push(await new Tab(node.url, token(id), { transports: ['polling'] }).connected());
      await watcher.waitFor('presence_diff', (d) => d.joins.some((u) => u.id === id), 5000, mark);
    }
    const seen = watcher.events.slice(mark).filter((e) => e.event === 'presence_diff').flatMap((e) => e.data.joins.map((u) => u.id));
    assert.deepEqual(seen, order);
    [...joiners, watcher].forEach((t) => t.close());
  });

  test('a reload within the grace period sends no diff for the user', async () => {
    const watcher = await new Tab(node.url, token('watcher2')).connected();
    const page = await new Tab(node.url, token('kim')).connected();
    await watcher.waitFor('presence_diff', (d) => d.joins.some((u) => u.id === 'kim'));
    const mark = watcher.mark();
    page.close();
    const reloaded = await new Tab(node.url, token('kim')).connected();
    const s = await new Tab(node.url, token('sentinel')).connected();
    s.close();
    await watcher.waitFor('presence_diff', (d) => d.leaves.includes('sentinel'), 5000, mark);
    const kim = watcher.events.slice(mark).filter((e) => e.event === 'presence_diff' && (e.data.leaves.includes('kim') || e.data.joins.some((u) => u.id === 'kim')));
    assert.deepEqual(kim, []);
    reloaded.close();
    watcher.close();
  });
});

// A long list goes out in pages in diff mode, so no frame (and no socket's write buffer) grows
// with the number of users: `online_users` carries the first page, `presence_diff` joins the rest.
describe('diff mode, snapshot in pages', () => {
  const others = ['p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', 'p8'];
  let node;
  before(async () => { node = await Presence.start({ keys: [key], presence: { mode: 'diff', snapshot_page_size: 3 } }); });
  after(async () => { await node.stop(); });

  /** What a diff-mode client shows: `online_users` replaces the list, diffs add and remove. */
  const view = (tab) => {
    const users = new Map();
    for (const { event, data } of tab.events) {
      if (event === 'online_users') {
        users.clear();
        data.onlineUsers.forEach((u) => users.set(u.id, u));
      } else if (event === 'presence_diff') {
        data.joins.forEach((u) => users.set(u.id, u));
        data.leaves.forEach((id) => users.delete(id));
      }
    }
    return users;
  };

  test('a late joiner that applies the pages gets the whole list, nothing twice', async () => {
    const tabs = await Promise.all(others.map((id) => new Tab(node.url, token(id), { transports: ['websocket'] }).connected()));
    // Their joins are out (so any diff the late joiner gets is a page of its snapshot).
    await tabs[0].waitFor('presence_diff', () => view(tabs[0]).size === others.length);
    const late = await new Tab(node.url, token('late')).connected();
    const everyone = [...others, 'late'].sort();
    await late.waitFor('presence_diff', () => view(late).size === everyone.length);
    assert.deepEqual([...view(late).keys()].sort(), everyone);
    assert.deepEqual(view(late).get('p5'), { id: 'p5', name: 'P5' });
    // A client of the wire contract applies the pages (they carry no seq) without a gap.
    assert.deepEqual(late.list(), everyone);
    const first = late.named('online_users');
    assert.equal(first.length, 1);
    assert.ok(first[0].onlineUsers.length <= 3, `first page has ${first[0].onlineUsers.length} users`);
    const pages = late.named('presence_diff');
    assert.ok(pages.every((d) => d.joins.length <= 3 && d.leaves.length === 0), JSON.stringify(pages));
    // Each other user comes once (only the late joiner's own join also arrives as a diff).
    const sent = [...first[0].onlineUsers, ...pages.flatMap((d) => d.joins)].map((u) => u.id).filter((id) => id !== 'late');
    assert.deepEqual(sent.sort(), others);
    // What the server itself says is online: the same list.
    assert.deepEqual(ids((await late.ask()).onlineUsers), everyone);
    tabs.forEach((t) => t.close());
    late.close();
  });

  test('compat mode keeps the seed snapshot: one online_users with everyone', async () => {
    const compat = await Presence.start({ keys: [key], presence: { mode: 'compat', snapshot_page_size: 3 } });
    try {
      const tabs = await Promise.all(others.map((id) => new Tab(compat.url, token(id), { transports: ['websocket'] }).connected()));
      const late = await new Tab(compat.url, token('late')).connected();
      assert.deepEqual(ids((await late.waitFor('online_users')).onlineUsers), [...others, 'late'].sort());
      tabs.forEach((t) => t.close());
      late.close();
    } finally {
      await compat.stop();
    }
  });
});

describe('heartbeat (Engine.IO pings)', () => {
  let node;
  // Short pings, so that a few of them and a missed pong fit in a test.
  before(async () => { node = await Presence.start({ keys: [key], limits: { ping_interval_ms: 200, ping_timeout_ms: 400 } }); });
  after(async () => { await node.stop(); });

  const pinged = (tab, count) => new Promise((ok) => {
    let n = 0;
    tab.socket.io.engine.on('ping', () => { if (++n === count) ok(); });
  });

  test('clients that answer pings stay connected, websocket-only and upgraded from polling', { timeout: 10000 }, async () => {
    const wsOnly = await new Tab(node.url, token('pinged-ws'), { transports: ['websocket'] }).connected();
    const upgraded = await new Tab(node.url, token('pinged-poll')).connected();
    await Promise.all([pinged(wsOnly, 4), pinged(upgraded, 4)]);
    assert.ok(wsOnly.socket.connected && upgraded.socket.connected);
    assert.equal(wsOnly.named('disconnect').length + upgraded.named('disconnect').length, 0);
    wsOnly.close();
    upgraded.close();
  });

  test('a websocket client that stops answering pings is dropped, and its user goes offline', { timeout: 10000 }, async () => {
    const watcher = await new Tab(node.url, token('hb-watcher')).connected();
    // A bare WebSocket that connects to the namespace and then ignores every ping.
    const ws = new WebSocket(node.url.replace('http', 'ws') + '/socket.io/?EIO=4&transport=websocket',
      { headers: { 'x-identity-assertion': token('mute') } });
    let pings = 0;
    ws.on('message', (data) => {
      const text = data.toString();
      if (text.startsWith('0')) ws.send('40');
      if (text === '2') pings += 1;
    });
    const closed = new Promise((ok) => ws.on('close', () => ok(Date.now())));
    await watcher.waitFor('user_connected', (d) => d.user.id === 'mute');
    const joinedAt = Date.now();
    const closedAt = await closed;
    assert.ok(pings >= 1, 'the server pinged');
    // Closed one ping timeout after the unanswered ping (plus scheduling slack), not before.
    assert.ok(closedAt - joinedAt < 2000, `closed after ${closedAt - joinedAt} ms`);
    const gone = await watcher.waitFor('user_disconnected', (d) => d.userId === 'mute');
    assert.ok(!ids(gone.onlineUsers).includes('mute'));
    watcher.close();
  });
});
