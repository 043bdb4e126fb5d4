// The store against a real socket.io server (the npm package) speaking both event modes of the
// presence service, and a small HTTP stand-in for the demo service's /api/auth routes.
import http from 'node:http';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Server } from 'socket.io';
import { createSessionStore } from './session.js';

const alice = { id: 'alice', name: 'Alice Archer' };
const bob = { id: 'bob', name: 'Bob Baker' };

let server;
let io;
let baseUrl;
let signedIn; // the stand-in's one session: who is logged in, or null
let sockets; // server-side sockets, in connection order
let userChecks; // resolvers waiting for the next GET /api/auth/user
let apiDown; // the whole stack is down: the API answers 503 and handshakes are refused
let refusals; // how many more connects the server's middleware refuses, and with what
let throttled; // handshakes the stand-in gateway still refuses: [{ status, retryAfter }], in order
let handshakeTimes; // when each Engine.IO handshake reached the server (ms)
let logs; // what the store logged (raw errors belong there, not on screen)
const log = { info: (...a) => logs.push(a.join(' ')), warn: (...a) => logs.push(a.join(' ')) };
// Short delays so the tests run fast; the page uses the defaults (connection.js).
const FAST = { backoff: { baseMs: 20, maxMs: 80 }, log };
const FAST_SOCKET = { reconnectionDelay: 20, reconnectionDelayMax: 80 };

function standIn(req, res) {
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  if (apiDown && req.url.startsWith('/api/')) return reply(503, { error: 'unavailable' });
  if (req.method === 'GET' && req.url === '/api/auth/user') {
    userChecks.splice(0).forEach((resolve) => resolve());
    return signedIn ? reply(200, { user: signedIn }) : reply(401, { user: null });
  }
  if (req.method === 'POST' && req.url === '/api/auth/logout') {
    signedIn = null;
    return reply(200, { ok: true });
  }
  if (req.method === 'POST' && req.url === '/api/auth/login') {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      const { username, password } = JSON.parse(body);
      if (username === 'alice' && password === 'alice-pass') {
        signedIn = alice;
        reply(200, { user: alice });
      } else reply(401, { error: 'invalid username or password' });
    });
    return undefined;
  }
  return undefined; // socket.io handles its own path
}

