"""Snapshots, the Fenwick sampler and the Selector's picks."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.doubles import Clock
from tests.support.stats import chi2
from lbserver.config import Require, Rule
from lbserver.core.fenwick import Fenwick
from lbserver.core.health import NodeRecord, record_failure, record_success
from lbserver.core.selection import FORGET_AFTER, MAX_SAMPLE_AGE, EmptyGroup, Selector, Snapshot, UnknownGroup, figures_time
from tests.support.cluster import offline_config
from tests.support.doubles import SESSIONS
from tests.support.doubles import agent_state as state
from tests.support.doubles import snapshot_of as make

pytestmark = pytest.mark.unit

# Chi-square critical values at p = 0.001 by degrees of freedom (standard tables).
CHI2_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}

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
        # one descent for two draws: the very indexes two samples in a row give
        seed = int(u * 1e9)
        again = random.Random(seed)
        assert tree.sample_pair(random.Random(seed)) == (tree.sample(again), tree.sample(again))
    else:
        assert tree.sample(random.Random(0)) is None
        assert tree.sample_pair(random.Random(0)) is None


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

def test_weighted_random_distribution_matches_weights_chi_square():
    rules = [Rule("LOADAVG", weight=10, capacity=1.0, per_cpu=True)]   # no per-session: weights stay put
    snap = make({"G": ["a", "b", "c", "d"]},
                {"a": state(LOADAVG=0.5), "b": state(LOADAVG=1, NBPROC=4),
                 "c": state(LOADAVG=0.2, CPUFREQ=3000), "d": state(LOADAVG=0.9)}, rules=rules)
    weights = {n: v.weight for n, v in snap.nodes.items()}
    assert len(set(weights.values())) == 4
    sel = Selector(random.Random(12345), algorithm="weighted-random")
    sel.install(snap)
    picks = [sel.pick() for _ in range(20000)]
    assert {p.reason for p in picks} == {"weighted"}
    counts = Counter(p.node for p in picks)
    assert chi2(counts, weights) < CHI2_001[3]
    # the same counts are far from a uniform choice: the test can tell them apart
    assert chi2(counts, {n: 1 for n in weights}) > 10 * CHI2_001[3]
    assert sel.pick_counts() == dict(counts)


def two_choices_shares(weights: dict[str, float], loads: dict[str, float]) -> dict[str, float]:
    """Two draws by weight, the lower load kept: P(i) = p_i² + 2 p_i Σ p_j over j with a higher load."""
    total = sum(weights.values())
    p = {n: w / total for n, w in weights.items()}
    return {i: p[i] ** 2 + 2 * p[i] * sum(p[j] for j in p if loads[j] > loads[i]) for i in p}


def test_two_choices_distribution_matches_its_formula_chi_square():
    rules = [Rule("LOADAVG", weight=10, capacity=1.0, per_cpu=True)]
    snap = make({"G": ["a", "b", "c", "d"]},
                {"a": state(LOADAVG=0.5), "b": state(LOADAVG=1, NBPROC=4),
                 "c": state(LOADAVG=0.2, CPUFREQ=3000), "d": state(LOADAVG=0.9)}, rules=rules)
    weights = {n: v.weight for n, v in snap.nodes.items()}
    loads = {"a": 0.5, "b": 0.25, "c": 0.2, "d": 0.9}   # per cpu, over a capacity of 1
    sel = Selector(random.Random(777))
    assert sel.algorithm == "two-choices"                # the default
    sel.install(snap)
    assert {n: sel.projected_load(n) for n in loads} == pytest.approx(loads)
    picks = [sel.pick() for _ in range(20000)]
    assert {p.reason for p in picks} == {"weighted"}
    counts = Counter(p.node for p in picks)
    expected = two_choices_shares(weights, loads)
    assert sum(expected.values()) == pytest.approx(1.0)
    assert chi2(counts, expected) < CHI2_001[3]
    assert chi2(counts, weights) > 10 * CHI2_001[3]      # and it is not weighted random


def test_two_choices_compares_load_relative_to_capacity_not_weight():
    """A big server with much room but fuller for its size loses to a small, emptier one."""
    rules = [Rule("LOADAVG", weight=1, capacity=1.0, per_cpu=True)]
    snap = make({"G": ["small", "big"]},
                {"small": state(LOADAVG=0.8, NBPROC=2), "big": state(LOADAVG=8, NBPROC=16)}, rules=rules)
    assert snap.nodes["big"].weight > 5 * snap.nodes["small"].weight   # 16 x 0.5 against 2 x 0.6
    sel = Selector(random.Random(8))
    sel.install(snap)
    assert sel.projected_load("small") == pytest.approx(0.4) and sel.projected_load("big") == pytest.approx(0.5)
    counts = Counter(sel.pick().node for _ in range(4000))
    p_small = snap.nodes["small"].weight / (snap.nodes["small"].weight + snap.nodes["big"].weight)
    # small whenever it is drawn at all: 1 - (1 - p)^2
    assert chi2(counts, {"small": 1 - (1 - p_small) ** 2, "big": (1 - p_small) ** 2}) < CHI2_001[1]


def test_projected_load_counts_the_next_terminal():
    """Candidates compare as they would be with this terminal: a small server's share of one session is bigger."""
    rule = Rule("NBSESSIONS", weight=1, capacity=10, per_cpu=True, per_session=1)
    snap = make({"G": ["small", "big"]},
                {"small": state(NBSESSIONS=10, NBPROC=2), "big": state(NBSESSIONS=80, NBPROC=16)}, rules=[rule])
    sel = Selector(random.Random(1))
    sel.install(snap)
    assert sel.projected_load("small") == sel.projected_load("big") == pytest.approx(0.5)
    assert sel.projected_load("small", 1) == pytest.approx(0.55)
    assert sel.projected_load("big", 1) == pytest.approx(0.50625)
    picks = Counter(sel.pick().node for _ in range(16))
    assert picks["big"] > picks["small"]


