// One Zustand store for the signed-in user, their Socket.IO connection and who is online.
// It lives outside React, so it survives route changes: moving between /login and /dashboard
// never opens a second socket.
//
// The connection is kept honest (connection.js says what each state means): a lost connection
// is retried until it is live again, a refusal that can pass (the presence service has not
// loaded the gateway's keys yet) is retried with a backoff, and a refusal because the session
// is gone signs the page out. Raw error texts go to the console, never to the screen.
import { create } from 'zustand';
import { io } from 'socket.io-client';
import { follow, freshWire } from './presence.js';
import { backoffMs, connectErrorPlan, SOCKET_RECONNECTION, spreadDelay, throttleOf } from './connection.js';

async function readUser(response) {
  const body = await response.json().catch(() => ({}));
  return body && body.user ? body.user : null;
}

const UNREACHABLE = 'Can’t reach the server right now. Try again in a moment.';

/**
 * @param {object} [options]
 * @param {string} [options.baseUrl] where the API and Socket.IO live ('' = this page's origin).
 * @param {object} [options.socketOptions] extra socket.io-client options (tests pass transports).
 * @param {{ baseMs?: number, maxMs?: number }} [options.backoff] our retry delays (connection.js).
 * @param {Pick<Console, 'info' | 'warn'>} [options.log] where raw connection errors go.
 */
