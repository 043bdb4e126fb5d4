"""Fault injection against the real presence-service, in the spirit of Jepsen (issue 11).

Three nodes over one redis-server; many users' tabs (python-socketio AsyncClient) connect,
disconnect, reload, and open a websocket only to close it right after the Socket.IO connect,
while Redis is paused (shorter and longer than node_ttl_ms), killed and restarted empty, and
nodes are killed and restarted or paused. After each fault heals, the suite polls until the
cluster converges (or a deadline passes) and checks the invariants; see README.md.

Seeded: FAULT_SEED=N replays a schedule (the timing of the processes is not replayed, so a
race may need a few runs). FAULT_SECS (per mode) and FAULT_ROUNDS bound the run."""
import asyncio
import os
import random
import re
import signal
import statistics
import tempfile

import pytest

from harness import (GRACE_MS, HEARTBEAT_MS, NODE_TTL_MS, Key, Node, Probe, Recorder, Redis, Tab,
                     flash_socket, now)

SEED = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(1, 10**6))
SECS = float(os.environ.get("FAULT_SECS", "75"))
ROUNDS = int(os.environ.get("FAULT_ROUNDS", "0"))  # 0: as many as FAULT_SECS allows
NODES = int(os.environ.get("FAULT_NODES", "3"))
USERS = 16
TWO_TAB_USERS = 6  # u00..u05 may have a second tab
# Convergence deadline after a heal: a dead node is reaped within node_ttl + heartbeat, a user
# leaves grace after their last socket; this leaves room for a loaded 2-core CI machine.
BOUND = float(os.environ.get("FAULT_BOUND_S", "8"))
STABLE = 0.6  # the invariants must hold this long (a late disconnect must not slip through)
SETTLE = 1.0  # a socket open this long has been announced; its user must not be removed after
FAULT_KINDS = ["redis_pause_short", "redis_pause_long", "redis_restart", "redis_restart_kept",
               "node_kill_quick", "node_kill_slow", "node_pause_short", "node_pause_long"]

print(f"\nFAULT_SEED={SEED} (replay with FAULT_SEED={SEED})", flush=True)


