"""Snapshots, the Fenwick sampler and the Selector's picks."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbserver.config import Group, Node, Require, Rule, ServerConfig
from lbserver.core.fenwick import Fenwick
from lbserver.core.health import NodeRecord, record_failure, record_success
from lbserver.core.selection import EmptyGroup, Selector, Snapshot, UnknownGroup

# Chi-square critical values at p = 0.001 by degrees of freedom (standard tables).
CHI2_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}

SESSIONS = Rule("NBSESSIONS", weight=1, capacity=10, per_session=1)


def chi2(observed: dict[str, int], expected_share: dict[str, float]) -> float:
    n = sum(observed.values())
    total = sum(expected_share.values())
    return sum((observed.get(k, 0) - n * w / total) ** 2 / (n * w / total) for k, w in expected_share.items())


def state(**variables) -> dict:
    users = variables.pop("users", [])
    return {"hostname": "h", "agent_version": "t", "sampled_at": 0.0,
            "variables": {"NBPROC": 1, "CPUFREQ": 1000, **variables}, "users": list(users)}


def make(groups: dict[str, list[str]], states: dict[str, dict | None], rules=(), requires=(),
         drained=frozenset(), default=None) -> Snapshot:
    """A snapshot from node states (None: agent down)."""
    names = {n for ms in groups.values() for n in ms}
    nodes = {n: Node(name=n, address=f"http://127.0.0.1:{8001 + i}", host="127.0.0.1", port=8001 + i)
             for i, n in enumerate(sorted(names))}
    default = default or next(iter(groups))
    cfg = ServerConfig(path="t.xml", nodes=nodes,
                       groups={g: Group(g, tuple(ms), g == default) for g, ms in groups.items()},
                       default_group=default, rules=tuple(rules), requires=tuple(requires))
    records = {}
    for n, s in states.items():
        rec = NodeRecord(n)
        if s is None:
            record_failure(rec, "connection refused", 0.0, 2)
        else:
            record_success(rec, s, 0.0, 2)
        records[n] = rec
    return Snapshot.build(cfg, records, drained=frozenset(drained), now=123.0)


# --- Fenwick ----------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=40),
       st.lists(st.tuples(st.integers(0, 1000), st.floats(0, 100, allow_nan=False)), max_size=200),
       st.floats(0, 1, exclude_max=True))
def test_fenwick_matches_naive(initial, updates, u):
    tree, naive = Fenwick(initial), list(initial)
    for i, w in updates:
        i %= len(naive)
        tree.set(i, w)
        naive[i] = w
    for i in range(len(naive) + 1):
        assert tree.prefix(i) == pytest.approx(sum(naive[:i]), rel=1e-9, abs=1e-9)
    assert tree.positive == sum(1 for w in naive if w > 0)
    assert tree.values() == naive
    total = sum(naive)
    if total > 0:
        target = u * tree.total()
        got = tree.find(target)
        assert naive[got] > 0
        # the naive answer: first index whose running sum exceeds the target
        acc, want = 0.0, None
        for j, w in enumerate(naive):
            acc += w
            if acc > target:
                want = j
                break
        if want is not None and abs(acc - target) > 1e-6 and abs(acc - naive[want] - target) > 1e-6:
            assert got == want
    else:
        assert tree.sample(random.Random(0)) is None


def test_fenwick_rejects_bad_weights():
    with pytest.raises(ValueError):
        Fenwick([1, -1])
    with pytest.raises(ValueError):
        Fenwick([float("nan")])


def test_fenwick_sampling_follows_weights():
    weights = [1, 0, 3, 6]
    tree = Fenwick(weights)
    rng = random.Random(7)
    counts = Counter(tree.sample(rng) for _ in range(20000))
    assert counts[1] == 0
    stat = chi2({str(k): v for k, v in counts.items()}, {"0": 1, "2": 3, "3": 6})
    assert stat < CHI2_001[2]


# --- Snapshot -----------------------------------------------------------------

def test_snapshot_views_health_drain_and_ranking():
    rules = [Rule("LOADAVG", weight=1, capacity=10)]
    snap = make({"G": ["a", "b", "c", "d", "e", "f"]},
                {"a": state(LOADAVG=5), "b": state(LOADAVG=5, NBPROC=2), "c": state(LOADAVG=1),
                 "d": None, "e": state(LOADAVG=0), "f": state()},
                rules=rules, drained={"e"})
    assert snap.built_at == 123.0 and snap.default_group == "G"
    a, d, e, f = (snap.nodes[n] for n in "adef")
    assert a.up and a.healthy and a.weight == pytest.approx(0.5) and a.selectable
    assert d.up is False and not d.healthy and d.weight == 0 and d.reasons == ("agent down: connection refused",)
    assert d.error == "connection refused"
    assert e.healthy and e.drained and not e.selectable
    assert not f.healthy and "variable LOADAVG missing from agent reply" in f.reasons
    # b: bigger (2 cores) with the same weight per size... weight 2*0.75=1.5 > c 0.9 > a 0.5
    assert [v.name for v in snap.ranked("G")] == ["b", "c", "a"]
    assert [v.name for v in snap.ranked()] == ["b", "c", "a"]


def test_snapshot_never_polled_node():
    snap = make({"G": ["a", "b"]}, {"a": state()})
    b = snap.nodes["b"]
    assert b.up is None and not b.healthy and b.reasons[0] == "not polled yet"


def test_ranked_ties_by_size_then_name():
    snap = make({"G": ["c", "b", "a", "z"]},
                {"c": state(NBPROC=2), "b": state(), "a": state(), "z": state(NBPROC=1, CPUFREQ=2000)})
    # no rules: weight = size; z and c have size 2, a and b size 1
    assert [v.name for v in snap.ranked("G")] == ["c", "z", "a", "b"]


def test_snapshot_is_immutable():
    snap = make({"G": ["a"]}, {"a": state()})
    with pytest.raises(TypeError):
        snap.nodes["x"] = snap.nodes["a"]
    with pytest.raises(AttributeError):
        snap.nodes["a"].weight = 5


def test_unknown_group():
    snap = make({"G": ["a"]}, {"a": state()})
    sel = Selector(random.Random(1))
    sel.install(snap)
    with pytest.raises(UnknownGroup) as exc:
        sel.pick("NOPE")
    assert exc.value.group == "NOPE" and str(exc.value) == "unknown group 'NOPE'"
    with pytest.raises(UnknownGroup):
        snap.ranked("NOPE")


def test_pick_before_install_is_an_error():
    with pytest.raises(RuntimeError):
        Selector().pick()


# --- weighted choice ------------------------------------------------------------

def test_pick_distribution_matches_weights_chi_square():
    rules = [Rule("LOADAVG", weight=10, capacity=1.0, per_cpu=True)]   # no per-session: weights stay put
    snap = make({"G": ["a", "b", "c", "d"]},
                {"a": state(LOADAVG=0.5), "b": state(LOADAVG=1, NBPROC=4),
                 "c": state(LOADAVG=0.2, CPUFREQ=3000), "d": state(LOADAVG=0.9)}, rules=rules)
    weights = {n: v.weight for n, v in snap.nodes.items()}
    assert len(set(weights.values())) == 4
    sel = Selector(random.Random(12345))
    sel.install(snap)
    picks = [sel.pick() for _ in range(20000)]
    assert {p.reason for p in picks} == {"weighted"}
    counts = Counter(p.node for p in picks)
    assert chi2(counts, weights) < CHI2_001[3]
    # the same counts are far from a uniform choice: the test can tell them apart
    assert chi2(counts, {n: 1 for n in weights}) > 10 * CHI2_001[3]
    assert sel.pick_counts() == dict(counts)


def test_compensation_fills_nodes_in_turn_then_overflows():
    snap = make({"G": ["a", "b", "c"]},
                {"a": state(NBSESSIONS=0), "b": state(NBSESSIONS=5), "c": state(NBSESSIONS=8)}, rules=[SESSIONS])
    sel = Selector(random.Random(3))
    sel.install(snap)
    picks = [sel.pick("G") for _ in range(17)]
    # each node takes exactly its free room (10 - sessions) before anything overflows
    assert Counter(p.node for p in picks) == {"a": 10, "b": 5, "c": 2}
    assert sel.pending() == {"a": 10, "b": 5, "c": 2}
    assert sel.weight_now("a") == 0.0
    assert sel.pick("G").reason == "overflow"


def test_without_per_session_repeated_picks_do_not_shift_weights():
    rule = Rule("NBSESSIONS", weight=1, capacity=10)
    snap = make({"G": ["a", "b"]}, {"a": state(NBSESSIONS=0), "b": state(NBSESSIONS=9)}, rules=[rule])
    sel = Selector(random.Random(3))
    sel.install(snap)
    counts = Counter(sel.pick().node for _ in range(400))
    assert counts["b"] > 10                     # b keeps its 1/11 share all along
    assert sel.weight_now("a") == snap.nodes["a"].weight


def test_compensation_shifts_distribution():
    rule = Rule("LOADAVG", weight=1, capacity=1.0, per_cpu=True, per_session=0.05)
    states = {"a": state(LOADAVG=0.0, NBPROC=4), "b": state(LOADAVG=0.0, NBPROC=4)}
    sel = Selector(random.Random(5))
    sel.install(make({"G": ["a", "b"]}, states, rules=[rule]))
    for _ in range(20):
        sel.pick()
    share_before = sel.weight_now("a") / (sel.weight_now("a") + sel.weight_now("b"))
    # force many picks onto a via a one-node group sharing the node
    sel2 = Selector(random.Random(5))
    sel2.install(make({"G": ["a", "b"], "A": ["a"]}, states, rules=[rule]))
    for _ in range(40):
        assert sel2.pick("A").node == "a"
    assert sel2.weight_now("a") < sel2.weight_now("b")
    counts = Counter(sel2.pick("G").node for _ in range(20))
    assert counts["b"] > counts["a"]
    assert 0.3 < share_before < 0.7


def test_install_resets_pending_counts():
    snap = make({"G": ["a"]}, {"a": state(NBSESSIONS=0)}, rules=[SESSIONS])
    sel = Selector(random.Random(1))
    sel.install(snap)
    for _ in range(4):
        sel.pick()
    assert sel.pending() == {"a": 4} and sel.weight_now("a") == pytest.approx(0.6)
    sel.install(snap)
    assert sel.pending() == {} and sel.weight_now("a") == pytest.approx(1.0)
    assert sel.pick_counts() == {"a": 4}       # totals survive snapshots


def test_overflow_in_proportion_to_size():
    full = dict(NBSESSIONS=10)
    snap = make({"G": ["s", "m", "l"]},
                {"s": state(**full), "m": state(NBPROC=2, **full), "l": state(NBPROC=4, CPUFREQ=1500, **full)},
                rules=[SESSIONS])
    sel = Selector(random.Random(99))
    sel.install(snap)
    picks = [sel.pick() for _ in range(8000)]
    assert {p.reason for p in picks} == {"overflow"}
    counts = Counter(p.node for p in picks)
    assert chi2(counts, {"s": 1, "m": 2, "l": 6}) < CHI2_001[2]


def test_node_in_two_groups_is_compensated_in_both():
    snap = make({"G1": ["b"], "G2": ["b", "c"]},
                {"b": state(NBSESSIONS=9), "c": state(NBSESSIONS=0)}, rules=[SESSIONS])
    sel = Selector(random.Random(2))
    sel.install(snap)
    assert sel.pick("G1").node == "b"          # b is now full in G2 as well
    picks = [sel.pick("G2") for _ in range(9)]
    assert {(p.node, p.reason) for p in picks} == {("c", "weighted")}
    assert sel.pick_counts() == {"b": 1, "c": 9}


def test_default_group():
    snap = make({"X": ["a"], "Y": ["b"]}, {"a": state(), "b": state()}, default="Y")
    sel = Selector(random.Random(1))
    sel.install(snap)
    assert sel.pick().node == "b" and sel.pick("X").node == "a" and sel.pick().group == "Y"


# --- user affinity ----------------------------------------------------------------

def test_user_goes_back_to_own_server():
    snap = make({"G": ["a", "b", "c"], "H": ["a"]},
                {"a": state(NBSESSIONS=0), "b": state(NBSESSIONS=9, users=["alice"]),
                 "c": state(NBSESSIONS=0, users=["carol"])}, rules=[SESSIONS], drained={"c"})
    sel = Selector(random.Random(1))
    sel.install(snap)
    for _ in range(3):
        p = sel.pick("G", user="alice")
        assert (p.node, p.reason) == ("b", "user")
    assert sel.pending() == {}                 # an existing session: no new load predicted
    assert (sel.pick("G", user="carol").node, sel.pick("G", user="carol").reason) == ("c", "user")  # drained: hers still
    assert sel.pick("H", user="alice").node == "a"             # alice's server is not in H
    assert sel.pick("G", user="nobody").reason == "weighted"
    assert "c" not in {sel.pick("G").node for _ in range(50)}   # no new session goes to the drained one


def test_user_on_down_server_is_not_sent_there():
    snap = make({"G": ["a", "b"]}, {"a": state(), "b": state(users=["alice"])})
    cfg_nodes = {n: Node(name=n, address="http://127.0.0.1:8001", host="127.0.0.1", port=8001) for n in "ab"}
    cfg = ServerConfig(path="t.xml", nodes=cfg_nodes, groups={"G": Group("G", ("a", "b"), True)}, default_group="G")
    ra, rb = NodeRecord("a"), NodeRecord("b")
    record_success(ra, state(), 0.0, 2)
    record_success(rb, state(users=["alice"]), 0.0, 2)
    sel = Selector(random.Random(1))
    sel.install(snap)
    assert sel.pick(user="alice").node == "b"
    for t in (1.0, 2.0):
        record_failure(rb, "timed out", t, 2)
    down = Snapshot.build(cfg, {"a": ra, "b": rb}, now=3.0)
    assert down.nodes["b"].users == {"alice"} and not down.nodes["b"].selectable   # kept for the status page
    sel.install(down)
    assert {sel.pick(user="alice").node for _ in range(20)} == {"a"}


# --- last good -----------------------------------------------------------------------

def test_last_good_is_remembered_across_snapshots():
    sel = Selector(random.Random(1))
    sel.install(make({"G": ["a", "b"]}, {"a": None, "b": state()}))
    assert sel.pick().node == "b"
    sel.install(make({"G": ["a", "b"]}, {"a": None, "b": None}))
    for _ in range(3):
        p = sel.pick()
        assert (p.node, p.reason) == ("b", "last-good")
    assert sel.last_good() == {"G": "b"}


def test_last_good_set_at_install_without_any_pick():
    sel = Selector(random.Random(1))
    sel.install(make({"G": ["a", "b"]}, {"a": state(), "b": state(NBPROC=8)}))
    sel.install(make({"G": ["a", "b"]}, {"a": None, "b": None}))
    assert sel.pick().node == "b"             # the best at the last snapshot where any was good


def test_never_good_group_answers_its_first_node():
    sel = Selector(random.Random(1))
    sel.install(make({"G": ["z", "a"]}, {"z": None, "a": None}))
    p = sel.pick()
    assert (p.node, p.reason) == ("z", "last-good")


def test_unhealthy_and_drained_nodes_are_never_picked():
    rules = [Rule("MEMUSEDPCT", weight=1, capacity=90, critical=98)]
    snap = make({"G": ["a", "b", "c", "d"]},
                {"a": state(MEMUSEDPCT=99), "b": state(MEMUSEDPCT=10), "c": None, "d": state(MEMUSEDPCT=10, GDM=False)},
                rules=rules, requires=[Require("GDM", equals="true")], drained={"b"})
    sel = Selector(random.Random(1))
    sel.install(snap)
    picks = {sel.pick().reason for _ in range(50)}
    assert picks == {"last-good"}
    assert all(not v.selectable for v in snap.nodes.values())


def test_empty_group():
    snap = make({"G": ["a"], "E": []}, {"a": state()})
    sel = Selector(random.Random(1))
    sel.install(snap)
    with pytest.raises(EmptyGroup) as exc:
        sel.pick("E")
    assert isinstance(exc.value, UnknownGroup) and str(exc.value) == "group 'E' has no nodes"


def test_last_good_forgotten_when_node_leaves_group():
    sel = Selector(random.Random(1))
    sel.install(make({"G": ["a", "b"]}, {"a": state(), "b": None}))
    assert sel.pick().node == "a"
    sel.install(make({"G": ["b", "c"]}, {"b": None, "c": None}))
    assert sel.pick().node == "b"


def test_p2c_prefers_the_emptier_of_two():
    rules = [Rule("NBSESSIONS", weight=1, capacity=10)]
    snap = make({"G": ["a", "b"]}, {"a": state(NBSESSIONS=2), "b": state(NBSESSIONS=5)}, rules=rules)
    counts = {}
    for alg in ("weighted", "p2c"):
        sel = Selector(random.Random(4), algorithm=alg)
        sel.install(snap)
        counts[alg] = Counter(sel.pick().node for _ in range(4000))
    # weighted: a gets 8/13; p2c: a unless both draws are b, 1 - (5/13)^2
    assert chi2(counts["weighted"], {"a": 8, "b": 5}) < CHI2_001[1]
    assert chi2(counts["p2c"], {"a": 1 - (5 / 13) ** 2, "b": (5 / 13) ** 2}) < CHI2_001[1]
    with pytest.raises(ValueError):
        Selector(algorithm="fastest")


def test_rebuild_without_poll_keeps_pending_counts():
    """A drain in the middle of a storm must not make the other nodes look empty again."""
    snap = make({"G": ["a", "b", "c"]},
                {"a": state(NBSESSIONS=0), "b": state(NBSESSIONS=5), "c": state(NBSESSIONS=8)}, rules=[SESSIONS])
    sel = Selector(random.Random(3))
    sel.install(snap)
    for _ in range(12):
        sel.pick("G")
    pending, weights = sel.pending(), {n: sel.weight_now(n) for n in "abc"}
    sel.install(snap, refreshed=frozenset())
    assert sel.pending() == pending
    assert {n: sel.weight_now(n) for n in "abc"} == weights
    sel.install(snap, refreshed=frozenset({"a"}))  # a poll answered by a only: b and c keep theirs
    assert "a" not in sel.pending() and sel.pending()["b"] == pending["b"]
    sel.install(snap)  # everything polled: real figures again, counts restart
    assert sel.pending() == {}
