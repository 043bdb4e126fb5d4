"""Minimal reproductions of what the fault suite found, one scenario at a time, deterministic
schedule (no random choices), small: run from integration/presence-tests with the venv's python:

    ../../var/venv-presence/bin/python faults/repro.py [scenario ...] [--mode diff|compat]

Scenarios: ghost_socket, redis_pause_long, redis_restart, redis_restart_twice, outage_local_leave,
diff_order.
Each prints what it saw and PASS or FAIL."""
import asyncio
import pathlib
import signal
import sys
import tempfile

# The same import roots as conftest.py: this folder (harness.py) and the python clients' folder
# (presence_wire.py, which harness.py imports).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))

from harness import NODE_TTL_MS, Key, Node, Probe, Recorder, Redis, Tab, flash_socket, now


async def cluster(mode, n):
    d = tempfile.mkdtemp(prefix="presence-repro-")
    key = Key("gw-repro")
    redis = Redis(d)
    await redis.start()
    nodes = [Node(f"n{i + 1}", key, mode, redis.port, d) for i in range(n)]
    for node in nodes:
        await node.start()
    print(f"  logs in {d}")
    return key, redis, nodes


async def teardown(redis, nodes, tabs=()):
    for t in tabs:
        await t.close()
    for n in nodes:
        await n.stop()
    redis.stop()


async def settle(probe, nodes, want, secs=6):
    """Polls every node's /presence until it is `want`; returns the seconds it took or None."""
    t0 = now()
    while now() - t0 < secs:
        got = [await probe.presence(n) for n in nodes]
        if all(g == want for g in got):
            return now() - t0
        await asyncio.sleep(0.05)
    print(f"  /presence after {secs}s: " + ", ".join(f"{n.name}={sorted(g)}" for n, g in zip(nodes, got)))
    return None


async def ghost_socket(mode):
    """Sockets opened and closed right after the Socket.IO connect: after the grace period the
    node must count no socket and show nobody."""
    key, redis, nodes = await cluster(mode, 1)
    ok = True
    try:
        async with Probe(key) as probe:
            for variant in ("fin", "close", "ack"):
                for burst in range(5):  # 20 in a row, then 4 bursts of 20 at once
                    if burst == 0:
                        for i in range(20):
                            await flash_socket(key, nodes[0], f"g-{variant}", variant)
                    else:
                        await asyncio.gather(*(flash_socket(key, nodes[0], f"g-{variant}{i % 3}", variant)
                                               for i in range(20)), return_exceptions=True)
                await asyncio.sleep(1.0)
                socks = await probe.metric(nodes[0], "presence_connected_sockets")
                pres = await probe.presence(nodes[0])
                bad = socks != 0 or pres
                ok &= not bad
                print(f"  100 x {variant}: presence_connected_sockets={socks:g} /presence={sorted(pres)}"
                      f"{'  <- ghost' if bad else ''}")
    finally:
        await teardown(redis, nodes)
    return ok


async def two_users(mode):
    key, redis, nodes = await cluster(mode, 2)
    rec = Recorder()
    a, b = Tab(key, "a", 0, rec, mode), Tab(key, "b", 0, rec, mode)
    assert await a.connect(nodes[0]) and await b.connect(nodes[1])
    return key, redis, nodes, rec, a, b


async def redis_pause_long(mode):
    """a on n1, b on n2; Redis SIGSTOPped for node_ttl + 1 s: nobody disconnected, so nobody
    may be removed from any list, and both must be online on both nodes after SIGCONT."""
    key, redis, nodes, rec, a, b = await two_users(mode)
    try:
        async with Probe(key) as probe:
            assert await settle(probe, nodes, {"a", "b"}) is not None
            redis.signal(signal.SIGSTOP)
            await asyncio.sleep(NODE_TTL_MS / 1000 + 1)
            redis.signal(signal.SIGCONT)
            took = await settle(probe, nodes, {"a", "b"})
            await asyncio.sleep(0.5)
    finally:
        await teardown(redis, nodes, (a, b))
    return report(rec, took, a, b)


