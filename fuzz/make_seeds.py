#!/usr/bin/env python3
"""Seed inputs from real data: gateway/tests/fixtures/express-session.json was made by the real
express-session, connect-redis, Passport and cookie-signature. Called by `run.sh --make-seeds`;
each file is the target's input format (byte 0 picks the mode, see the target's doc comment)."""
import base64, hashlib, hmac, json, os, sys

out = sys.argv[1]
fx = json.load(open(os.path.join(os.environ["FIXTURES"], "express-session.json")))


def write(target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data)


# classify: byte 0 = method (0 GET, 1 POST) | 4 upgrade; the rest is the query.
queries = [
    (0, "EIO=4&transport=polling&t=OxYz"),
    (4, "EIO=4&transport=websocket"),
    (1, "EIO=4&transport=polling&sid=Lbo5JLzTotvW3g2LAAAA"),
    (0, "EIO=4&transport=polling&t=P1a2b3c&sid=abc%3D"),
    (4, "EIO=4&transport=websocket&sid=Lbo5JLzTotvW3g2LAAAA"),
    (0, "EIO=3&transport=polling&t=N8hyd6w&b64=1"),
    (0, "transport=polling"),
    (1, "EIO=4&transport=polling"),
    (0, "EIO=4&s%69d=x&transport=web+socket"),
    (0, "k\0v%00\0a+b\0%E2%82%AC"),
]
for i, (ctl, q) in enumerate(queries):
    write("classify", f"query-{i}", bytes([ctl]) + q.encode())

# session_cookie: byte 0 = mode (0 express, 1 tower unsigned, 2 tower signed, 3 Cookie header),
# then lines: the value, then the secrets.
for i, s in enumerate(fx["signatures"]):
    write("session_cookie", f"express-sig-{i}", "\0" + s["cookie_value"] + "\n" + s["secret"])
for l in fx["logins"]:
    write("session_cookie", f"express-login-{l['user']}",
          "\0" + l["cookie_value"] + "\n" + "rotated-new-secret\n" + fx["secret"])
    header = l["set_cookie_header"].split(";")[0]
    write("session_cookie", f"header-{l['user']}",
          "\3" + fx["cookie_name"] + "\n" + "theme=dark; " + header + '; id="x"')
for i, n in enumerate(fx["negative"]):
    write("session_cookie", f"express-negative-{i}", "\0" + n["cookie_value"] + "\n" + "\n".join(n["secrets"]))
tower_id = base64.urlsafe_b64encode((0x0123456789abcdef0011223344556677).to_bytes(16, "little")).rstrip(b"=").decode()
write("session_cookie", "tower-unsigned", "\1" + tower_id)
key = "k" * 32
sig = base64.b64encode(hmac.new(key.encode(), tower_id.encode(), hashlib.sha256).digest()).decode()
write("session_cookie", "tower-signed", "\2" + sig + tower_id + "\n" + key)
master = base64.b64encode(bytes(range(64))).decode()
write("session_cookie", "tower-master-key", "\2" + master + "\n" + key)

# session_record: byte 0 = mode (0 connect-redis JSON, 1 MessagePack record, 2 planted user),
# optional `\0<dotted path>`.
for l in fx["logins"]:
    write("session_record", f"connect-redis-{l['user']}", "\0" + l["redis_value"])
    write("session_record", f"connect-redis-{l['user']}-path", "\0" + l["redis_value"] + "\0passport.user")
write("session_record", "planted-passport", "\2alice\0passport.user")
write("session_record", "planted-axum-login", "\2" + "42\0axum-login.data.user_id")