class Cluster:
    def __init__(self, mode, rng, workdir):
        self.mode, self.rng, self.workdir = mode, rng, workdir
        self.key = Key("gw-faults")
        self.rec = Recorder()
        self.redis = Redis(workdir)
        self.nodes = []
        self.down = set()  # nodes killed or paused right now
        self.redis_down = False
        self.faults = []  # dicts: kind, target, start, heal
        users = [f"u{i:02d}" for i in range(USERS)]
        self.tabs = [Tab(self.key, u, s, self.rec, mode) for i, u in enumerate(users)
                     for s in range(2 if i < TWO_TAB_USERS else 1)]
        self.flash_count = 0
        self.resets = 0
        self.flashes = []  # (t, node, user, variant)
        self.oplog = []  # (t, node, what)

    async def start(self):
        await self.redis.start()
        self.nodes = [Node(f"n{i + 1}", self.key, self.mode, self.redis.port, self.workdir) for i in range(NODES)]
        for n in self.nodes:
            await n.start()

    async def stop(self):
        await asyncio.gather(*(t.close() for t in self.tabs if t.sio), return_exceptions=True)
        for n in self.nodes:
            await n.stop()
        self.redis.stop()

    async def reset(self):
        """After a round that did not converge: every tab closed, the nodes killed, Redis restarted
        empty, the nodes started again, so the next round does not inherit the broken state.
        Counted as a kill of every node (no flap is blamed on it)."""
        t = now()
        await asyncio.gather(*(tab.close() for tab in self.tabs if tab.sio), return_exceptions=True)
        for n in self.nodes:
            await n.kill()
        self.redis.kill()
        await self.redis.start()
        for n in self.nodes:
            await n.start()
        for n in self.nodes:
            self.faults.append({"kind": "reset", "target": n.name, "start": t, "heal": now()})
        self.resets += 1

    def up_nodes(self):
        return [n for n in self.nodes if n.name not in self.down]

    def log(self, msg):
        print(f"[{self.mode} {now() - self.t0:7.2f}] {msg}", flush=True)

    # ---- client operations ----
    async def op(self):
        rng = self.rng
        up = self.up_nodes()
        # A tab is picked by one operation at a time: two concurrent connects of one tab would
        # leave the first client open and untracked (a real socket the checks don't count).
        live = [t for t in self.tabs if t.live and not t.busy and t.node.name not in self.down]
        idle = [t for t in self.tabs if not t.live and not t.busy
                and (t.slot == 0 or self.tab_of(t.user, 0).live)]
        picked = []

        def pick(tabs):
            tab = rng.choice(tabs)
            tab.busy = True
            picked.append(tab)
            return tab
        try:
            await self._op(rng, kind_tabs=(live, idle, up), pick=pick)
        finally:
            for t in picked:
                t.busy = False

    async def _op(self, rng, kind_tabs, pick):
        live, idle, up = kind_tabs
        kind = rng.choices(["connect", "disconnect", "reload", "flash"], weights=[5, 2, 3, 2])[0]
        if kind == "connect" and idle and up:
            tab = pick(idle)
            node = rng.choice(up)
            self.oplog.append((now(), node.name, f"connect {tab.name}"))
            ok = await tab.connect(node)
            self.oplog.append((now(), node.name, f"connected {tab.name} {ok}"))
        elif kind == "disconnect" and live:
            tab = pick(live)
            self.oplog.append((now(), tab.node.name, f"close {tab.name}"))
            await tab.close()
        elif kind == "reload" and live and up:
            tab = pick(live)
            target = tab.node if rng.random() < 0.6 and tab.node in up else rng.choice(up)
            self.oplog.append((now(), tab.node.name, f"reload {tab.name} -> {target.name}"))
            await tab.close()
            ok = await tab.connect(target)
            self.oplog.append((now(), target.name, f"reloaded {tab.name} {ok}"))
        elif kind == "flash" and up:
            self.flash_count += 1
            user = f"u{rng.randrange(USERS):02d}"
            variant = rng.choice(["fin", "close", "ack"])
            node = rng.choice(up)
            self.flashes.append((now(), node.name, user, variant))
            try:
                res = await asyncio.wait_for(flash_socket(self.key, node, user, variant), 4)
            except Exception as e:  # noqa: BLE001
                res = repr(e)
            if res != "ok":
                self.rec.notes.append(f"flash {user} {variant} -> {node.name}: {res}")

    def tab_of(self, user, slot):
        return next(t for t in self.tabs if t.user == user and t.slot == slot)

    async def ops(self, n):
        done = 0
        while done < n:
            batch = min(n - done, self.rng.randint(1, 4))  # a few at once: races are the point
            await asyncio.gather(*(self.op() for _ in range(batch)))
            done += batch
            await asyncio.sleep(self.rng.uniform(0.02, 0.2))

    # ---- faults ----
    async def fault(self, kind):
        rng = self.rng
        ttl = NODE_TTL_MS / 1000
        f = {"kind": kind, "target": "redis", "start": now(), "heal": None}
        self.faults.append(f)
        if kind.startswith("redis_pause"):
            hold = rng.uniform(0.3, 0.7) * ttl if kind.endswith("short") else ttl + rng.uniform(0.5, 1.5)
            self.redis_down = True
            self.redis.signal(signal.SIGSTOP)
            await self.ops_during(hold)
            self.redis.signal(signal.SIGCONT)
        elif kind.startswith("redis_restart"):
            # `redis_restart` comes back empty; `redis_restart_kept` with every write it acknowledged
            # before the SIGKILL (its append-only file is written before each reply; not fsynced, which
            # a SIGKILL of the process alone does not need).
            self.redis_down = True
            self.redis.kill()
            await self.ops_during(rng.uniform(0.3, 1.5))
            await self.redis.start(keep=kind.endswith("kept"))
        else:
            node = rng.choice(self.nodes)
            f["target"] = node.name
            self.down.add(node.name)
            quick = kind.endswith("quick") or kind.endswith("short")
            hold = rng.uniform(0.2, 0.6) * ttl if quick else ttl + HEARTBEAT_MS / 1000 + rng.uniform(0.3, 1.2)
            if kind.startswith("node_kill"):
                await node.kill()
                await self.ops_during(hold)
                await node.start()
            else:
                node.signal(signal.SIGSTOP)
                await self.ops_during(hold)
                node.signal(signal.SIGCONT)
            f["hold"] = hold
        f["heal"] = now()
        self.down.clear()
        self.redis_down = False
        return f

    async def ops_during(self, secs):
        end = now() + secs
        k = self.rng.randint(0, 4)
        for _ in range(k):
            if now() >= end:
                break
            await self.op()
            await asyncio.sleep(self.rng.uniform(0, max(0, end - now()) / 2))
        await asyncio.sleep(max(0, end - now()))

    # ---- invariants at a checkpoint ----
    async def problems(self, probe):
        expected = {t.user for t in self.tabs if t.live}
        out = []
        for n in self.nodes:
            try:
                pres = await probe.presence(n)
                socks = await probe.metric(n, "presence_connected_sockets")
            except Exception as e:  # noqa: BLE001
                out.append(("node_reachable", f"{n.name}: {e!r}"))
                continue
            if pres != expected:
                out.append(("presence_http", f"{n.name} GET /presence: ghosts {sorted(pres - expected)} "
                                             f"missing {sorted(expected - pres)}"))
            want = sum(1 for t in self.tabs if t.live and t.node is n)
            if socks != want:
                recent = [f"{u}/{v}" for (t, nn, u, v) in self.flashes if nn == n.name and t > self.round_t]
                out.append(("metrics_sockets", f"{n.name} presence_connected_sockets={socks:g}, "
                                               f"sockets really open={want}; close-right-after-connect "
                                               f"on {n.name} this round: {recent}; tab operations there this round: "
                                               f"{[w for (t, nn, w) in sorted(self.oplog + self.rec.drops) if nn == n.name and t > self.round_t]}"))
        for t in self.tabs:
            if not t.live:
                continue
            if t.conn["first_event"] is None:
                out.append(("snapshot_missing", f"{t.name}@{t.node.name} got no presence event"))
            got = set(t.list)
            if got != expected:
                out.append(("client_list", f"{t.name}@{t.node.name}: ghosts {sorted(got - expected)} "
                                           f"missing {sorted(expected - got)}"))
        return out

    async def converge(self, probe, since):
        """Polls until the invariants hold for STABLE seconds; returns (seconds after `since`
        at which they started to hold, None) or (None, the problems at the deadline)."""
        ok_since = None
        last = []
        while True:
            t = now()
            last = await self.problems(probe)
            if not last:
                ok_since = ok_since or t
                if now() - ok_since >= STABLE:
                    return ok_since - since, None
            else:
                ok_since = None
            if now() - since > BOUND + STABLE:
                return None, last
            await asyncio.sleep(0.1)

    def timeline(self, users, since, limit=30):
        """What happened to `users` from `since` on: tab operations, close-right-after-connect
        sockets, drops, and the faults, in order, so a failure can be read without the node logs."""
        pat = re.compile(r"\b(" + "|".join(map(re.escape, sorted(users))) + r")(#\d)?\b")
        rows = [(t, f"{n}: {w}") for (t, n, w) in self.oplog + self.rec.drops if t >= since and pat.search(w)]
        rows += [(t, f"{n}: close-right-after-connect {u} ({v})") for (t, n, u, v) in self.flashes
                 if t >= since and u in users]
        for f in self.faults:
            if f["start"] >= since:
                rows.append((f["start"], f"{f['target']}: fault {f['kind']} starts"))
            if f["heal"] and f["heal"] >= since:
                rows.append((f["heal"], f"{f['target']}: fault {f['kind']} healed"))
        rows.sort()
        return [f"{t - self.t0:7.2f}s {w}" for (t, w) in rows[-limit:]]

    # ---- checks over the whole history ----
    def faulted(self, node_name, a, b):
        return any(f["target"] == node_name and f["start"] <= b and (f["heal"] or now()) >= a for f in self.faults)

    def context(self, t, short=False):
        for f in reversed(self.faults):
            if f["start"] <= t <= (f["heal"] or now()):
                return f"during {f['kind']}" if short else f"during {f['kind']}({f['target']})"
            if f["heal"] and 0 <= t - f["heal"] <= 3:
                return f"after {f['kind']}" if short else f"{t - f['heal']:.2f}s after healing {f['kind']}({f['target']})"
        return "no fault near"

    def flaps(self):
        """A removal of user U from some tab's list (an explicit leave, or a replacing list
        without U), seen at t by a tab on node O, while a socket S of U had been open since
        t - SETTLE or earlier and was still open at t, and neither S's node nor O was killed or
        paused between S's open - SETTLE and t. Redis faults do not excuse it."""
        out = []
        for (t, obs, obs_node, user, kind, event) in self.rec.removals:
            for s in self.rec.sockets:
                if s["user"] != user or s["open_t"] > t - SETTLE:
                    continue
                if s["close_t"] is not None and s["close_t"] <= t + 0.05:
                    continue
                if self.faulted(s["node"], s["open_t"], t) or self.faulted(obs_node, s["open_t"] - SETTLE, t):
                    continue
                out.append((f"flap[{self.context(t, short=True)}]", f"{user} removed ({kind}, {event}) from {obs}@{obs_node}'s list at "
                                    f"{t - self.t0:.2f}s while {s['tab']}@{s['node']} stayed connected "
                                    f"(open since {s['open_t'] - self.t0:.2f}s); {self.context(t)}"))
                break
        return out

    def contract(self):
        """Every break of the wire numbering a tab saw (seq_gap: a jump, or another epoch without
        a new online_users; list_regressed: a list older than the one held), with the fault near."""
        return [(inv, f"{tab}@{node} at {t - self.t0:.2f}s: {detail}; {self.context(t)}")
                for (t, tab, node, inv, detail) in self.rec.contract]

    def order(self):
        out = []
        for s in self.rec.sockets:
            if s["first_event"] not in (None, "online_users"):
                out.append(("order", f"{s['tab']}@{s['node']} (open {s['open_t'] - self.t0:.2f}s): first presence "
                                     f"event {s['first_event']} at {s['first_t'] - self.t0:.2f}s, not online_users; "
                                     f"{self.context(s['first_t'])}"))
        return out