@pytest.mark.parametrize("algorithm", ["two-choices", "weighted-random"])
def test_compensation_fills_nodes_in_turn_then_overflows(algorithm):
    snap = make({"G": ["a", "b", "c"]},
                {"a": state(NBSESSIONS=0), "b": state(NBSESSIONS=5), "c": state(NBSESSIONS=8)}, rules=[SESSIONS])
    sel = Selector(random.Random(3), algorithm=algorithm)
    sel.install(snap)
    picks = [sel.pick("G") for _ in range(17)]
    # each node takes exactly its free room (10 - sessions) before anything overflows
    assert Counter(p.node for p in picks) == {"a": 10, "b": 5, "c": 2}
    assert sel.pending() == {"a": 10, "b": 5, "c": 2}
    assert sel.weight_now("a") == 0.0
    assert sel.pick("G").reason == "overflow"


def test_two_choices_levels_a_storm_like_water():
    """0/10/20/30/35 of 40 and 150 logins: every server ends near 49, the level water-filling reaches."""
    rule = Rule("NBSESSIONS", weight=100, capacity=40, per_session=1)
    start = {"a": 0, "b": 10, "c": 20, "d": 30, "e": 35}
    worst = {}
    for algorithm in ("two-choices", "weighted-random"):
        figures = []
        for seed in range(40):
            sel = Selector(random.Random(seed), algorithm=algorithm)
            sel.install(make({"G": list(start)}, {n: state(NBSESSIONS=v) for n, v in start.items()}, rules=[rule]))
            sent = Counter(sel.pick().node for _ in range(150))
            figures.append(max(start[n] + sent[n] for n in start) / 49)
        worst[algorithm] = sum(figures) / len(figures)
    assert worst["two-choices"] <= 1.03 < worst["weighted-random"]


def test_overflow_two_choices_keeps_filling_the_emptiest():
    """Once all are full, two nodes drawn alike, the lower projected load wins: the overflow stays level."""
    full = {"a": 10, "b": 12, "c": 15}
    spread = {}
    for algorithm in ("two-choices", "weighted-random"):
        spreads = []
        for seed in range(50):
            sel = Selector(random.Random(seed), algorithm=algorithm)
            sel.install(make({"G": list(full)}, {n: state(NBSESSIONS=v) for n, v in full.items()}, rules=[SESSIONS]))
            picks = [sel.pick() for _ in range(300)]
            assert {p.reason for p in picks} == {"overflow"}
            counts = Counter(p.node for p in picks)
            final = [full[n] + counts[n] for n in full]
            spreads.append(max(final) - min(final))
        spread[algorithm] = sum(spreads) / len(spreads)
    # weighted-random spreads the overflow by size (equal here), keeping the first differences and adding noise
    assert spread["two-choices"] < 2.5 and spread["weighted-random"] > 5


def test_without_per_session_repeated_picks_do_not_shift_weights():
    rule = Rule("NBSESSIONS", weight=1, capacity=10)
    snap = make({"G": ["a", "b"]}, {"a": state(NBSESSIONS=0), "b": state(NBSESSIONS=9)}, rules=[rule])
    sel = Selector(random.Random(3), algorithm="weighted-random")
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


