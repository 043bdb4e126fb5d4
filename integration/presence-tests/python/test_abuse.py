"""Correctness under abuse: clients that send WebSocket pings at a high rate and stop reading
while broadcasts run. Every frame such a client eventually reads must be a well-formed server
frame (unmasked, whole, a known opcode), every Engine.IO packet in it must parse, every pong must
echo one of the client's pings (in the order they were sent), and the presence changes must
arrive in the order they happened. Both kinds of session are abused: websocket-only and upgraded
from polling.

The server answers a ping from its read half; a pong that the kernel takes only in part (the
socket buffer is nearly full) waits in the codec for the rest. A frame written to the socket by
any path other than that codec can land in the middle of it: the client then reads a broken
stream. The raw client here parses the stream byte by byte, so such a frame cannot go unseen.
"""
import base64
import json
import os
import random
import socket
import struct
import threading
import time
import urllib.parse

import pytest

SEED = int(os.environ.get("ABUSE_SEED", random.randrange(1 << 30)))
ABUSERS_PER_KIND = 3
DRIVER_USERS = 60


class Broken(AssertionError):
    pass


def split_url(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port


def masked(opcode, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    else:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    return head + mask + body


class RawWs:
    """A websocket client on a bare TCP socket with a small receive buffer, and a strict parser of
    what the server sends."""

    def __init__(self, url, path, token, rcvbuf=4096):
        host, port = split_url(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, port))
        self.sock.settimeout(10)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
        if token:
            req += f"x-identity-assertion: {token}\r\n"
        self.sock.sendall((req + "\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the websocket handshake")
            buf += chunk
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.pings_sent = 0
        self.last_pong = -1
        self.closed = False
        # Every Engine.IO packet read so far, in order.
        self.texts = []

    def send_text(self, text):
        self.sock.sendall(masked(0x1, text.encode()))

    def ping_burst(self, count):
        frames = []
        for _ in range(count):
            # Control frames carry at most 125 bytes: the largest pong fills the buffer fastest.
            frames.append(masked(0x9, f"p{self.pings_sent:09d}".encode().ljust(125, b".")))
            self.pings_sent += 1
        self.sock.sendall(b"".join(frames))

    def take(self, want):
        """Reads at most `want` bytes if any are there (the client reads a little, then stops)."""
        self.sock.setblocking(False)
        try:
            chunk = self.sock.recv(want)
            if chunk == b"":
                self.closed = True
            self.buf += chunk
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(10)

    def frames(self):
        """Every complete frame in the buffer: (opcode, payload). Raises `Broken` on anything a
        server may not send."""
        out = []
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
            if not fin or rsv or opcode not in (0x1, 0x2, 0x8, 0xA):
                raise Broken(f"bad frame head {self.buf[:16]!r}")
            if b1 & 0x80:
                raise Broken(f"masked server frame {self.buf[:16]!r}")
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    break
                n, at = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    break
                n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
            if opcode in (0x8, 0xA) and n > 125:
                raise Broken(f"control frame of {n} bytes")
            if len(self.buf) < at + n:
                break
            payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
            out.append((opcode, payload))
            if opcode == 0x1:
                try:
                    self.texts.append(payload.decode())
                except UnicodeDecodeError:
                    raise Broken(f"text frame not UTF-8: {payload[:40]!r}") from None
            if opcode == 0xA:
                self.check_pong(payload)
        return out

    def check_pong(self, payload):
        try:
            seq = int(payload[1:10])
        except ValueError:
            raise Broken(f"pong with a payload never sent: {payload[:20]!r}") from None
        if not payload.startswith(b"p") or payload != f"p{seq:09d}".encode().ljust(125, b"."):
            raise Broken(f"pong with a payload never sent (a frame inside it?): {payload[:160]!r}")
        # The codec may answer only the latest of several pings, never an older after a newer.
        if seq <= self.last_pong or seq >= self.pings_sent:
            raise Broken(f"pong {seq} after pong {self.last_pong} ({self.pings_sent} pings sent)")
        self.last_pong = seq

    def read_until(self, pred, timeout=10):
        """Reads (blocking) until an Engine.IO packet satisfies `pred`; returns the packets read."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            for opcode, payload in self.frames():
                if opcode == 0x1:
                    seen.append(payload.decode())
                    if pred(seen[-1]):
                        return seen
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; read {seen}")
            self.buf += chunk
        raise TimeoutError(f"read {seen}")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def events(packets):
    """The Socket.IO events among Engine.IO packets; anything unparsable is a broken stream."""
    out = []
    for p in packets:
        if p.startswith("42"):
            try:
                name, *args = json.loads(p[2:])
            except ValueError:
                raise Broken(f"unparsable event {p[:80]!r}") from None
            out.append((name, args[0] if args else None))
        elif p[:1] not in ("0", "2", "3", "6") and p[:2] != "40":
            raise Broken(f"unexpected packet {p[:80]!r}")
    return out


def ws_only(url, token):
    ws = RawWs(url, "/socket.io/?EIO=4&transport=websocket", token)
    ws.read_until(lambda p: p.startswith("0{"))
    ws.send_text("40")
    return ws


def upgraded(url, token):
    """Polling handshake, then the websocket upgrade (probe, upgrade packet), as the official
    clients do by default."""
    import requests

    r = requests.get(f"{url}/socket.io/?EIO=4&transport=polling",
                     headers={"x-identity-assertion": token}, timeout=5)
    r.raise_for_status()
    assert r.text.startswith("0{"), r.text
    sid = json.loads(r.text[1:])["sid"]
    ws = RawWs(url, f"/socket.io/?EIO=4&transport=websocket&sid={sid}", None)
    ws.send_text("2probe")
    ws.read_until(lambda p: p == "3probe")
    ws.send_text("5")
    ws.send_text("40")
    return ws


def driver_index(user_id):
    return int(user_id.split("-")[1])


def joins_in(name, data):
    if name == "user_connected":
        return [data["user"]["id"]]
    if name == "presence_diff":
        return [u["id"] for u in data["joins"]]
    return []


@pytest.fixture
def abuse_node(key, request):
    from conftest import Node

    # No heartbeat during the run: the abusers do not answer Engine.IO pings while they hold off.
    n = Node(key, request.param, "\n[limits]\nping_interval_ms = 120000\nping_timeout_ms = 60000\n")
    n.mode = request.param
    yield n
    n.stop()


@pytest.mark.parametrize("abuse_node", ["compat", "diff"], indirect=True)
def test_ping_flood_and_stalled_reads_never_break_a_frame(abuse_node, key):
    rng = random.Random(SEED)
    print(f"ABUSE_SEED={SEED}")
    url = abuse_node.url
    abusers = []
    for i in range(ABUSERS_PER_KIND):
        abusers.append(("websocket-only", ws_only(url, key.mint(f"wsabuser-{i}"))))
        abusers.append(("upgraded", upgraded(url, key.mint(f"upabuser-{i}"))))
    for _, ws in abusers:
        ws.read_until(lambda p: p.startswith('42["online_users"'))

    errors = []
    stop = threading.Event()

    def abuse(kind, ws, seed):
        r = random.Random(seed)
        try:
            while not stop.is_set():
                ws.ping_burst(r.randrange(50, 400))
                # Mostly not reading; now and then a little, so the buffers are always almost full.
                if r.random() < 0.3:
                    ws.take(r.randrange(1, 3000))
                ws.frames()
                time.sleep(r.random() * 0.004)
        except Broken as e:
            errors.append(f"{kind}: {e}")
        except OSError:
            # The server may close a client it finds too slow; what it sent before is checked below.
            pass

    threads = [threading.Thread(target=abuse, args=(k, ws, rng.random()), daemon=True)
               for k, ws in abusers]
    for t in threads:
        t.start()

    # Presence changes while they abuse: users join one after another (each once its own
    # snapshot is in), so every abuser must see the joins in this order.
    drivers = []
    try:
        for i in range(DRIVER_USERS):
            d = ws_only(url, key.mint(f"driver-{i:03d}"))
            d.read_until(lambda p: p.startswith('42["online_users"'))
            drivers.append(d)
            time.sleep(rng.random() * 0.03)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, f"seed {SEED}: {errors}"

    # Now read everything the server had for them and check it.
    last = f"driver-{DRIVER_USERS - 1:03d}"
    for kind, ws in abusers:
        try:
            ws.sock.settimeout(3)
            while not any(last in p for p in ws.texts):
                ws.frames()
                chunk = ws.sock.recv(65536)
                if not chunk:
                    break
                ws.buf += chunk
            ws.frames()
        except socket.timeout:
            pass
        except Broken as e:
            pytest.fail(f"seed {SEED}: {kind}: {e}")
        except OSError:
            pass
        try:
            seen = [driver_index(u) for name, data in events(ws.texts) for u in joins_in(name, data)
                    if u.startswith("driver-")]
        except Broken as e:
            pytest.fail(f"seed {SEED}: {kind}: {e}")
        assert seen == sorted(set(seen)), f"seed {SEED}: {kind}: joins out of order: {seen}"
        print(f"{kind}: {ws.pings_sent} pings, {len(seen)} joins seen, pongs up to {ws.last_pong}")
    for _, ws in abusers:
        ws.close()
    for d in drivers:
        d.close()
