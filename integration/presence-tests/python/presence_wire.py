"""A client's side of the versioned presence wire contract (docs/design.md), for the python test
clients: the list one connection's events describe, plus every break of the numbering seen.

Each node numbers the frames it broadcasts to its sockets: `epoch` (chosen when the process
starts) and `seq` (+1 per broadcast frame). `online_users` (and the `get_online_users` ack)
replaces the list and sets epoch/seq. diff mode: a `presence_diff` with `seq == last + 1` in the
same epoch applies; `seq <= last` is stale (ignored); anything else is a gap, and the client asks
for `get_online_users` and ignores numbered diffs until the ack. A `presence_diff` without
`seq` is a page of the snapshot: applied, `last` untouched. compat mode: `user_connected` /
`user_disconnected` replace the list and follow the same numbering; a list from one node never
goes back to an older view. Frames without epoch/seq (a seed-style server) are applied as they are.

Kept free of any socket so that the fault suite and the python clients share one reading."""


class Follower:
    def __init__(self):
        self.users = {}  # id -> user
        self.epoch = None
        self.seq = None
        self.resyncing = False
        self.gaps = []  # seq_gap: (event, what was expected, what came)
        self.regressions = []  # list_regressed: (event, epoch, last seq, older seq)
        self.stale = 0  # diff frames with seq <= last, ignored as the contract says
        self.ignored_while_resyncing = 0

    def _set(self, users):
        self.users = {u["id"]: u for u in users}

    def _replace(self, event, data):
        """A whole list with its number; refused (and recorded) if older than what we hold."""
        epoch, seq = data.get("epoch"), data.get("seq")
        if seq is not None and epoch == self.epoch and self.seq is not None and seq < self.seq:
            self.regressions.append((event, epoch, self.seq, seq))
            return
        self._set(data.get("onlineUsers", []))
        if seq is not None:
            self.epoch, self.seq = epoch, seq

    def snapshot(self, data):
        """`online_users` pushed by the server."""
        self._replace("online_users", data)

    def ack(self, data):
        """The `get_online_users` ack (answers the resync, or any ask)."""
        self.resyncing = False
        if isinstance(data, dict):
            self._replace("get_online_users ack", data)

    def _gap(self, event, data):
        self.gaps.append((event, f"epoch {self.epoch} seq {None if self.seq is None else self.seq + 1}",
                          f"epoch {data.get('epoch')} seq {data.get('seq')}"))

    def diff(self, data):
        """`presence_diff`; returns True when the client must ask for `get_online_users` now."""
        seq = data.get("seq")
        if seq is not None:
            if self.resyncing:
                self.ignored_while_resyncing += 1
                return False
            if self.seq is not None and data.get("epoch") == self.epoch:
                if seq <= self.seq:
                    self.stale += 1
                    return False
                if seq == self.seq + 1:
                    self.seq = seq
                    self._apply(data)
                    return False
            self._gap("presence_diff", data)
            self.resyncing = True
            return True
        self._apply(data)  # a snapshot page (or a seed-style server's diff)
        return False

    def _apply(self, data):
        for u in data.get("joins", []):
            self.users[u["id"]] = u
        for uid in data.get("leaves", []):
            self.users.pop(uid, None)

    def compat(self, event, data):
        """`user_connected` / `user_disconnected`: a whole list, numbered like the diffs."""
        seq, epoch = data.get("seq"), data.get("epoch")
        if seq is not None and self.seq is not None:
            if epoch != self.epoch:
                self._gap(event, data)  # another epoch without a new online_users
            elif seq <= self.seq:
                self.regressions.append((event, epoch, self.seq, seq))
                return
            elif seq != self.seq + 1:
                self._gap(event, data)
        # The list is whole: it is the truth as of `seq` even after a gap.
        self._set(data.get("onlineUsers", []))
        if seq is not None:
            self.epoch, self.seq = epoch, seq

    def on(self, event, data):
        """Any presence event; returns True when the client must ask for `get_online_users`."""
        if event == "online_users":
            self.snapshot(data)
        elif event in ("user_connected", "user_disconnected"):
            self.compat(event, data)
        elif event == "presence_diff":
            return self.diff(data)
        return False

    def problems(self):
        """(invariant, detail) for every break of the contract seen."""
        return ([("seq_gap", f"{ev}: expected {want}, got {got}") for ev, want, got in self.gaps]
                + [("list_regressed", f"{ev}: epoch {ep} seq {old} after seq {last}")
                   for ev, ep, last, old in self.regressions])
