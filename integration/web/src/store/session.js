// One Zustand store for the signed-in user, their Socket.IO connection and who is online.
// It lives outside React, so it survives route changes: moving between /login and /dashboard
// never opens a second socket.
import { create } from 'zustand';
import { io } from 'socket.io-client';
import { snapshot, applyDiff, applyUserConnected, applyUserDisconnected } from './presence.js';

async function readUser(response) {
  const body = await response.json().catch(() => ({}));
  return body && body.user ? body.user : null;
}

/**
 * @param {object} [options]
 * @param {string} [options.baseUrl] where the API and Socket.IO live ('' = this page's origin).
 * @param {object} [options.socketOptions] extra socket.io-client options (tests pass transports).
 */
export function createSessionStore({ baseUrl = '', socketOptions = {} } = {}) {
  let restoring = null;

  return create((set, get) => {
    const signedIn = (user) => {
      set({ user, status: 'authenticated', loginError: null });
      get().connectSocket();
    };
    const signedOut = () => {
      get().disconnectSocket();
      set({ user: null, status: 'anonymous' });
    };
    /** The session's user, or null when there is none (or the API cannot be reached). */
    const fetchUser = async () => {
      try {
        const response = await fetch(`${baseUrl}/api/auth/user`, { credentials: 'include' });
        return response.ok ? await readUser(response) : null;
      } catch {
        return null;
      }
    };

    return {
      /** 'unknown' until /api/auth/user answered, then 'authenticated' or 'anonymous'. */
      status: 'unknown',
      user: null,
      socket: null,
      /** 'offline' | 'connecting' | 'online' | 'refused' */
      connection: 'offline',
      connectionError: null,
      onlineUsers: [],
      loginError: null,

      /** Restores a login from the session cookie (a reload, a deep link to /dashboard). */
      restore() {
        restoring ??= fetchUser()
          .then((user) => (user ? signedIn(user) : signedOut()))
          .finally(() => {
            restoring = null;
          });
        return restoring;
      },

      async login(username, password) {
        const response = await fetch(`${baseUrl}/api/auth/login`, {
          method: 'POST',
          credentials: 'include',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ username, password }),
        });
        const user = response.ok ? await readUser(response) : null;
        if (!user) {
          set({ loginError: response.status === 401 ? 'Wrong username or password.' : `Login failed (${response.status}).` });
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
        } finally {
          set({ user: null, status: 'anonymous' });
        }
      },

      connectSocket() {
        if (get().socket) return;
        const socket = io(baseUrl || undefined, { withCredentials: true, ...socketOptions });
        socket.on('connect', () => set({ connection: 'online', connectionError: null }));
        socket.on('connect_error', (err) => set({ connection: 'refused', connectionError: err.message }));
        socket.on('disconnect', (reason) => {
          set({ connection: 'offline' });
          // The server ends a session's sockets at logout (possibly from another tab): if the
          // session is gone, sign this tab out. If not (say, too many tabs), stay offline rather
          // than reconnect into the same refusal; a reload tries again.
          if (reason === 'io server disconnect' && get().socket === socket) {
            get().disconnectSocket();
            set({ connectionError: 'disconnected by the server' });
            fetchUser().then((user) => user || signedOut());
          }
        });
        socket.on('online_users', (data) => set({ onlineUsers: snapshot(data?.onlineUsers) }));
        socket.on('user_connected', (data) => set((s) => ({ onlineUsers: applyUserConnected(s.onlineUsers, data) })));
        socket.on('user_disconnected', (data) => set((s) => ({ onlineUsers: applyUserDisconnected(s.onlineUsers, data) })));
        socket.on('presence_diff', (diff) => set((s) => ({ onlineUsers: applyDiff(s.onlineUsers, diff) })));
        set({ socket, connection: 'connecting', connectionError: null });
      },

      disconnectSocket() {
        const { socket } = get();
        if (!socket) return;
        socket.removeAllListeners();
        socket.disconnect();
        set({ socket: null, connection: 'offline', onlineUsers: [] });
      },
    };
  });
}

/** The app's store. */
export const useSession = createSessionStore();
