// Pure updates of the online list for both event modes of the presence service (DESIGN.md):
// compat mode sends the whole list on every change (`online_users`, `user_connected`,
// `user_disconnected`); diff mode sends one `online_users` snapshot, then `presence_diff`
// { joins, leaves } batches. Keeping them pure lets the tests cover every case without a socket.

/** Sorted by display name so the list does not jump around as users come and go. */
function sorted(users) {
  return [...users].sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id) || a.id.localeCompare(b.id));
}

/** One entry per id; the last one wins (a newer display name replaces an older one). */
function unique(users) {
  const byId = new Map();
  for (const user of users) if (user && user.id != null) byId.set(String(user.id), { id: String(user.id), name: user.name ?? String(user.id) });
  return [...byId.values()];
}

export function snapshot(onlineUsers) {
  return sorted(unique(onlineUsers ?? []));
}

export function applyDiff(current, { joins = [], leaves = [] } = {}) {
  const gone = new Set(leaves.map(String));
  const kept = current.filter((u) => !gone.has(u.id));
  return sorted(unique([...kept, ...joins.filter((u) => !gone.has(String(u.id)))]));
}

/** `user_connected`: the full list when the server sends it, else just the newcomer. */
export function applyUserConnected(current, { onlineUsers, user } = {}) {
  if (Array.isArray(onlineUsers)) return snapshot(onlineUsers);
  return user ? applyDiff(current, { joins: [user] }) : current;
}

/** `user_disconnected`: the full list when the server sends it, else drop `userId`. */
export function applyUserDisconnected(current, { onlineUsers, userId } = {}) {
  if (Array.isArray(onlineUsers)) return snapshot(onlineUsers);
  return userId != null ? applyDiff(current, { leaves: [userId] }) : current;
}