beforeEach(async () => {
  signedIn = null;
  sockets = [];
  userChecks = [];
  apiDown = false;
  refusals = [];
  logs = [];
  server = http.createServer(standIn);
  // Like the gateway: a handshake without a live session gets an HTTP error, not a socket.
  io = new Server(server, { allowRequest: (req, ok) => ok(null, !apiDown && signedIn !== null) });
  // Like the presence service's middleware: a refusal is a CONNECT_ERROR with the reason.
  io.use((socket, next) => (refusals.length ? next(new Error(refusals.shift())) : next()));
  io.on('connection', (socket) => sockets.push(socket));
  // In front of socket.io, like the gateway's admission control: handshakes (no `sid`) may be
  // refused with a status and Retry-After before the server sees them.
  throttled = [];
  handshakeTimes = [];
  const sioListeners = server.listeners('request');
  server.removeAllListeners('request');
  server.on('request', (req, res) => {
    if (req.url.startsWith('/socket.io/') && !/[?&]sid=/.test(req.url)) {
      handshakeTimes.push(Date.now());
      const refusal = throttled.shift();
      if (refusal) {
        res.writeHead(refusal.status, { 'retry-after': refusal.retryAfter, 'content-type': 'text/plain' });
        res.end('too many handshakes, retry later\n');
        return;
      }
    }
    sioListeners.forEach((listener) => listener.call(server, req, res));
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  baseUrl = `http://127.0.0.1:${server.address().port}`;
});

afterEach(async () => {
  io.close();
  await new Promise((ok) => server.close(ok));
});

/** Resolves once the store's state satisfies `predicate` (no polling, no sleeps). */
function until(store, predicate, what) {
  return new Promise((resolve, reject) => {
    if (predicate(store.getState())) return resolve(store.getState());
    const timer = setTimeout(() => {
      unsubscribe();
      reject(new Error(`timed out waiting for ${what}`));
    }, 5000);
    const unsubscribe = store.subscribe((state) => {
      if (predicate(state)) {
        clearTimeout(timer);
        unsubscribe();
        resolve(state);
      }
    });
    return undefined;
  });
}

const ids = (state) => state.onlineUsers.map((u) => u.id).join(',');

async function signedInStore(transports) {
  const store = createSessionStore({ baseUrl, socketOptions: { transports, ...FAST_SOCKET }, ...FAST });
  expect(await store.getState().login('alice', 'alice-pass')).toBe(true);
  await until(store, (s) => s.connection === 'online', 'socket connected');
  return store;
}

describe.each([['polling', 'websocket'], ['websocket']])('session store over %s', (...transports) => {
  it('follows compat-mode events', async () => {
    const store = await signedInStore(transports);
    sockets[0].emit('online_users', { onlineUsers: [alice] });
    await until(store, (s) => ids(s) === 'alice', 'alice alone');
    io.emit('user_connected', { onlineUsers: [alice, bob], user: bob });
    await until(store, (s) => ids(s) === 'alice,bob', 'bob joins');
    io.emit('user_disconnected', { onlineUsers: [alice], userId: 'bob' });
    await until(store, (s) => ids(s) === 'alice', 'bob leaves');
    await store.getState().logout();
  });

  it('follows diff-mode events', async () => {
    const store = await signedInStore(transports);
    sockets[0].emit('online_users', { onlineUsers: [alice] });
    await until(store, (s) => ids(s) === 'alice', 'snapshot');
    io.emit('presence_diff', { joins: [bob], leaves: [] });
    await until(store, (s) => ids(s) === 'alice,bob', 'bob joins');
    io.emit('presence_diff', { joins: [], leaves: ['bob'] });
    await until(store, (s) => ids(s) === 'alice', 'bob leaves');
    await store.getState().logout();
  });
});

describe.each([['polling', 'websocket'], ['websocket']])('the wire numbering over %s', (...transports) => {
  const carol = { id: 'carol', name: 'Carol Cooper' };
  const dave = { id: 'dave', name: 'Dave Dunn' };
  const eve = { id: 'eve', name: 'Eve Evans' };

  it('stale diffs are ignored; a gap asks get_online_users once, ignores diffs until the answer, then continues', async () => {
    const store = await signedInStore(transports);
    const asked = [];
    // Like the presence service, the answer is the list as of the last frame sent before it.
    sockets[0].on('get_online_users', (ack) => {
      asked.push(Date.now());
      ack({ onlineUsers: [alice, bob, carol, dave], epoch: 'e1', seq: 5 });
    });
    const seen = [];
    store.subscribe((s) => seen.push(ids(s)));
    sockets[0].emit('online_users', { onlineUsers: [alice], epoch: 'e1', seq: 1 });
    sockets[0].emit('presence_diff', { joins: [bob], leaves: [], epoch: 'e1', seq: 2 });
    sockets[0].emit('presence_diff', { joins: [], leaves: ['bob'], epoch: 'e1', seq: 2 }); // a repeat: stale
    await until(store, (s) => ids(s) === 'alice,bob', 'bob joins');
    sockets[0].emit('presence_diff', { joins: [carol], leaves: [], epoch: 'e1', seq: 4 }); // 3 was lost
    sockets[0].emit('presence_diff', { joins: [dave], leaves: [], epoch: 'e1', seq: 5 }); // before the answer
    await until(store, (s) => ids(s) === 'alice,bob,carol,dave', 'the answer to the question');
    sockets[0].emit('presence_diff', { joins: [], leaves: ['alice'], epoch: 'e1', seq: 6 });
    sockets[0].emit('presence_diff', { joins: [eve], leaves: [] }); // a page: no numbers
    await until(store, (s) => ids(s) === 'bob,carol,dave,eve', 'diffs continue from the answer');
    expect(asked).toHaveLength(1);
    // Neither the stale leave nor a diff on top of the list with the hole was ever shown.
    expect(seen.slice(seen.indexOf('alice,bob'))).not.toContain('alice');
    expect(seen.filter((l) => l.includes('dave') && !l.includes('carol'))).toEqual([]);
    await store.getState().logout();
  });

  it('a node that restarted (another epoch) is asked; a reconnect starts over from its snapshot', async () => {
    const store = await signedInStore(transports);
    let answers = 0;
    sockets[0].on('get_online_users', (ack) => {
      answers += 1;
      ack({ onlineUsers: [bob], epoch: 'e2', seq: 3 });
    });
    sockets[0].emit('online_users', { onlineUsers: [alice], epoch: 'e1', seq: 40 });
    await until(store, (s) => ids(s) === 'alice', 'snapshot');
    sockets[0].emit('presence_diff', { joins: [carol], leaves: [], epoch: 'e2', seq: 3 });
    await until(store, (s) => ids(s) === 'bob', 'the answer of the new epoch');
    sockets[0].emit('presence_diff', { joins: [carol], leaves: [], epoch: 'e2', seq: 4 });
    await until(store, (s) => ids(s) === 'bob,carol', 'diffs of the new epoch');
    // The connection drops (the client reconnects by itself); the new one numbers from 1.
    sockets[0].conn.close();
    await until(store, (s) => s.connection === 'online' && sockets.length === 2, 'reconnected');
    sockets[1].emit('online_users', { onlineUsers: [alice, dave], epoch: 'e3', seq: 1 });
    sockets[1].emit('presence_diff', { joins: [eve], leaves: [], epoch: 'e3', seq: 2 });
    await until(store, (s) => ids(s) === 'alice,dave,eve', 'the new connection');
    expect(answers).toBe(1);
    await store.getState().logout();
  });
});

describe('session store lifecycle', () => {
  it('restores a login, and reports anonymous without one', async () => {
    const anonymous = createSessionStore({ baseUrl, ...FAST });
    await anonymous.getState().restore();
    expect(anonymous.getState()).toMatchObject({ status: 'anonymous', user: null, socket: null });

    signedIn = alice;
    const restored = createSessionStore({ baseUrl, ...FAST });
    await restored.getState().restore();
    expect(restored.getState()).toMatchObject({ status: 'authenticated', user: alice });
    await until(restored, (s) => s.connection === 'online', 'socket connected');
    await restored.getState().logout();
  });

  it('a wrong password leaves the user signed out with no socket', async () => {
    const store = createSessionStore({ baseUrl, ...FAST });
    expect(await store.getState().login('alice', 'nope')).toBe(false);
    expect(store.getState()).toMatchObject({ user: null, socket: null, loginError: 'Wrong username or password.' });
  });

  it('logout closes the socket on the server side too', async () => {
    const store = await signedInStore(['websocket']);
    const gone = new Promise((ok) => sockets[0].on('disconnect', ok));
    await store.getState().logout();
    expect(await gone).toBe('client namespace disconnect');
    expect(store.getState()).toMatchObject({ status: 'anonymous', user: null, socket: null, onlineUsers: [] });
    expect(signedIn).toBe(null);
  });

  it('a server-side disconnect after logout elsewhere signs this tab out', async () => {
    const store = await signedInStore(['websocket']);
    signedIn = null; // the session ended (logout in another tab)
    sockets[0].disconnect(true);
    await until(store, (s) => s.status === 'anonymous', 'signed out');
    expect(store.getState()).toMatchObject({ user: null, socket: null, connection: 'offline' });
  });

  it('a server-side disconnect with the session still valid stays signed in, offline, without a reconnect loop', async () => {
    const store = await signedInStore(['websocket']);
    const checked = new Promise((resolve) => userChecks.push(resolve));
    sockets[0].disconnect(true);
    await until(store, (s) => s.connectionError === 'disconnected by the server', 'told why');
    await checked;
    // Nothing should follow; give a reconnect (there must be none) time to show up.
    await new Promise((r) => setTimeout(r, 200));
    expect(store.getState()).toMatchObject({ status: 'authenticated', user: alice, socket: null, connection: 'offline' });
    expect(io.engine.clientsCount).toBe(0);
    expect(sockets).toHaveLength(1);
  });
});

describe('the connection tells the truth and heals itself', () => {
  it('retries a refusal that can pass (unauthorized: unknown_kid) with a backoff until it is live', async () => {
    refusals = ['unauthorized: unknown_kid', 'unauthorized: unknown_kid'];
    signedIn = alice;
    const store = createSessionStore({ baseUrl, socketOptions: { transports: ['websocket'], ...FAST_SOCKET }, ...FAST });
    await store.getState().restore();
    await until(store, (s) => s.connection === 'retrying', 'refused, retrying');
    expect(store.getState().connectionError).toBe('unauthorized: unknown_kid');
    await until(store, (s) => s.connection === 'online', 'live after the keys arrived');
    expect(refusals).toHaveLength(0);
    expect(sockets).toHaveLength(1);
    expect(logs.join('\n')).toContain('unauthorized: unknown_kid'); // in the console, not on screen
    sockets[0].emit('online_users', { onlineUsers: [alice] });
    await until(store, (s) => ids(s) === 'alice', 'list');
    await store.getState().logout();
  });

  it('a handshake the gateway throttled (429, then 503 with Retry-After) is retried no sooner than Retry-After', async () => {
    signedIn = alice;
    throttled = [
      { status: 429, retryAfter: '1' },
      { status: 503, retryAfter: '1' },
    ];
    // socket.io-client's own loop is set to come back after 20 ms: only Retry-After holds it.
    const store = createSessionStore({ baseUrl, socketOptions: { transports: ['polling', 'websocket'], ...FAST_SOCKET }, ...FAST });
    await store.getState().restore();
    await until(store, (s) => s.connection === 'retrying', 'throttled, retrying');
    await until(store, (s) => s.connection === 'online', 'live once admitted');
    expect(throttled).toHaveLength(0);
    expect(handshakeTimes).toHaveLength(3);
    for (const [earlier, later] of [[0, 1], [1, 2]]) {
      expect(handshakeTimes[later] - handshakeTimes[earlier]).toBeGreaterThanOrEqual(1000);
      expect(handshakeTimes[later] - handshakeTimes[earlier]).toBeLessThan(2000); // 1 s spread by up to half
    }
    expect(store.getState()).toMatchObject({ status: 'authenticated', user: alice });
    expect(logs.join('\n')).toMatch(/connect_error \(throttled 429\)[^]*connect_error \(throttled 503\)/);
    await store.getState().logout();
  }, 10_000);

  it.each([['polling', 'websocket'], ['websocket']])(
    'a lost connection (%s) shows reconnecting, keeps the list for a greyed view, and a fresh snapshot replaces it',
    async (...transports) => {
      const store = await signedInStore(transports);
      sockets[0].emit('online_users', { onlineUsers: [alice, bob] });
      await until(store, (s) => ids(s) === 'alice,bob', 'list');
      sockets[0].conn.close(); // the transport drops, as when the service stops
      const lost = await until(store, (s) => s.connection === 'reconnecting', 'reconnecting');
      expect(ids(lost)).toBe('alice,bob'); // kept; the page shows it greyed out
      await until(store, (s) => s.connection === 'online', 'live again');
      sockets[1].emit('online_users', { onlineUsers: [alice] });
      await until(store, (s) => ids(s) === 'alice', 'the new snapshot replaces the stale list');
      await store.getState().logout();
    },
  );

  it('a handshake refused because the session is gone signs the page out', async () => {
    const store = await signedInStore(['polling', 'websocket']);
    signedIn = null; // the session expired: the gateway answers the handshake with an HTTP error
    sockets[0].conn.close();
    await until(store, (s) => s.status === 'anonymous', 'signed out');
    expect(store.getState()).toMatchObject({ user: null, socket: null, connection: 'offline', onlineUsers: [], signedOutReason: 'session-ended' });
    expect(logs.join('\n')).toMatch(/xhr poll error|websocket error/);
  });

  it('a whole-stack outage (API and handshakes down) keeps the user signed in and recovers by itself', async () => {
    const store = await signedInStore(['polling', 'websocket']);
    apiDown = true;
    sockets[0].conn.close();
    await until(store, (s) => s.connection === 'retrying', 'retrying');
    const checked = new Promise((resolve) => userChecks.push(resolve));
    expect(store.getState()).toMatchObject({ status: 'authenticated', user: alice });
    apiDown = false;
    await checked; // at least one session check went through during the outage...
    await until(store, (s) => s.connection === 'online', 'live again');
    expect(store.getState()).toMatchObject({ status: 'authenticated', user: alice }); // ...and none signed out
    await store.getState().logout();
  });

  it('a server-side disconnect while the API is down is retried later, not taken as a logout', async () => {
    const store = await signedInStore(['websocket']);
    apiDown = true;
    sockets[0].disconnect(true);
    await until(store, (s) => s.connection === 'offline', 'offline');
    await until(store, (s) => s.connection === 'retrying', 'tries again later');
    apiDown = false;
    await until(store, (s) => s.connection === 'online', 'live again');
    expect(store.getState()).toMatchObject({ status: 'authenticated', user: alice });
    await store.getState().logout();
  });

  it('Retry after a server-side disconnect opens a new socket, keeping the greyed list until the snapshot', async () => {
    const store = await signedInStore(['websocket']);
    sockets[0].emit('online_users', { onlineUsers: [alice, bob] });
    await until(store, (s) => ids(s) === 'alice,bob', 'list');
    const checked = new Promise((resolve) => userChecks.push(resolve));
    sockets[0].disconnect(true);
    await until(store, (s) => s.connection === 'offline', 'offline');
    await checked;
    expect(ids(store.getState())).toBe('alice,bob');
    store.getState().retryNow();
    await until(store, (s) => s.connection === 'online', 'live again');
    expect(sockets).toHaveLength(2);
    sockets[1].emit('online_users', { onlineUsers: [alice] });
    await until(store, (s) => ids(s) === 'alice', 'fresh list');
    await store.getState().logout();
  });

  it('says why the user is signed out: a logout, or nothing on a first visit', async () => {
    const store = await signedInStore(['websocket']);
    expect(store.getState().signedOutReason).toBe(null);
    await store.getState().logout();
    expect(store.getState()).toMatchObject({ status: 'anonymous', signedOutReason: 'logout' });
    const fresh = createSessionStore({ baseUrl, ...FAST });
    await fresh.getState().restore();
    expect(fresh.getState()).toMatchObject({ status: 'anonymous', signedOutReason: null });
    expect(await store.getState().login('alice', 'alice-pass')).toBe(true);
    expect(store.getState().signedOutReason).toBe(null);
    await store.getState().logout();
  });
});
