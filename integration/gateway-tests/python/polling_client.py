"""python-socketio, polling only, through the gateway: echoes for a while and reports what
happened as one JSON line on stdout.

    polling_client.py URL COOKIE_NAME COOKIE_VALUE SECONDS

The login cookie goes into the `requests.Session`'s jar (not `headers`, which would replace
the jar's cookies on every request): the gateway's affinity cookie then rides along with it.
"""
import json
import sys
import time
import urllib.parse

import requests
import socketio

url, name, value, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
host = urllib.parse.urlparse(url).hostname
http = requests.Session()
http.cookies.set(name, value, domain=host, path="/")
sio = socketio.Client(reconnection=False, http_session=http)
report = {"acks": 0, "missed": 0, "disconnects": [], "errors": []}
sio.on("disconnect", lambda *reason: report["disconnects"].append(str(reason)))
sio.on("connect_error", lambda data: report["errors"].append(str(data)))
try:
    sio.connect(url, transports=["polling"], wait_timeout=10)
except Exception as e:  # reported, not raised: the caller decides
    report["errors"].append(repr(e))
    print(json.dumps(report), flush=True)
    sys.exit(0)
print("connected", flush=True)
end = time.time() + seconds
i = 0
while time.time() < end:
    i += 1
    try:
        if sio.call("echo", i, timeout=5) == i:
            report["acks"] += 1
        else:
            report["missed"] += 1
    except Exception as e:
        report["missed"] += 1
        report["errors"].append(repr(e))
    time.sleep(0.1)
report["affinity_cookie"] = "gw_affinity" in http.cookies
result = json.dumps(report)  # before our own disconnect, which is not one to count
sio.disconnect()
print(result, flush=True)
