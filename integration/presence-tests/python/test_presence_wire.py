"""The python clients' reading of the wire contract (presence_wire.Follower), without a server:
what the fault suite and the live tests count as a gap or a regression must be right itself."""
from presence_wire import Follower

A, B, C = ({"id": i, "name": i.upper()} for i in ("a", "b", "c"))


def snap(users, seq, epoch="e1"):
    return {"onlineUsers": users, "epoch": epoch, "seq": seq}


def diff(seq, joins=(), leaves=(), epoch="e1"):
    return {"joins": list(joins), "leaves": list(leaves), "epoch": epoch, "seq": seq}


def test_diffs_in_order_apply_and_stale_ones_are_ignored():
    f = Follower()
    f.on("online_users", snap([A], 4))
    assert not f.on("presence_diff", diff(5, joins=[B]))
    assert not f.on("presence_diff", diff(5, leaves=["a"]))  # a repeat: stale
    assert not f.on("presence_diff", diff(6, leaves=["a"]))
    assert sorted(f.users) == ["b"] and f.seq == 6 and f.stale == 1 and f.problems() == []


def test_a_jump_is_a_gap_and_diffs_wait_for_the_ack():
    f = Follower()
    f.on("online_users", snap([A], 1))
    assert f.on("presence_diff", diff(3, joins=[C]))  # 2 was missed: ask
    assert not f.on("presence_diff", diff(4, leaves=["a"]))  # ignored until the ack
    f.ack(snap([A, B, C], 4))
    assert not f.on("presence_diff", diff(5, leaves=["b"]))
    assert sorted(f.users) == ["a", "c"] and f.ignored_while_resyncing == 1
    assert [p[0] for p in f.problems()] == ["seq_gap"]


def test_another_epoch_is_a_gap_and_a_new_snapshot_starts_over():
    f = Follower()
    f.on("online_users", snap([A], 9))
    assert f.on("presence_diff", diff(10, joins=[B], epoch="e2"))
    f.ack(snap([B], 1, epoch="e2"))
    f.on("online_users", snap([C], 0, epoch="e3"))  # a reconnect: no gap
    assert not f.on("presence_diff", diff(1, joins=[A], epoch="e3"))
    assert sorted(f.users) == ["a", "c"] and len(f.gaps) == 1


def test_snapshot_pages_apply_without_touching_seq():
    f = Follower()
    f.on("online_users", snap([A], 7))
    assert not f.on("presence_diff", {"joins": [B, C], "leaves": []})
    assert not f.on("presence_diff", diff(8, leaves=["b"]))
    assert sorted(f.users) == ["a", "c"] and f.problems() == []


def test_a_diff_before_any_snapshot_asks_for_one():
    f = Follower()
    assert f.on("presence_diff", diff(3, joins=[A]))
    assert f.gaps


def test_compat_older_list_is_refused_and_recorded():
    f = Follower()
    f.on("online_users", snap([A], 2))
    f.on("user_connected", {**snap([A, B], 3), "user": B})
    f.on("user_connected", {**snap([A], 2), "user": A})  # an older view
    assert sorted(f.users) == ["a", "b"]
    f.on("user_disconnected", {**snap([B], 5), "userId": "a"})  # 4 missed: the list is whole
    assert sorted(f.users) == ["b"]
    assert [p[0] for p in f.problems()] == ["seq_gap", "list_regressed"]


def test_seed_style_frames_without_numbers_still_work():
    f = Follower()
    f.on("online_users", {"onlineUsers": [A]})
    f.on("user_connected", {"onlineUsers": [A, B], "user": B})
    g = Follower()
    g.on("online_users", {"onlineUsers": [A]})
    assert not g.on("presence_diff", {"joins": [B], "leaves": ["a"]})
    assert sorted(f.users) == ["a", "b"] and sorted(g.users) == ["b"]
    assert f.problems() == [] and g.problems() == []
