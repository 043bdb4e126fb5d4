"""The python-socketio client through the gateway with either app's session (the Express app
under /express/, the demo app at /): the same handshake auth, the same presence view, over
websocket and long-polling. Run by integration/docker/run-suite.sh, which exports GATEWAY_URL and
CA_FILE for the running compose stack.

The asyncio client (`socketio.AsyncClient`, aiohttp underneath), not the threaded
`socketio.Client`: the threaded one reads and writes one TLS socket from two threads at once
(python-engineio's read loop and write loop), and Python's `ssl` is not safe for that. Over wss://
a read that overlaps the CONNECT or PONG write now and then returns b"" as if the gateway had
closed; the client then closes the connection itself (python-engineio issue #461, python-socketio
#1568), a few percent of first connections on this machine. It also runs each event handler in its
own thread, so two events arriving together could be applied in either order. The asyncio client
does both on one event loop, in arrival order."""

import asyncio
import functools
import os
import ssl
import uuid

import aiohttp
import pytest
import socketio

GATEWAY_URL = os.environ["GATEWAY_URL"]
# Where config/compose/gateway.toml mounts the Express app (route "express").
EXPRESS_PREFIX = "/express"
CA_FILE = os.environ["CA_FILE"]
TIMEOUT = 10


def in_event_loop(test):
    """Runs an `async def` test on a fresh event loop (no pytest plugin needed); pytest still
    sees the test's own parameters."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


def http() -> aiohttp.ClientSession:
    # The stack's development CA (for wss:// too). No environment settings: a proxy or CA bundle
    # from the environment must not apply.
    tls = ssl.create_default_context(cafile=CA_FILE)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
    )


async def login(path: str, user: str, password: str, cookie_name: str) -> str:
    async with http() as session:
        async with session.post(f"{GATEWAY_URL}{path}", json={"username": user, "password": password}) as res:
            assert res.status == 200, await res.text()
            return f"{cookie_name}={res.cookies[cookie_name].value}"


async def login_express(user: str) -> str:
    return await login(f"{EXPRESS_PREFIX}/api/auth/login", user, "pw", "connect.sid")


async def login_demo(user: str) -> str:
    return await login("/api/auth/login", user, f"{user}-pass", "id")


class Presence:
    """A python-socketio client that keeps the latest online list; waits are on events."""

    def __init__(self, cookie: str | None, transport: str):
        self.online: dict[str, dict] = {}
        self.changed = asyncio.Event()
        self.http = http()
        self.client = socketio.AsyncClient(http_session=self.http, reconnection=False)
        self.cookie, self.transport = cookie, transport
        for event in ("online_users", "user_connected", "user_disconnected"):
            self.client.on(event, self._record)

    def _record(self, payload):
        self.online = {u["id"]: u for u in payload["onlineUsers"]}
        self.changed.set()

    async def connect(self):
        headers = {"Cookie": self.cookie} if self.cookie else {}
        await self.client.connect(GATEWAY_URL, headers=headers, transports=[self.transport], wait_timeout=TIMEOUT)
        return self

    async def wait_for(self, pred, what: str):
        async def until():
            while not pred(self.online):
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(until(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; online={sorted(self.online)}") from None

    async def close(self):
        await self.client.disconnect()
        await self.http.close()


class Clients:
    """The clients a test opened, all closed at its end."""

    def __init__(self):
        self.opened: list[Presence] = []

    async def connect(self, cookie: str | None, transport: str) -> Presence:
        c = Presence(cookie, transport)
        self.opened.append(c)
        return await c.connect()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for c in self.opened:
            await c.close()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@in_event_loop
async def test_express_session_user_connects(transport):
    user = f"py-exp-{transport}-{uuid.uuid4().hex[:6]}"
    async with Clients() as clients:
        c = await clients.connect(await login_express(user), transport)
        assert c.client.transport() == transport
        await c.wait_for(lambda online: user in online, f"{user} online")


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@in_event_loop
async def test_tower_sessions_user_connects_with_display_name(transport):
    async with Clients() as clients:
        c = await clients.connect(await login_demo("dave"), transport)
        await c.wait_for(lambda online: online.get("dave", {}).get("name") == "Dave Diaz", "dave as Dave Diaz")


@in_event_loop
async def test_users_of_both_apps_share_one_view():
    user = f"py-both-{uuid.uuid4().hex[:6]}"
    async with Clients() as clients:
        express = await clients.connect(await login_express(user), "websocket")
        demo = await clients.connect(await login_demo("bob"), "polling")
        await express.wait_for(lambda online: online.get("bob", {}).get("name") == "Bob Baker", "bob")
        await demo.wait_for(lambda online: user in online, user)


@pytest.mark.parametrize(
    "cookie",
    [None, "connect.sid=s%3Aforged.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "id=AAAAAAAAAAAAAAAAAAAAAA"],
    ids=["no-cookie", "forged-express", "forged-tower-sessions"],
)
@pytest.mark.parametrize("transport", ["websocket", "polling"])
@in_event_loop
async def test_no_valid_session_is_refused(cookie, transport):
    c = Presence(cookie, transport)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await c.connect()
        assert not c.client.connected
    finally:
        await c.close()
    headers = {"Cookie": cookie} if cookie else {}
    async with http() as session:
        async with session.get(f"{GATEWAY_URL}/socket.io/?EIO=4&transport=polling", headers=headers) as res:
            assert res.status == 401