async def redis_restart(mode):
    """a on n1, b on n2; Redis SIGKILLed, restarted empty 0.5 s later: nobody may be removed."""
    key, redis, nodes, rec, a, b = await two_users(mode)
    try:
        async with Probe(key) as probe:
            assert await settle(probe, nodes, {"a", "b"}) is not None
            redis.kill()
            await asyncio.sleep(0.5)
            await redis.start()
            took = await settle(probe, nodes, {"a", "b"})
            await asyncio.sleep(0.5)
    finally:
        await teardown(redis, nodes, (a, b))
    return report(rec, took, a, b)


async def redis_restart_twice(mode):
    """a on n1, b on n2; Redis restarted empty, then killed again about when the nodes' hold-over
    ends and restarted empty: nobody may be removed (found by FAULT_SEED=6606, diff)."""
    key, redis, nodes, rec, a, b = await two_users(mode)
    took = None
    try:
        async with Probe(key) as probe:
            assert await settle(probe, nodes, {"a", "b"}) is not None
            # The hold-over lasts two heartbeats and an op timeout from when a node sees the new
            # epoch; the second kill has to land around its end, so try a few offsets.
            for gap in (0.45, 0.55, 0.65, 0.75, 0.85, 0.95):
                redis.kill()
                await asyncio.sleep(0.5)
                await redis.start()
                await asyncio.sleep(gap)
                redis.kill()
                await asyncio.sleep(0.5)
                await redis.start()
                took = await settle(probe, nodes, {"a", "b"})
                await asyncio.sleep(0.5)
                print(f"  second kill {gap:.2f}s after the first restart: {len(rec.removals)} removals so far")
                if rec.removals or took is None:
                    break
    finally:
        await teardown(redis, nodes, (a, b))
    return report(rec, took, a, b)


async def outage_local_leave(mode):
    """a on n1, b on n2; during a short Redis pause a socket of a opens and closes on n2: after
    its grace n2 cannot store the release and tells its own sockets that a left, though a's tab
    on n1 is still open."""
    key, redis, nodes, rec, a, b = await two_users(mode)
    try:
        async with Probe(key) as probe:
            assert await settle(probe, nodes, {"a", "b"}) is not None
            redis.signal(signal.SIGSTOP)
            await flash_socket(key, nodes[1], "a", "ack")
            await asyncio.sleep(NODE_TTL_MS / 1000 * 0.6)
            redis.signal(signal.SIGCONT)
            took = await settle(probe, nodes, {"a", "b"})
            await asyncio.sleep(0.5)
    finally:
        await teardown(redis, nodes, (a, b))
    return report(rec, took, a, b)


def report(rec, took, *tabs):
    for (t, obs, node, user, kind, event) in rec.removals:
        print(f"  {obs}@{node} removed {user} ({kind}, {event})")
    for t in tabs:
        print(f"  {t.name}@{t.node.name} list now {sorted(t.list)}")
    print(f"  /presence back to a, b after {'%.2fs' % took if took is not None else 'never (6 s)'}")
    return not rec.removals and took is not None and all(set(t.list) == {"a", "b"} for t in tabs)


async def diff_order(mode="diff"):
    """30 tabs connect at once on one diff-mode node: each one's first event is online_users."""
    key, redis, nodes = await cluster("diff", 1)
    rec = Recorder()
    tabs = [Tab(key, f"o{i:02d}", 0, rec, "diff") for i in range(30)]
    try:
        await asyncio.gather(*(t.connect(nodes[0]) for t in tabs))
        await asyncio.sleep(1)
    finally:
        await teardown(redis, nodes, tabs)
    bad = [s for s in rec.sockets if s["first_event"] != "online_users"]
    for s in bad:
        print(f"  {s['tab']}: first event {s['first_event']}")
    print(f"  {len(bad)} of {len(rec.sockets)} sockets got another event before online_users")
    return not bad


SCENARIOS = {f.__name__: f for f in (ghost_socket, redis_pause_long, redis_restart, redis_restart_twice,
                                      outage_local_leave, diff_order)}


async def main(args):
    mode = "diff"
    if "--mode" in args:
        i = args.index("--mode")
        mode = args[i + 1]
        del args[i:i + 2]
    names = args or list(SCENARIOS)
    failed = []
    for name in names:
        print(f"{name} ({mode}): {SCENARIOS[name].__doc__.split(chr(10))[0]}")
        ok = await SCENARIOS[name](mode)
        print(f"  {'PASS' if ok else 'FAIL'}")
        if not ok:
            failed.append(name)
    print("failed: " + (" ".join(failed) or "none"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
