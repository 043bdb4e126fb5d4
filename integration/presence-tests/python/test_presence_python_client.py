"""presence-service driven by python-socketio, the other official client family."""
import queue

import pytest
import requests
import socketio

from conftest import Key
from presence_wire import Follower


class Tab:
    """One python-socketio client that queues every presence event and follows the wire
    contract's numbering (presence_wire.Follower), asking for the list on a gap as a client must."""

    def __init__(self, url, token, transports=("polling", "websocket")):
        self.sio = socketio.Client(reconnection=False)
        self.q = queue.Queue()
        self.refusal = None
        self.follower = Follower()
        self.sio.on("connect_error", lambda data: setattr(self, "refusal", data))
        for ev in ("online_users", "user_connected", "user_disconnected", "presence_diff"):
            self.sio.on(ev, (lambda name: lambda data: self._on(name, data))(ev))
        headers = {"x-identity-assertion": token} if token else {}
        self.sio.connect(url, headers=headers, transports=list(transports), wait_timeout=5)

    def _on(self, name, data):
        if self.follower.on(name, data):
            self.sio.emit("get_online_users", callback=self.follower.ack)
        self.q.put((name, data))

    def contract_breaks(self):
        """seq_gap / list_regressed seen on this connection (none while it stays connected)."""
        return self.follower.problems()

    def wait(self, event, pred=lambda d: True, timeout=5):
        while True:
            name, data = self.q.get(timeout=timeout)
            if name == event and pred(data):
                return data

    def close(self):
        self.sio.disconnect()


def ids(users):
    return sorted(u["id"] for u in users)


@pytest.mark.parametrize("case", ["missing", "forged", "expired", "wrong_audience", "unknown_kid"])
def test_bad_assertions_are_refused(node, key, case):
    token = {
        "missing": None,
        "forged": Key(key.kid).mint("mallory"),
        "expired": key.mint("alice", iat=1_000_000, exp=1_000_060),
        "wrong_audience": key.mint("alice", aud="demo-service"),
        "unknown_kid": Key("gw-unknown").mint("alice"),
    }[case]
    tab = Tab.__new__(Tab)
    with pytest.raises(socketio.exceptions.ConnectionError):
        Tab.__init__(tab, node.url, token)
    reason = "bad_signature" if case == "forged" else case
    assert tab.refusal == {"message": f"unauthorized: {reason}"}


def test_two_users_see_each_other_and_ack(node, key):
    alice = Tab(node.url, key.mint("alice"))
    assert ids(alice.wait("online_users")["onlineUsers"]) == ["alice"]
    bob = Tab(node.url, key.mint("bob"), transports=("websocket",))
    if node.mode == "compat":
        seen = alice.wait("user_connected", lambda d: d["user"]["id"] == "bob")
        assert seen["user"] == {"id": "bob", "name": "BOB"}
        assert ids(seen["onlineUsers"]) == ["alice", "bob"]
    else:
        alice.wait("presence_diff", lambda d: any(u["id"] == "bob" for u in d["joins"]))
    assert ids(bob.wait("online_users")["onlineUsers"]) == ["alice", "bob"]
    ack = bob.sio.call("get_online_users", timeout=5)
    assert ids(ack["onlineUsers"]) == ["alice", "bob"]
    bob.close()
    if node.mode == "compat":
        gone = alice.wait("user_disconnected", lambda d: d["userId"] == "bob")
        assert ids(gone["onlineUsers"]) == ["alice"]
    else:
        alice.wait("presence_diff", lambda d: "bob" in d["leaves"])
    assert sorted(alice.follower.users) == ["alice"]
    assert alice.contract_breaks() == [] and bob.contract_breaks() == []
    alice.close()


def test_presence_http_route_needs_an_assertion(node, key):
    assert requests.get(node.url + "/presence", timeout=5).status_code == 401
    tab = Tab(node.url, key.mint("carol"))
    res = requests.get(node.url + "/presence", headers={"x-identity-assertion": key.mint("ops")}, timeout=5)
    assert res.status_code == 200 and "carol" in ids(res.json()["onlineUsers"])
    tab.close()


def test_diff_snapshot_in_pages_adds_up_to_the_whole_list(paged_diff_node, key):
    node = paged_diff_node
    others = [f"q{i}" for i in range(5)]
    tabs = [Tab(node.url, key.mint(u), transports=("websocket",)) for u in others]
    # Their joins are out (so any diff the late joiner gets is a page of its snapshot).
    seen = {u["id"] for u in tabs[0].wait("online_users")["onlineUsers"]}
    while len(seen) < len(others):
        seen.update(u["id"] for u in tabs[0].wait("presence_diff")["joins"])
    late = Tab(node.url, key.mint("late"))
    # A diff-mode client: online_users replaces its list, presence_diff adds and removes.
    first = late.wait("online_users")["onlineUsers"]
    assert len(first) <= 2
    shown = {u["id"]: u for u in first}
    while len(shown) < len(others) + 1:
        page = late.wait("presence_diff")
        assert len([u for u in page["joins"] if u["id"] != "late"]) <= 2 and page["leaves"] == []
        shown.update({u["id"]: u for u in page["joins"]})
    assert sorted(shown) == sorted(others + ["late"])
    assert shown["q3"] == {"id": "q3", "name": "Q3"}
    assert ids(late.sio.call("get_online_users", timeout=5)["onlineUsers"]) == sorted(shown)
    # The pages carry no seq: the follower added them to the snapshot without a gap.
    assert sorted(late.follower.users) == sorted(shown)
    for t in tabs + [late]:
        assert t.contract_breaks() == [], t.contract_breaks()
    for t in tabs + [late]:
        t.close()