async def scenario(mode):
    rng = random.Random(f"{SEED}-{mode}")
    workdir = tempfile.mkdtemp(prefix=f"presence-faults-{mode}-")
    c = Cluster(mode, rng, workdir)
    violations = []  # (invariant, round, fault, detail)
    bounds = {}
    await c.start()
    c.t0 = c.round_t = now()
    c.log(f"seed {SEED}, {NODES} nodes, redis :{c.redis.port}, logs in {workdir}")
    kinds = []
    try:
        async with Probe(c.key) as probe:
            await c.ops(14)
            conv, probs = await c.converge(probe, now())
            c.log(f"round 0 (no fault): {'converged in %.2fs' % conv if probs is None else 'NOT converged'}")
            for p in probs or []:
                violations.append((p[0], 0, "none", p[1]))
            if probs:
                await c.reset()
            bounds.setdefault("none", []).append(conv)
            r = 0
            while (ROUNDS == 0 or r < ROUNDS) and now() - c.t0 < SECS:
                r += 1
                if not kinds:
                    kinds = FAULT_KINDS[:]
                    rng.shuffle(kinds)
                kind = kinds.pop()
                prev_round_t, c.round_t = c.round_t, now()
                await c.ops(rng.randint(4, 10))
                f = await c.fault(kind)
                conv, probs = await c.converge(probe, f["heal"])
                bounds.setdefault(kind, []).append(conv)
                what = f"{kind}({f['target']}{', %.2fs' % f['hold'] if 'hold' in f else ''})"
                if probs is None:
                    c.log(f"round {r} {what}: converged {conv:.2f}s after heal; "
                          f"{sum(t.live for t in c.tabs)} sockets open")
                else:
                    c.log(f"round {r} {what}: NOT converged {BOUND}s after heal:")
                    for p in probs:
                        c.log(f"    {p[0]}: {p[1]}")
                        violations.append((p[0], r, what, p[1]))
                    named = {u for p in probs if p[0] != "metrics_sockets"
                             for u in re.findall(r"'(u\d\d)'", p[1])}
                    if named:
                        c.log(f"    timeline of {sorted(named)} this round (and the round before):")
                        for line in c.timeline(named, prev_round_t):
                            c.log(f"      {line}")
                    c.log("resetting the cluster (tabs closed, nodes and redis restarted empty)")
                    await c.reset()
    finally:
        await c.stop()
    for inv, detail in c.flaps() + c.order() + c.contract():
        violations.append((inv, None, None, detail))
    stale = sum(s["follower"].stale for s in c.rec.sockets)
    waited = sum(s["follower"].ignored_while_resyncing for s in c.rec.sockets)
    c.log(f"wire contract: {len(c.rec.contract)} breaks (seq_gap, list_regressed); {stale} stale diffs "
          f"ignored; {waited} diffs ignored while waiting for a get_online_users ack")
    for n in c.rec.notes:
        c.log(f"note: {n}")
    c.log(f"{len(c.rec.sockets)} socket connections, {c.flash_count} close-right-after-connect, "
          f"{len(c.faults) - c.resets * NODES} faults, {c.resets} resets after a failed round")
    c.log("heal -> convergence, seconds (min / median / max, n; '-' = did not converge):")
    for kind in ["none"] + FAULT_KINDS:
        xs = bounds.get(kind, [])
        ok = [x for x in xs if x is not None]
        if xs:
            stat = f"{min(ok):.2f} / {statistics.median(ok):.2f} / {max(ok):.2f}" if ok else "-"
            c.log(f"    {kind:18s} {stat}  n={len(xs)} failed={len(xs) - len(ok)}")
    return violations


