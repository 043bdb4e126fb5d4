"""Fixtures: a real presence-service process (PEM key written here) and assertion minting with
Ed25519, as the gateway does it."""
import base64
import json
import os
import pathlib
import subprocess
import tempfile
import threading
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = pathlib.Path(__file__).resolve().parents[3]
BIN = os.environ.get("PRESENCE_BIN", str(ROOT / "target" / "debug" / "presence-service"))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Key:
    def __init__(self, kid):
        self.kid = kid
        self.private = Ed25519PrivateKey.generate()
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def mint(self, sub, name=None, sid=None, **over):
        now = int(time.time())
        claims = {"iss": "edge-gateway", "aud": "presence-service", "sub": sub, "name": name or sub.upper(),
                  "sid": sid or f"sess-{sub}", "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
        claims.update(over)
        header = {"alg": "EdDSA", "typ": "JWT", "kid": self.kid}
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        return signing_input + "." + b64(self.private.sign(signing_input.encode()))


class Node:
    def __init__(self, key, mode, presence_toml=""):
        self.dir = tempfile.TemporaryDirectory(prefix="presence-py-")
        d = pathlib.Path(self.dir.name)
        (d / "gw.pem").write_bytes(key.public_pem)
        (d / "presence.toml").write_text(
            '[server]\nlisten = "127.0.0.1:0"\n'
            f'[trust]\n[[trust.public_keys]]\nkid = "{key.kid}"\npem = "gw.pem"\n'
            f'[presence]\nmode = "{mode}"\ngrace_ms = 500\ndiff_window_ms = 30\n{presence_toml}'
        )
        self.proc = subprocess.Popen([BIN, "--config", str(d / "presence.toml")],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        found = {}

        def read():
            for line in self.proc.stdout:
                if "listening on" in line:
                    found["addr"] = line.split()[-1]
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(15)
        if "addr" not in found:
            self.proc.kill()
            raise RuntimeError("presence-service did not start")
        self.url = f"http://{found['addr']}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


@pytest.fixture(scope="session")
def key():
    return Key("gw-py")


@pytest.fixture(params=["compat", "diff"])
def node(request, key):
    n = Node(key, request.param)
    n.mode = request.param
    yield n
    n.stop()


@pytest.fixture
def paged_diff_node(key):
    """Diff mode with snapshots in pages of 2 users."""
    n = Node(key, "diff", "snapshot_page_size = 2\n")
    n.mode = "diff"
    yield n
    n.stop()