def test_figures_that_show_the_picks_end_their_count():
    """Sessions show at once: figures sampled after the picks end their count, not a rebuild of the same figures."""
    clock = Clock(10.0)
    sel = Selector(random.Random(1), clock=clock)
    sel.install(make({"G": ["a"]}, {"a": state(NBSESSIONS=0)}, rules=[SESSIONS], at=5.0))
    for _ in range(4):
        sel.pick()
    assert sel.pending() == {"a": 4} and sel.weight_now("a") == pytest.approx(0.6)
    sel.install(make({"G": ["a"]}, {"a": state(NBSESSIONS=0)}, rules=[SESSIONS], at=5.0))   # the same figures
    assert sel.pending() == {"a": 4} and sel.weight_now("a") == pytest.approx(0.6)
    clock.now = 21.0
    sel.install(make({"G": ["a"]}, {"a": state(NBSESSIONS=4)}, rules=[SESSIONS], at=20.0))  # they show them
    assert sel.pending() == {} and sel.carried() == {} and sel.weight_now("a") == pytest.approx(0.6)
    assert sel.pick_counts() == {"a": 4}       # totals survive snapshots


def test_picks_after_the_sample_keep_counting_past_the_poll():
    """The agent sampled at 20, the poll came back at 22: a pick made at 21 is not in those figures."""
    clock = Clock(10.0)
    sel = Selector(random.Random(1), clock=clock)
    sel.install(make({"G": ["a"]}, {"a": state(NBSESSIONS=0)}, rules=[SESSIONS], at=5.0))
    sel.pick()
    clock.now = 21.0
    sel.pick()
    clock.now = 22.0
    snap = make({"G": ["a"]}, {"a": state(NBSESSIONS=1)}, rules=[SESSIONS], at=20.0)
    sel.install(snap)
    assert sel.pending() == {"a": 1} and sel.weight_now("a") == pytest.approx(0.8)


def test_a_lagging_load_average_keeps_what_it_does_not_show_yet():
    """LOADAVG shows a new session as its one-minute average: 1 - exp(-t/60) of it, t after the pick."""
    rule = Rule("LOADAVG", weight=1, capacity=1.0, per_cpu=True, per_session=0.25)   # lag: 60 s by default
    clock = Clock(1.0)
    sel = Selector(random.Random(1), clock=clock)
    sel.install(make({"G": ["a"]}, {"a": state(LOADAVG=0.0, NBPROC=4)}, rules=[rule], at=0.0))
    for _ in range(8):
        sel.pick()                                             # sent at t=1: +2.0 expected in time
    assert sel.weight_now("a") == pytest.approx(4 * (1 - 2.0 / 4))
    shown = 2.0 * (1 - math.exp(-30 / 60))                     # what the average shows 30 s later
    clock.now = 32.0
    sel.install(make({"G": ["a"]}, {"a": state(LOADAVG=shown, NBPROC=4)}, rules=[rule], at=31.0))
    assert sel.pending() == {}
    assert sel.carried() == {"a": {60.0: pytest.approx(8 * math.exp(-30 / 60))}}
    # the weight sees the whole of it: what the figures show plus what they do not yet
    assert sel.weight_now("a") == pytest.approx(4 * (1 - 2.0 / 4))
    # figures 60 s later show still more, and the rest keeps fading
    clock.now = 92.0
    shown = 2.0 * (1 - math.exp(-90 / 60))
    sel.install(make({"G": ["a"]}, {"a": state(LOADAVG=shown, NBPROC=4)}, rules=[rule], at=91.0))
    assert sel.carried()["a"][60.0] == pytest.approx(8 * math.exp(-90 / 60))
    assert sel.weight_now("a") == pytest.approx(4 * (1 - 2.0 / 4))
    # an explicit lag of 0 says the figures show it at once: the count ends at the next figures
    now_rule = Rule("LOADAVG", weight=1, capacity=1.0, per_cpu=True, per_session=0.25, lag=0)
    sel.install(make({"G": ["a"]}, {"a": state(LOADAVG=shown, NBPROC=4)}, rules=[now_rule], at=91.0))
    assert sel.carried() == {} and sel.weight_now("a") == pytest.approx(4 * (1 - shown / 4))


def test_only_the_lagging_rules_carry_the_rest():
    rules = [Rule("LOADAVG", weight=1, capacity=1.0, per_session=0.1), SESSIONS]
    clock = Clock(1.0)
    sel = Selector(random.Random(1), clock=clock)
    sel.install(make({"G": ["a"]}, {"a": state(LOADAVG=0.0, NBSESSIONS=0)}, rules=rules, at=0.0))
    for _ in range(5):
        sel.pick()
    clock.now = 62.0
    # at 61: sessions show all 5, the load average 1 - 1/e of them
    sel.install(make({"G": ["a"]}, {"a": state(LOADAVG=0.5 * (1 - math.exp(-1)), NBSESSIONS=5)}, rules=rules,
                     at=61.0))
    assert sel.weight_now("a") == pytest.approx((1 - 0.5) + (1 - 0.5))
    assert sel.projected_load("a") == pytest.approx(0.5)