# Every invariant fails the run, flaps around Redis faults included. FAULT_STRICT_REDIS_FLAPS=0
# relaxes those flaps to a printed report (to look at other failures while one is being fixed).
STRICT_REDIS_FLAPS = os.environ.get("FAULT_STRICT_REDIS_FLAPS", "1") != "0"


def relaxed(inv):
    return inv.startswith("flap[") and "redis_" in inv and not STRICT_REDIS_FLAPS


@pytest.mark.parametrize("mode", ["diff", "compat"])
def test_presence_under_faults(mode):
    violations = asyncio.run(scenario(mode))
    waived = [v for v in violations if relaxed(v[0])]
    if waived:
        print(f"\nFAULT_STRICT_REDIS_FLAPS=0 ({mode}), reported, not failing: {len(waived)} removals around "
              f"Redis faults: " + ", ".join(sorted({v[0] for v in waived})) + f" (seed {SEED})")
        for inv, _, _, detail in waived[:3]:
            print(f"    {inv}: {detail}")
    violations = [v for v in violations if not relaxed(v[0])]
    if violations:
        by_inv = {}
        for inv, r, what, detail in violations:
            by_inv.setdefault(inv, []).append((r, what, detail))
        lines = [f"seed {SEED} ({mode}): invariants violated (replay: FAULT_SEED={SEED}):"]
        for inv, items in by_inv.items():
            lines.append(f"  {inv}: {len(items)}")
            for r, what, detail in items[:6]:
                where = f"round {r} after {what}: " if r is not None else ""
                lines.append(f"    {where}{detail}")
        pytest.fail("\n".join(lines), pytrace=False)
