"""Processes and clients for the fault suite: one redis-server, several presence-service nodes
(`[backend] kind = "redis"`), python-socketio AsyncClient tabs that keep the list their events
describe, and raw close-right-after-connect websockets. Everything is started here, on free ports
of 127.0.0.1, and stopped by PID."""
import asyncio
import base64
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid

import aiohttp
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from presence_wire import Follower

ROOT = pathlib.Path(__file__).resolve().parents[3]
BIN = os.environ.get("PRESENCE_BIN", str(ROOT / "target" / "debug" / "presence-service"))
REDIS_BIN = os.environ.get("REDIS_SERVER", "redis-server")

# Short timings (the keys of presence-service/src/config.rs; node_ttl_ms > heartbeat_interval_ms).
GRACE_MS = 300
NODE_TTL_MS = 1500
HEARTBEAT_MS = 250
OP_TIMEOUT_MS = 300
PING_INTERVAL_MS = 1000
PING_TIMEOUT_MS = 2000


def now():
    return time.monotonic()


def _ephemeral_start():
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Its own generator: the schedule's seeded one must not see these draws.
_PORTS = random.Random()


def free_port():
    """A port free now, below the kernel's ephemeral range. A port the kernel picked for us (bind
    to 0) comes from the range it also hands to outgoing connections, and the suite opens
    hundreds (tabs, Redis clients): one of them took a node's port between this check and the
    node's start once (`Address already in use`). Below the range only a server can take it."""
    top = _ephemeral_start()
    for _ in range(100):
        port = _PORTS.randrange(max(1024, top - 16384), top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Key:
    """The gateway's signing key (as integration/presence-tests/python/conftest.py)."""

    def __init__(self, kid):
        self.kid = kid
        self.private = Ed25519PrivateKey.generate()
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def mint(self, sub, name=None):
        t = int(time.time())
        claims = {"iss": "edge-gateway", "aud": "presence-service", "sub": sub, "name": name or sub.upper(),
                  "sid": f"sess-{sub}-{uuid.uuid4().hex[:6]}", "iat": t, "exp": t + 3600, "jti": uuid.uuid4().hex}
        header = {"alg": "EdDSA", "typ": "JWT", "kid": self.kid}
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        return signing_input + "." + b64(self.private.sign(signing_input.encode()))


class Redis:
    """One redis-server with an append-only file, in a folder of its own: `start(keep=True)` after
    a SIGKILL comes back with every write it acknowledged (a restart WITH its data); `start()`
    removes the files first (a restart that loses everything).

    Redis writes the file before it sends the replies, and a killed process loses nothing the
    kernel already has, so no fsync is needed: `appendfsync always` made every write wait for
    this shared disk (INCR up to ~150 ms against well under 10 ms here), which slowed Redis past
    `op_timeout_ms` in rounds that had no Redis fault."""

    def __init__(self, workdir):
        self.port = free_port()
        self.dir = pathlib.Path(workdir)
        self.data = self.dir / "redis-data"
        self.data.mkdir(exist_ok=True)
        self.proc = None
        self.starts = 0

    async def start(self, keep=False):
        self.starts += 1
        if not keep:
            shutil.rmtree(self.data, ignore_errors=True)
            self.data.mkdir()
        log = open(self.dir / f"redis-{self.starts}.log", "w")
        self.proc = subprocess.Popen(
            [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "no", "--dir", str(self.data), "--protected-mode", "no", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = now() + 10
        while now() < deadline:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.write(b"PING\r\n")
                await w.drain()
                line = await asyncio.wait_for(r.readline(), 1)
                w.close()
                if line.startswith(b"+PONG"):
                    return
            except (OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


class Node:
    def __init__(self, name, key, mode, redis_port, workdir):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = pathlib.Path(workdir)
        self.proc = None
        self.starts = 0
        (self.dir / "gw.pem").write_bytes(key.public_pem)
        self.config = self.dir / f"{name}.toml"
        self.config.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\n'
            f'[trust]\n[[trust.public_keys]]\nkid = "{key.kid}"\npem = "gw.pem"\n'
            f'[presence]\nmode = "{mode}"\ngrace_ms = {GRACE_MS}\ndiff_window_ms = 30\n'
            f'[limits]\nping_interval_ms = {PING_INTERVAL_MS}\nping_timeout_ms = {PING_TIMEOUT_MS}\n'
            f'[backend]\nkind = "redis"\nredis_url = "redis://127.0.0.1:{redis_port}"\nkey_prefix = "pf"\n'
            f'node_id = "{name}"\nheartbeat_interval_ms = {HEARTBEAT_MS}\nnode_ttl_ms = {NODE_TTL_MS}\n'
            f'op_timeout_ms = {OP_TIMEOUT_MS}\n')

    async def start(self):
        self.starts += 1
        log = open(self.dir / f"{self.name}-{self.starts}.log", "w")
        self.proc = await asyncio.create_subprocess_exec(
            BIN, "--config", str(self.config), stdout=asyncio.subprocess.PIPE, stderr=log,
            env={**os.environ, "RUST_LOG": os.environ.get("FAULT_RUST_LOG", "info")})
        try:
            while True:
                line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
                if not line:
                    raise RuntimeError(f"{self.name} exited before listening (see {log.name})")
                if b"listening on" in line:
                    break
        except asyncio.TimeoutError:
            self.proc.kill()
            raise RuntimeError(f"{self.name} did not start (see {log.name})")
        asyncio.ensure_future(self._drain(self.proc))

    @staticmethod
    async def _drain(proc):
        while await proc.stdout.readline():
            pass

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    async def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self):
        if self.proc and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            await self.proc.wait()


class Recorder:
    """Everything observed, with monotonic timestamps, for the checks after the run."""

    def __init__(self):
        self.sockets = []   # dicts: user, node, open_t, close_t, tab, first_event
        self.removals = []  # (t, observer tab, observer node, user, kind, event)
        self.notes = []
        self.drops = []  # (t, node, what): sockets the server or the network closed
        self.contract = []  # (t, tab, node, invariant, detail): seq_gap, list_regressed


class Tab:
    """One browser tab of `user`: a python-socketio AsyncClient, reconnection off (the schedule
    decides), applying presence events to its own list as a client of that mode must."""

    def __init__(self, key, user, slot, rec, mode):
        self.key, self.user, self.slot, self.rec, self.mode = key, user, slot, rec, mode
        self.name = f"{user}#{slot}"
        self.sio = None
        self.node = None
        self.live = False
        self.conn = None  # this connection's record in rec.sockets
        self.follower = Follower()  # this connection's list, by the wire contract
        self.busy = False  # an operation is under way on this tab

    def _removed(self, before, after, explicit, event):
        t = now()
        for u in set(before) - set(after):
            self.rec.removals.append((t, self.name, self.node.name, u, "leave" if u in explicit else "replace", event))

    @property
    def list(self):
        return self.follower.users

    def _on(self, conn, event, data):
        if conn is not self.conn:
            return  # an event of an earlier connection of this tab
        if conn["first_event"] is None:
            conn["first_event"] = event
            conn["first_t"] = now()
        explicit = set()
        if event == "user_disconnected":
            explicit.add(data.get("userId"))
        elif event == "presence_diff":
            explicit.update(data.get("leaves", []))
        self._follow(event, data, explicit, lambda f: f.on(event, data))

    def _follow(self, event, data, explicit, step):
        """Applies one step to the follower; records removals and any break of the numbering,
        and on a gap asks for the list as a real client does (the ack continues the numbering)."""
        f = self.follower
        before, breaks = dict(f.users), len(f.problems())
        resync = step(f)
        self._removed(before, f.users, explicit, event)
        for inv, detail in f.problems()[breaks:]:
            self.rec.contract.append((now(), self.name, self.node.name, inv, detail))
        if resync:
            conn = self.conn
            asyncio.ensure_future(_quiet(self.sio.emit(
                "get_online_users",
                callback=lambda data=None: conn is self.conn and self._follow(
                    "get_online_users ack", data, set(), lambda f: f.ack(data)))))

    async def connect(self, node, timeout=4):
        sio = socketio.AsyncClient(reconnection=False)
        conn = {"user": self.user, "node": node.name, "tab": self.name, "open_t": None, "close_t": None,
                "first_event": None, "first_t": None, "start_t": now()}
        self.conn, self.node, self.sio, self.follower = conn, node, sio, Follower()
        conn["follower"] = self.follower
        for ev in ("online_users", "user_connected", "user_disconnected", "presence_diff"):
            sio.on(ev, (lambda ev: lambda data: self._on(conn, ev, data))(ev))

        def on_disconnect(*reason):
            if conn["close_t"] is None and conn["open_t"] is not None:
                conn["close_t"] = now()
                self.rec.drops.append((now(), node.name, f"dropped {self.name} {reason}"))
            if self.conn is conn:
                self.live = False

        sio.on("disconnect", on_disconnect)
        try:
            await sio.connect(node.url, headers={"x-identity-assertion": self.key.mint(self.user)},
                              transports=["websocket"], wait_timeout=timeout)
        except Exception as e:  # noqa: BLE001 - any failure: the tab stays closed
            self.rec.notes.append(f"{now():.2f} connect {self.name} -> {node.name} failed: {e!r}")
            self.conn = None
            await _quiet(sio.disconnect())
            return False
        if sio.connected and conn["close_t"] is None:
            conn["open_t"] = now()
            self.rec.sockets.append(conn)
            self.live = True
            return True
        return False

    async def close(self):
        conn, sio = self.conn, self.sio
        self.live = False
        if conn and conn["close_t"] is None and conn["open_t"] is not None:
            conn["close_t"] = now()
        self.conn = None
        if sio:
            await _quiet(sio.disconnect(), 3)


async def _quiet(coro, timeout=3):
    try:
        await asyncio.wait_for(coro, timeout)
    except Exception:  # noqa: BLE001
        pass


async def flash_socket(key, node, user, variant):
    """A websocket that sends the Socket.IO connect and closes at once (raw frames over TCP, so the
    close is exactly as abrupt as asked). variant: 'fin' (TCP close right after `40`), 'close'
    (a close frame, then TCP close), 'ack' (wait for the connect ack `40{sid}`, then TCP close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        ws_key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {ws_key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\nx-identity-assertion: {key.mint(user)}\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        status = head.split(b"\r\n")[0]
        if b" 101 " not in status:
            return "refused: " + status.decode()
        writer.write(_frame(0x1, b"40"))
        if variant == "close":
            writer.write(_frame(0x8, (1000).to_bytes(2, "big")))
        await writer.drain()
        if variant == "ack":
            buf = b""
            deadline = now() + 3
            while b"40{" not in buf and now() < deadline:
                chunk = await asyncio.wait_for(reader.read(4096), 3)
                if not chunk:
                    break
                buf += chunk
        return "ok"
    finally:
        writer.close()


def _frame(opcode, payload):
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


class Probe:
    """`GET /presence` (with an assertion) and `/metrics` on a node."""

    def __init__(self, key):
        self.key = key
        self.http = None

    async def __aenter__(self):
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.5))
        return self

    async def __aexit__(self, *exc):
        await self.http.close()

    async def presence(self, node):
        async with self.http.get(node.url + "/presence",
                                 headers={"x-identity-assertion": self.key.mint("fault-probe")}) as r:
            r.raise_for_status()
            return {u["id"] for u in (await r.json())["onlineUsers"]}

    async def metric(self, node, name):
        async with self.http.get(node.url + "/metrics") as r:
            r.raise_for_status()
            for line in (await r.text()).splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return None