export function createSessionStore({ baseUrl = '', socketOptions = {}, backoff = {}, log = console } = {}) {
  let restoring = null;
  let retryTimer = null;
  let attempt = 0; // failed attempts since the last successful connect (for the backoff)
  let checking = null; // the session check in flight, if any
  // The wire numbers of the list shown (presence.js); a new connection starts over from its
  // snapshot, so they are reset whenever a connection ends.
  let wire = freshWire();

  const clearRetry = () => {
    clearTimeout(retryTimer);
    retryTimer = null;
  };

  return create((set, get) => {
    /**
     * Whether the session still exists: 'signed-in' (with the user), 'signed-out' (the API said
     * 401), or 'unknown' (the API could not be reached or failed: say nothing about the session).
     */
    const fetchSession = async () => {
      try {
        const response = await fetch(`${baseUrl}/api/auth/user`, { credentials: 'include' });
        if (response.ok) {
          const user = await readUser(response);
          return user ? { state: 'signed-in', user } : { state: 'signed-out' };
        }
        return { state: response.status === 401 || response.status === 403 ? 'signed-out' : 'unknown' };
      } catch (err) {
        log.warn('[session] /api/auth/user unreachable:', err?.message ?? err);
        return { state: 'unknown' };
      }
    };

    const signedIn = (user) => {
      set({ user, status: 'authenticated', loginError: null, signedOutReason: null });
      get().connectSocket();
    };
    /** @param {'logout' | 'session-ended' | null} reason why, for the sign-in page's notice */
    const signedOut = (reason) => {
      get().disconnectSocket();
      set({ user: null, status: 'anonymous', signedOutReason: reason });
    };

    /** Asks the login API about the session of `socket`; signs out if it is gone. */
    const checkSession = (socket) => {
      checking ??= fetchSession().finally(() => {
        checking = null;
      });
      return checking.then((session) => {
        // Ignore an answer about a socket we have since replaced or closed.
        if (get().socket !== socket && socket !== null) return session;
        if (session.state === 'signed-out' && get().status === 'authenticated') {
          log.info('[session] the session has ended: signing out');
          signedOut('session-ended');
        }
        return session;
      });
    };

    /**
     * Calls `fn` after the backoff for the current attempt (or `plan`'s delay), spread at random
     * so that tabs dropped together come back apart, unless something replaced it.
     */
    const scheduleRetry = (fn, plan = null) => {
      clearRetry();
      const delay = spreadDelay(plan?.retryInMs ?? backoffMs(attempt, backoff), { notBeforeMs: plan?.notBeforeMs ?? 0 });
      attempt += 1;
      retryTimer = setTimeout(() => {
        retryTimer = null;
        fn();
      }, delay);
      return delay;
    };

    /** Stops a socket without touching the (now stale) online list. */
    const closeSocket = () => {
      const { socket } = get();
      if (!socket) return;
      socket.removeAllListeners();
      socket.disconnect();
      wire = freshWire();
      set({ socket: null });
    };

    const openSocket = () => {
      const socket = io(baseUrl || undefined, { withCredentials: true, ...SOCKET_RECONNECTION, ...socketOptions });
      const current = () => get().socket === socket;
      let connection = 0; // which connection of this socket an answer to a question belongs to
      socket.on('connect', () => {
        connection += 1;
        attempt = 0;
        clearRetry();
        set({ connection: 'online', connectionError: null });
      });
      socket.on('connect_error', (err) => {
        if (!current()) return;
        const throttle = throttleOf(err);
        const plan = connectErrorPlan({ message: err.message, active: socket.active, attempt, throttle, backoff });
        log.warn(`[presence] connect_error (${plan.kind}${throttle ? ` ${throttle.status}` : ''}): ${err.message}`);
        set({ connection: 'retrying', connectionError: err.message });
        if (plan.kind === 'throttled') {
          // Stop socket.io-client's own loop, which would not wait for Retry-After.
          socket.disconnect();
          scheduleRetry(() => {
            if (current() && !socket.connected && !socket.active) socket.connect();
          }, plan);
        } else if (plan.retryInMs !== null) {
          // A refusal from the server's middleware: socket.io-client gave up, so we try again.
          scheduleRetry(() => {
            if (current() && !socket.connected && !socket.active) socket.connect();
          });
        }
        if (plan.checkSession) checkSession(socket);
      });
      socket.on('disconnect', (reason) => {
        if (!current()) return;
        log.warn(`[presence] disconnected: ${reason}`);
        if (reason === 'io server disconnect') {
          // The server ended this socket: at a logout (possibly in another tab), its session's
          // sockets are ended. If the session is gone, sign this tab out. If it is still there,
          // stay offline rather than reconnect into the same ending (Retry tries again). If
          // the API cannot be reached (the stack is going down), try again later.
          closeSocket();
          set({ connection: 'offline', connectionError: 'disconnected by the server' });
          checkSession(null).then((session) => {
            if (session.state === 'unknown' && get().status === 'authenticated' && !get().socket) {
              scheduleRetry(() => {
                if (get().status === 'authenticated' && !get().socket) get().connectSocket({ keepList: true });
              });
            }
          });
        } else if (reason !== 'io client disconnect') {
          // Lost (server stopped, network): socket.io-client reconnects by itself.
          set({ connection: 'reconnecting', connectionError: reason });
        }
      });
      const receive = (event, data) => {
        const next = follow({ onlineUsers: get().onlineUsers, wire }, event, data);
        wire = next.wire;
        if (next.onlineUsers !== get().onlineUsers) set({ onlineUsers: next.onlineUsers });
        if (next.resync) {
          // A missed frame: ask for the whole list. The answer comes in order with the frames,
          // so numbered diffs after it continue from its seq. If it never comes, the next
          // numbered diff finds the numbers still behind and asks again.
          const asked = connection;
          log.info(`[presence] missed an update (seq ${data?.seq}, epoch ${data?.epoch}): asking for the list`);
          socket.timeout(5000).emit('get_online_users', (err, list) => {
            if (!current() || asked !== connection) return;
            if (err) wire = { ...wire, waiting: false };
            else receive('ack', list);
          });
        }
      };
      for (const event of ['online_users', 'user_connected', 'user_disconnected', 'presence_diff']) {
        socket.on(event, (data) => receive(event, data));
      }
      socket.on('disconnect', () => {
        if (current()) wire = freshWire();
      });
      return socket;
    };

    return {
      /** 'unknown' until /api/auth/user answered, then 'authenticated' or 'anonymous'. */
      status: 'unknown',
      user: null,
      socket: null,
      /** 'offline' | 'connecting' | 'online' | 'reconnecting' | 'retrying' (see connection.js) */
      connection: 'offline',
      /** The last raw error (for the console and tests; never shown as is). */
      connectionError: null,
      onlineUsers: [],
      loginError: null,
      /** Why the user is signed out: 'logout', 'session-ended', or null (never signed in). */
      signedOutReason: null,

      /** Restores a login from the session cookie (a reload, a deep link to /dashboard). */
      restore() {
        restoring ??= fetchSession()
          .then((session) => {
            if (session.state === 'signed-in') signedIn(session.user);
            else {
              signedOut(null);
              if (session.state === 'unknown') set({ loginError: UNREACHABLE });
            }
          })
          .finally(() => {
            restoring = null;
          });
        return restoring;
      },

      async login(username, password) {
        let response;
        try {
          response = await fetch(`${baseUrl}/api/auth/login`, {
            method: 'POST',
            credentials: 'include',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ username, password }),
          });
        } catch (err) {
          log.warn('[session] login request failed:', err?.message ?? err);
          set({ loginError: UNREACHABLE });
          return false;
        }
        const user = response.ok ? await readUser(response) : null;
        if (!user) {
          log.warn(`[session] login refused: HTTP ${response.status}`);
          set({
            loginError:
              response.status === 401 ? 'Wrong username or password.' : response.status >= 500 ? UNREACHABLE : 'Sign-in failed. Please try again.',
          });
          return false;
        }
        signedIn(user);
        return true;
      },

      /** Closes the socket first, so this tab stops counting as online even if the request fails. */
      async logout() {
        get().disconnectSocket();
        try {
          await fetch(`${baseUrl}/api/auth/logout`, { method: 'POST', credentials: 'include' });
        } catch (err) {
          log.warn('[session] logout request failed:', err?.message ?? err);
        } finally {
          set({ user: null, status: 'anonymous', signedOutReason: 'logout' });
        }
      },

      /** Opens the socket. `keepList` keeps the last list, shown greyed, until the new snapshot. */
      connectSocket({ keepList = false } = {}) {
        if (get().socket) return;
        const socket = openSocket();
        set({ socket, connection: 'connecting', connectionError: null, ...(keepList ? {} : { onlineUsers: [] }) });
      },

      /** The Retry button: a fresh attempt now, whatever was scheduled. */
      retryNow() {
        if (get().status !== 'authenticated' || get().connection === 'online') return;
        clearRetry();
        attempt = 0;
        closeSocket();
        get().connectSocket({ keepList: true });
      },

      disconnectSocket() {
        clearRetry();
        attempt = 0;
        closeSocket();
        set({ connection: 'offline', onlineUsers: [] });
      },
    };
  });
}

/** The app's store. */
export const useSession = createSessionStore();