def test_peer_picks_follow_the_same_rule():
    clock = Clock(10.0)
    sel = Selector(random.Random(1), clock=clock)
    sel.install(make({"G": ["a", "b"]}, {"a": state(NBSESSIONS=0), "b": state(NBSESSIONS=0)},
                     rules=[SESSIONS], at=5.0))
    assert sel.add_pending("a", 3) and not sel.add_pending("nope")
    assert sel.pending() == {"a": 3} and sel.weight_now("a") == pytest.approx(0.7)
    assert sel.pick_counts() == {}
    clock.now = 31.0
    sel.install(make({"G": ["a", "b"]}, {"a": state(NBSESSIONS=3), "b": state(NBSESSIONS=0)},
                     rules=[SESSIONS], at=30.0))
    assert sel.pending() == {} and sel.weight_now("a") == pytest.approx(0.7)


def test_terminals_no_figures_show_are_forgotten_after_an_hour():
    clock = Clock(10.0)
    sel = Selector(random.Random(1), clock=clock)
    snap = make({"G": ["a"]}, {"a": state(NBSESSIONS=0)}, rules=[SESSIONS], at=5.0)
    sel.install(snap)
    for _ in range(3):
        sel.pick()
    clock.now = 10.0 + FORGET_AFTER - 1
    sel.install(snap)                         # the agent's figures never got newer (a failing poll)
    assert sel.pending() == {"a": 3}
    clock.now = 10.0 + FORGET_AFTER + 1
    sel.install(snap)
    assert sel.pending() == {} and sel.weight_now("a") == pytest.approx(1.0)


def test_figures_time_is_the_agents_sample_when_plausible():
    rec = NodeRecord("a")
    assert figures_time(rec) is None
    record_success(rec, {**state(), "sampled_at": 95.0}, 100.0, 2)
    assert figures_time(rec) == 95.0
    for odd in (100.5, 100.0 - MAX_SAMPLE_AGE - 1):      # a clock ahead, or far behind
        record_success(rec, {**state(), "sampled_at": odd}, 100.0, 2)
        assert figures_time(rec) == 100.0


def test_unknown_algorithm_and_change():
    with pytest.raises(ValueError):
        Selector(algorithm="fastest")
    sel = Selector(random.Random(1), algorithm="weighted-random")
    with pytest.raises(ValueError):
        sel.algorithm = "p2c"
    sel.algorithm = "two-choices"
    assert sel.algorithm == "two-choices"


def test_overflow_in_proportion_to_size():
    full = dict(NBSESSIONS=10)
    snap = make({"G": ["s", "m", "l"]},
                {"s": state(**full), "m": state(NBPROC=2, **full), "l": state(NBPROC=4, CPUFREQ=1500, **full)},
                rules=[SESSIONS])
    sel = Selector(random.Random(99), algorithm="weighted-random")
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
    cfg = offline_config({"G": ["a", "b"]})
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


def test_rebuild_without_poll_keeps_pending_counts():
    """A drain in the middle of a storm must not make the other nodes look empty again."""
    clock = Clock(10.0)
    states = {"a": state(NBSESSIONS=0), "b": state(NBSESSIONS=5), "c": state(NBSESSIONS=8)}
    sel = Selector(random.Random(3), clock=clock)
    sel.install(make({"G": ["a", "b", "c"]}, states, rules=[SESSIONS], at=5.0))
    for _ in range(12):
        sel.pick("G")
    pending, weights = sel.pending(), {n: sel.weight_now(n) for n in "abc"}
    sel.install(make({"G": ["a", "b", "c"]}, states, rules=[SESSIONS], at=5.0, drained={"c"}))
    assert sel.pending() == pending
    assert {n: sel.weight_now(n) for n in "ab"} == {n: weights[n] for n in "ab"}
    # a poll answered by a only: b and c keep their old figures, and so their counts
    clock.now = 20.0
    records = {}
    for n, sampled in (("a", 19.0), ("b", 5.0), ("c", 5.0)):
        records[n] = NodeRecord(n)
        figures = state(NBSESSIONS=pending["a"]) if n == "a" else states[n]
        record_success(records[n], {**figures, "sampled_at": sampled}, sampled, 2)
    cfg = offline_config({"G": ["a", "b", "c"]}, rules=(SESSIONS,))
    sel.install(Snapshot.build(cfg, records, now=20.0))
    assert "a" not in sel.pending() and sel.pending()["b"] == pending["b"]
    assert {n: sel.weight_now(n) for n in "abc"} == pytest.approx(weights)


def test_the_balancer_passes_its_algorithm_and_a_reload_changes_it(tmp_path):
    from lbserver.core.balancer import Balancer

    cfg = offline_config({"G": ["a"]}, state_file=str(tmp_path / "state"), algorithm="weighted-random")
    bal = Balancer(cfg)
    assert bal._selector.algorithm == "weighted-random"
    bal.apply_config(dataclasses.replace(cfg, algorithm="two-choices"))
    assert bal._selector.algorithm == "two-choices"
