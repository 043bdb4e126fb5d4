"""presence-service driven by python-socketio, the other official client family."""
import queue

import pytest
import requests
import socketio

from conftest import Key


class Tab:
    """One python-socketio client that queues every presence event."""

    def __init__(self, url, token, transports=("polling", "websocket")):
        self.sio = socketio.Client(reconnection=False)
        self.q = queue.Queue()
        self.refusal = None
        self.sio.on("connect_error", lambda data: setattr(self, "refusal", data))
        for ev in ("online_users", "user_connected", "user_disconnected", "presence_diff"):
            self.sio.on(ev, (lambda name: lambda data: self.q.put((name, data)))(ev))
        headers = {"x-identity-assertion": token} if token else {}
        self.sio.connect(url, headers=headers, transports=list(transports), wait_timeout=5)

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
    alice.close()


def test_presence_http_route_needs_an_assertion(node, key):
    assert requests.get(node.url + "/presence", timeout=5).status_code == 401
    tab = Tab(node.url, key.mint("carol"))
    res = requests.get(node.url + "/presence", headers={"x-identity-assertion": key.mint("ops")}, timeout=5)
    assert res.status_code == 200 and "carol" in ids(res.json()["onlineUsers"])
    tab.close()
