// Pure updates of the online list for both event modes of the presence service (docs/design.md):
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

// The versioned wire contract (docs/design.md). Every node numbers the frames it broadcasts to
// its sockets: `epoch` (chosen when the node starts) and `seq` (+1 per frame). A client keeps
// the numbers of the list it shows (`wire`) and, in diff mode, applies a numbered
// `presence_diff` only if it is the next one; an older one is stale (ignored); anything else (a
// jump, another epoch) means it missed something, so it asks `get_online_users` and ignores
// numbered diffs until the answer. Frames without numbers (snapshot pages in diff mode, or a
// seed-style server) are applied as before.

/** The numbers of a connection that has not seen a numbered frame yet. */
export function freshWire() {
  return { epoch: null, seq: null, waiting: false };
}

const numbered = (data) => data != null && data.seq != null;
const older = (wire, data) => numbered(data) && wire.seq !== null && data.epoch === wire.epoch && data.seq <= wire.seq;

/**
 * One presence event (or `ack`, the answer to `get_online_users`) applied to
 * `{ onlineUsers, wire }`. Returns the new `{ onlineUsers, wire }` and `resync`: true when the
 * client must ask `get_online_users` now.
 */
export function follow({ onlineUsers, wire }, event, data) {
  const keep = { onlineUsers, wire, resync: false };
  switch (event) {
    case 'online_users':
    case 'ack': {
      // A whole list: replaces ours unless it is older than the one we show (the numbering
      // would otherwise go back). A new snapshot also ends a wait: diffs continue from it.
      if (older(wire, data) && data.seq < wire.seq) return event === 'ack' ? { ...keep, wire: { ...wire, waiting: false } } : keep;
      const next = numbered(data) ? { epoch: data.epoch, seq: data.seq, waiting: false } : { ...wire, waiting: false };
      return { onlineUsers: snapshot(data?.onlineUsers), wire: next, resync: false };
    }
    case 'presence_diff': {
      if (!numbered(data)) return { ...keep, onlineUsers: applyDiff(onlineUsers, data) }; // a snapshot page
      if (wire.waiting || older(wire, data)) return keep;
      if (wire.seq !== null && data.epoch === wire.epoch && data.seq === wire.seq + 1) {
        return { onlineUsers: applyDiff(onlineUsers, data), wire: { ...wire, seq: data.seq }, resync: false };
      }
      return { ...keep, wire: { ...wire, waiting: true }, resync: true };
    }
    case 'user_connected':
    case 'user_disconnected': {
      // compat: each carries the whole list as of its seq, so a jump needs no question; an
      // older one is never shown.
      if (older(wire, data)) return keep;
      const apply = event === 'user_connected' ? applyUserConnected : applyUserDisconnected;
      return { onlineUsers: apply(onlineUsers, data), wire: numbered(data) ? { epoch: data.epoch, seq: data.seq, waiting: false } : wire, resync: false };
    }
    default:
      return keep;
  }
}
