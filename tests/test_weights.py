"""The weight formula and health verdicts, rule by rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbserver.config import Require, Rule
from lbserver.config.expr import parse as parse_expr
from lbserver.core.weights import compensation, evaluate, node_size, rule_lag

pytestmark = pytest.mark.unit

BASE = {"NBPROC": 4, "CPUFREQ": 2000}   # size 8 core-GHz


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("variables, size", [
    ({"NBPROC": 4, "CPUFREQ": 2000}, 8.0),
    ({"NBPROC": 16, "CPUFREQ": 2400.0}, 38.4),
    ({"NBPROC": 2}, 2.0),                      # CPUFREQ missing: 1000 MHz
    ({"NBPROC": 2, "CPUFREQ": 0}, 2.0),        # CPUFREQ 0: 1000 MHz
    ({"CPUFREQ": 3000}, 3.0),                  # NBPROC missing: 1
    ({"NBPROC": "8", "CPUFREQ": "1500"}, 12.0),  # numeric strings from custom commands
    ({"NBPROC": True, "CPUFREQ": "fast"}, 1.0),  # nonsense: the conservative defaults
])
def test_node_size(variables, size):
    assert node_size(variables) == approx(size)


def test_no_rules_weight_is_size():
    v = evaluate(BASE, (), ())
    assert v.healthy and v.weight == approx(8.0) and v.size == approx(8.0) and v.reasons == ()
    assert evaluate({"NBPROC": 16, "CPUFREQ": 2000}, (), ()).weight == approx(32.0)


def test_linear_contribution_scaled_by_size():
    rule = Rule("MEMUSEDPCT", weight=30, capacity=90)
    v = evaluate({**BASE, "MEMUSEDPCT": 45}, [rule], ())
    assert v.healthy and v.weight == approx(8 * 30 * 0.5)


@pytest.mark.parametrize("value, fraction", [(0, 1.0), (-5, 1.0), (90, 0.0), (120, 0.0), (9, 0.9)])
def test_clamp(value, fraction):
    rule = Rule("MEMUSEDPCT", weight=10, capacity=90)
    assert evaluate({**BASE, "MEMUSEDPCT": value}, [rule], ()).weight == approx(8 * 10 * fraction)


def test_per_cpu_divides_by_nbproc():
    rule = Rule("LOADAVG", weight=50, capacity=1.0, per_cpu=True)
    assert evaluate({**BASE, "LOADAVG": 2.0}, [rule], ()).weight == approx(8 * 50 * 0.5)
    plain = Rule("LOADAVG", weight=50, capacity=1.0)
    assert evaluate({**BASE, "LOADAVG": 2.0}, [plain], ()).weight == 0.0


def test_rules_add_up():
    rules = [Rule("LOADAVG", weight=50, capacity=1.0, per_cpu=True), Rule("NBSESSIONS", weight=20, capacity=40)]
    v = evaluate({**BASE, "LOADAVG": 1.0, "NBSESSIONS": 10}, rules, ())
    assert v.weight == approx(8 * (50 * 0.75 + 20 * 0.75))


def test_two_unlike_servers_worked_example():
    # The README's example: the big busy server still outweighs the small idle one.
    rules = [Rule("LOADAVG", weight=50, capacity=1.0, per_cpu=True), Rule("MEMUSEDPCT", weight=30, capacity=90)]
    small = evaluate({"NBPROC": 2, "CPUFREQ": 3000, "LOADAVG": 0.5, "MEMUSEDPCT": 30}, rules, ())
    big = evaluate({"NBPROC": 16, "CPUFREQ": 2000, "LOADAVG": 12.0, "MEMUSEDPCT": 60}, rules, ())
    assert small.weight == approx(6 * (50 * 0.75 + 30 * (2 / 3)))   # 345
    assert big.weight == approx(32 * (50 * 0.25 + 30 * (1 / 3)))    # 720


def test_critical_compares_measured_value():
    rule = Rule("MEMUSEDPCT", weight=30, capacity=90, critical=98)
    assert evaluate({**BASE, "MEMUSEDPCT": 97.9}, [rule], ()).healthy
    v = evaluate({**BASE, "MEMUSEDPCT": 98.5}, [rule], ())
    assert not v.healthy and v.weight == 0.0
    assert v.reasons == ("MEMUSEDPCT 98.5 >= critical 98",)
    assert not evaluate({**BASE, "MEMUSEDPCT": 98}, [rule], ()).healthy  # "at or over"


def test_critical_per_cpu_and_ignores_predicted_sessions():
    rule = Rule("LOADAVG", weight=50, capacity=1.0, per_cpu=True, critical=2.0, per_session=1.0)
    assert not evaluate({**BASE, "LOADAVG": 8.0}, [rule], ()).healthy          # 2.0 per cpu
    assert "LOADAVG per cpu 2 >= critical 2" in evaluate({**BASE, "LOADAVG": 8.0}, [rule], ()).reasons
    assert evaluate({**BASE, "LOADAVG": 7.9}, [rule], ()).healthy
    # a guess of 100 more sessions lowers the weight to 0 but does not exclude the node
    v = evaluate({**BASE, "LOADAVG": 1.0}, [rule], (), extra_sessions=100)
    assert v.healthy and v.weight == 0.0


def test_extra_sessions_use_per_session_before_per_cpu():
    rule = Rule("LOADAVG", weight=50, capacity=1.0, per_cpu=True, per_session=0.5)
    v = evaluate({**BASE, "LOADAVG": 1.0}, [rule], (), extra_sessions=2)
    assert v.weight == approx(8 * 50 * (1 - (1.0 + 2 * 0.5) / 4))
    no_ps = Rule("NBSESSIONS", weight=20, capacity=40)
    assert evaluate({**BASE, "NBSESSIONS": 10}, [no_ps], (), extra_sessions=5).weight == approx(8 * 20 * 0.75)


@pytest.mark.parametrize("variables, reason", [
    (BASE, "variable LOADAVG missing from agent reply"),
    ({**BASE, "LOADAVG": "n/a"}, "variable LOADAVG is not a number: 'n/a'"),
    ({**BASE, "LOADAVG": True}, "variable LOADAVG is not a number: 'true'"),
])
def test_missing_or_non_numeric_rule_variable_is_unhealthy(variables, reason):
    v = evaluate(variables, [Rule("LOADAVG", weight=50, capacity=1.0)], ())
    assert not v.healthy and v.weight == 0.0 and v.reasons == (reason,)


def test_numeric_string_variable_counts():
    v = evaluate({**BASE, "QUEUE": "5"}, [Rule("QUEUE", weight=10, capacity=10)], ())
    assert v.healthy and v.weight == approx(8 * 10 * 0.5)


@pytest.mark.parametrize("value, ok", [(True, True), ("TRUE", True), ("true", True), (False, False),
                                       ("yes", False), (1, False)])
def test_require_equals_bool_as_text(value, ok):
    v = evaluate({**BASE, "GDM": value}, (), [Require("GDM", equals="true")])
    assert v.healthy is ok
    if not ok:
        assert v.reasons[0].startswith("require GDM == true: got ")


def test_require_equals_reason_text():
    v = evaluate({**BASE, "GDM": False}, (), [Require("GDM", equals="true")])
    assert v.reasons == ("require GDM == true: got false",)


@pytest.mark.parametrize("value, ok", [("B12", True), ("b12", True), ("B13", False), (3, False)])
def test_require_equals_strings_case_insensitive(value, ok):
    assert evaluate({**BASE, "ROOM": value}, (), [Require("ROOM", equals="B12")]).healthy is ok


def test_require_equals_numbers_compare_as_numbers():
    assert evaluate({**BASE, "ROOM": 3.0}, (), [Require("ROOM", equals="3")]).healthy
    assert not evaluate({**BASE, "ROOM": 4}, (), [Require("ROOM", equals="3")]).healthy


@pytest.mark.parametrize("value, ok, reason", [
    (5, True, None), (2, True, None), (8, True, None),
    (1.5, False, "require SCRATCH >= 2: got 1.5"),
    (9, False, "require SCRATCH <= 8: got 9"),
    ("lots", False, "require SCRATCH: got 'lots', not a number"),
])
def test_require_min_max(value, ok, reason):
    v = evaluate({**BASE, "SCRATCH": value}, (), [Require("SCRATCH", min=2, max=8)])
    assert v.healthy is ok
    if reason:
        assert v.reasons == (reason,)


def test_require_missing_variable():
    v = evaluate(BASE, (), [Require("GDM", equals="true")])
    assert not v.healthy and v.reasons == ("require GDM: variable GDM missing from agent reply",)


def test_all_reasons_are_reported():
    rules = [Rule("LOADAVG", weight=1, capacity=1), Rule("MEMUSEDPCT", weight=1, capacity=90, critical=98)]
    v = evaluate({**BASE, "MEMUSEDPCT": 99}, rules, [Require("GDM", equals="true")])
    assert len(v.reasons) == 3 and v.size == approx(8.0)


NAMES, CAPS = ("LOADAVG", "MEMUSEDPCT", "NBSESSIONS"), (1.0, 90.0, 40.0)
NODES = given(
    nbproc=st.integers(1, 64),
    values=st.lists(st.floats(0, 200, allow_nan=False), min_size=3, max_size=3),
    per_session=st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0]), min_size=3, max_size=3),
    per_cpu=st.lists(st.booleans(), min_size=3, max_size=3),
    sessions=st.integers(0, 500),
)
"""A node of three rules (weights 10, 20, 30, see :func:`_node`): any figures, per-session rises, per-cpu choices."""


def _node(nbproc: int, values: list[float], per_session: list[float], per_cpu: list[bool]) -> tuple:
    rules = tuple(Rule(name=n, weight=10.0 * (i + 1), capacity=CAPS[i], per_cpu=per_cpu[i],
                       per_session=per_session[i]) for i, n in enumerate(NAMES))
    return rules, {"NBPROC": nbproc, "CPUFREQ": 2400, **dict(zip(NAMES, values))}


@settings(max_examples=300, deadline=None)
@NODES
def test_compensation_matches_evaluate(nbproc, values, per_session, per_cpu, sessions):
    """The precomputed per-pick weight equals a full evaluate() with the same extra sessions."""
    rules, variables = _node(nbproc, values, per_session, per_cpu)
    expected = evaluate(variables, rules, (), extra_sessions=sessions).weight
    assert compensation(variables, rules).weight(sessions) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@settings(max_examples=300, deadline=None)
@NODES
def test_projected_load_is_the_weighted_mean_of_each_rules_fullness(nbproc, values, per_session, per_cpu, sessions):
    """load(k) = Σ w × (value + k × per-session) / capacity / Σ w, unclamped.

    Below capacity it is 1 - weight / (size × Σ w).
    """
    rules, variables = _node(nbproc, values, per_session, per_cpu)
    fullness = [(values[i] + sessions * per_session[i]) / (nbproc if per_cpu[i] else 1) / CAPS[i] for i in range(3)]
    expected = sum(r.weight * f for r, f in zip(rules, fullness)) / sum(r.weight for r in rules)
    comp = compensation(variables, rules)
    assert comp.load(sessions) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    if all(f <= 1.0 for f in fullness):
        size = node_size(variables)
        assert comp.load(sessions) == pytest.approx(1 - comp.weight(sessions) / (size * 60.0), rel=1e-9, abs=1e-9)


def test_projected_load_leaves_out_rules_without_a_usable_capacity():
    rules = (Rule("LOADAVG", 1.0, 1.0, per_session=0.5), Rule("X", 3.0, parse_expr("$MISSING")))
    comp = compensation({"NBPROC": 1, "LOADAVG": 0.5}, rules)
    assert comp.load(0) == pytest.approx(0.5) and comp.load(1) == pytest.approx(1.0) and comp.load(3) == 2.0
    assert compensation({"NBPROC": 1}, ()).load(5) == 0.0           # no rules: nothing to compare


def test_carried_terminals_weigh_on_their_rules_only():
    rules = (Rule("LOADAVG", 1.0, 1.0, per_session=0.1, lag=60), Rule("NBSESSIONS", 1.0, 10.0, per_session=1))
    comp = compensation({"NBPROC": 1, "LOADAVG": 0.2, "NBSESSIONS": 2}, rules)
    assert comp.lags == (60.0, 0.0)
    carried = comp.carrying({60.0: 3.0})
    assert carried.weight(0) == pytest.approx((1 - 0.5) + (1 - 0.2))
    assert carried.load(1) == pytest.approx(((0.2 + 0.4) + (0.3)) / 2)
    assert comp.carrying({}) is comp


def test_rule_lag_defaults_by_variable():
    assert rule_lag(Rule("LOADAVG", 1, 1)) == 60.0
    assert rule_lag(Rule("LOADAVG5", 1, 1)) == 300.0 and rule_lag(Rule("LOADAVG15", 1, 1)) == 900.0
    assert rule_lag(Rule("NBSESSIONS", 1, 1)) == 0.0 and rule_lag(Rule("SIMLOAD", 1, 1)) == 0.0
    assert rule_lag(Rule("LOADAVG", 1, 1, lag=0)) == 0.0 and rule_lag(Rule("NBSESSIONS", 1, 1, lag=30)) == 30.0


def test_state_is_weight_and_next_load():
    rules = (Rule("LOADAVG", 50.0, 1.0, per_cpu=True, per_session=0.1), Rule("MEMUSEDPCT", 30.0, 90.0),
             Rule("NBSESSIONS", 20.0, 10.0, per_cpu=True, per_session=1.0))
    comp = compensation({"NBPROC": 4, "CPUFREQ": 2400, "LOADAVG": 1.0, "MEMUSEDPCT": 40, "NBSESSIONS": 12}, rules)
    carried = comp.carrying({60.0: 7.5})  # a lagging rest moves that term's base
    full = compensation({"NBPROC": 1, "CPUFREQ": 2400, "LOADAVG": 3.0, "MEMUSEDPCT": 40, "NBSESSIONS": 12}, rules)
    for c in (comp, carried, full):  # full: over capacity before any terminal
        for k in [*range(0, 60), 100, 400, 1e6, 2.5]:  # each term free, partly full and full, and the ends between
            weight, load = c.state(k)
            assert weight == pytest.approx(c.weight(k), abs=1e-9) and load == pytest.approx(c.load(k + 1))
            assert weight >= 0.0
