"""The python-socketio client through the gateway with either app's session (the Express app
under /express/, the demo app at /): the same handshake auth, the same presence view, over
websocket and long-polling. Run by integration/docker/run-suite.sh, which exports GATEWAY_URL and
CA_FILE for the running compose stack."""

import os
import threading
import uuid

import pytest
import requests
import socketio

GATEWAY_URL = os.environ["GATEWAY_URL"]
# Where config/compose/gateway.toml mounts the Express app (route "express").
EXPRESS_PREFIX = "/express"
CA_FILE = os.environ["CA_FILE"]
TIMEOUT = 10


def http() -> requests.Session:
    session = requests.Session()
    # The stack's development CA (engineio uses it for wss:// too). No environment settings:
    # REQUESTS_CA_BUNDLE would otherwise replace it.
    session.trust_env = False
    session.verify = CA_FILE
    return session


def login(path: str, user: str, password: str, cookie_name: str) -> str:
    res = http().post(f"{GATEWAY_URL}{path}", json={"username": user, "password": password}, timeout=TIMEOUT)
    assert res.status_code == 200, res.text
    return f"{cookie_name}={res.cookies[cookie_name]}"


def login_express(user: str) -> str:
    return login(f"{EXPRESS_PREFIX}/api/auth/login", user, "pw", "connect.sid")


def login_demo(user: str) -> str:
    return login("/api/auth/login", user, f"{user}-pass", "id")


class Presence:
    """A python-socketio client that keeps the latest online list; waits are on events."""

    def __init__(self, cookie: str | None, transport: str):
        self.online: dict[str, dict] = {}
        self.changed = threading.Condition()
        self.client = socketio.Client(http_session=http(), reconnection=False)
        self.cookie, self.transport = cookie, transport
        for event in ("online_users", "user_connected", "user_disconnected"):
            self.client.on(event, self._record)

    def _record(self, payload):
        with self.changed:
            self.online = {u["id"]: u for u in payload["onlineUsers"]}
            self.changed.notify_all()

    def connect(self):
        headers = {"Cookie": self.cookie} if self.cookie else {}
        self.client.connect(GATEWAY_URL, headers=headers, transports=[self.transport], wait_timeout=TIMEOUT)
        return self

    def wait_for(self, pred, what: str):
        with self.changed:
            if not self.changed.wait_for(lambda: pred(self.online), timeout=TIMEOUT):
                raise AssertionError(f"timed out waiting for {what}; online={sorted(self.online)}")

    def close(self):
        self.client.disconnect()


@pytest.fixture
def clients():
    opened: list[Presence] = []
    yield opened
    for c in opened:
        c.close()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_express_session_user_connects(clients, transport):
    user = f"py-exp-{transport}-{uuid.uuid4().hex[:6]}"
    c = Presence(login_express(user), transport)
    clients.append(c.connect())
    assert c.client.transport() == transport
    c.wait_for(lambda online: user in online, f"{user} online")


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_tower_sessions_user_connects_with_display_name(clients, transport):
    c = Presence(login_demo("dave"), transport)
    clients.append(c.connect())
    c.wait_for(lambda online: online.get("dave", {}).get("name") == "Dave Diaz", "dave as Dave Diaz")


def test_users_of_both_apps_share_one_view(clients):
    user = f"py-both-{uuid.uuid4().hex[:6]}"
    express = Presence(login_express(user), "websocket").connect()
    clients.append(express)
    demo = Presence(login_demo("bob"), "polling").connect()
    clients.append(demo)
    express.wait_for(lambda online: online.get("bob", {}).get("name") == "Bob Baker", "bob")
    demo.wait_for(lambda online: user in online, user)


@pytest.mark.parametrize(
    "cookie",
    [None, "connect.sid=s%3Aforged.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "id=AAAAAAAAAAAAAAAAAAAAAA"],
    ids=["no-cookie", "forged-express", "forged-tower-sessions"],
)
@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_no_valid_session_is_refused(cookie, transport):
    c = Presence(cookie, transport)
    with pytest.raises(socketio.exceptions.ConnectionError):
        c.connect()
    assert not c.client.connected
    headers = {"Cookie": cookie} if cookie else {}
    res = http().get(f"{GATEWAY_URL}/socket.io/?EIO=4&transport=polling", headers=headers, timeout=TIMEOUT)
    assert res.status_code == 401
