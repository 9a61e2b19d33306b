"""The DNS arbiter's pure decision: ranking, num-out, best-hosts, exclusions, fallback."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbserver.dns.decide import NO_ADDRESS, Candidate, decide, publish_count

pytestmark = pytest.mark.unit

MEMBERS = ("wms01", "wms02", "wms03", "wms04")


def cands(**weights):
    """wms01=5.0 -> a healthy candidate of weight 5; None -> dead; negative -> unhealthy with figures."""
    out = {}
    for name, w in weights.items():
        if w is None:
            out[name] = Candidate(name, False, math.nan, ("agent not answering",))
        elif w < 0:
            out[name] = Candidate(name, False, -w, ("MEMUSEDPCT 99 >= critical 98",))
        else:
            out[name] = Candidate(name, True, w, ())
    return out


def test_num_out_leaves_the_worst_out():
    d = decide("a", MEMBERS, cands(wms01=10, wms02=40, wms03=30, wms04=20), num_out=1)
    assert d.published == ("wms02", "wms03", "wms04")
    assert d.ranked == ("wms02", "wms03", "wms04", "wms01")
    assert d.spare == ("wms01",)
    assert not d.fallback and d.excluded == {}


def test_ties_broken_by_name():
    d = decide("a", MEMBERS, cands(wms04=5, wms03=5, wms02=5, wms01=5), num_out=2)
    assert d.published == ("wms01", "wms02")


def test_unhealthy_and_drained_leave_with_reasons():
    c = cands(wms01=10, wms02=None, wms03=-20, wms04=30)
    c["wms04"] = Candidate("wms04", True, 30.0, (), drained=True)
    d = decide("a", MEMBERS, c, num_out=1)
    assert d.published == ("wms01",)  # one good node: at least one published, num-out cannot remove it
    assert d.excluded == {"wms02": "agent not answering", "wms03": "MEMUSEDPCT 99 >= critical 98",
                          "wms04": "drained"}
    assert not d.fallback


def test_missing_candidate_is_excluded():
    d = decide("a", MEMBERS, cands(wms01=1, wms02=2, wms03=3), best_hosts=-1)
    assert d.excluded == {"wms04": "no poll result yet"}
    assert d.published == ("wms03", "wms02", "wms01")


def test_extra_exclusion_overrides_health():
    d = decide("a", MEMBERS, cands(wms01=1, wms02=2, wms03=3, wms04=4), num_out=1,
               extra_exclusions={"wms04": "submission test failed"})
    assert d.excluded == {"wms04": "submission test failed"}
    assert d.published == ("wms03", "wms02")


def test_best_hosts():
    c = cands(wms01=1, wms02=2, wms03=3, wms04=4)
    assert decide("a", MEMBERS, c, best_hosts=2).published == ("wms04", "wms03")
    assert decide("a", MEMBERS, c, best_hosts=10).published == ("wms04", "wms03", "wms02", "wms01")
    assert decide("a", MEMBERS, c, best_hosts=-1).spare == ()


def test_fallback_prefers_answering_then_weight():
    d = decide("a", MEMBERS, cands(wms01=None, wms02=-5, wms03=-9, wms04=None), num_out=1)
    assert d.fallback and d.published == ("wms03",)
    assert set(d.excluded) == set(MEMBERS)


def test_fallback_prefers_drained_over_dead():
    c = cands(wms01=None, wms02=None)
    c["wms03"] = Candidate("wms03", True, 1.0, (), drained=True)
    d = decide("a", ("wms01", "wms02", "wms03"), c, num_out=1)
    assert d.published == ("wms03",) and d.fallback


def test_fallback_keeps_the_currently_published_node():
    c = cands(wms01=-50, wms02=-5, wms03=-9, wms04=None)
    assert decide("a", MEMBERS, c, num_out=1).published == ("wms01",)
    assert decide("a", MEMBERS, c, num_out=1, current=["wms02"]).published == ("wms02",)
    # ...but never prefers a dead published node over one whose agent answers.
    assert decide("a", MEMBERS, c, num_out=1, current=["wms04"]).published == ("wms01",)


def test_fallback_all_dead_still_one():
    d = decide("a", MEMBERS, cands(wms01=None, wms02=None, wms03=None, wms04=None), num_out=3)
    assert d.published == ("wms01",) and d.fallback


def test_node_without_address_is_never_published():
    d = decide("a", ("wms01", "wms02"), cands(wms01=None, wms02=None),
               extra_exclusions={"wms01": f"{NO_ADDRESS}: cannot resolve"})
    assert d.published == ("wms02",)
    d = decide("a", ("wms01",), cands(wms01=5), extra_exclusions={"wms01": f"{NO_ADDRESS}: x"})
    assert d.published == () and d.fallback


def test_empty_group():
    d = decide("a", (), {}, best_hosts=-1)
    assert d.published == () and d.fallback


@pytest.mark.parametrize("good,num_out,best,expected", [
    (0, 1, None, 0), (1, 1, None, 1), (3, 1, None, 2), (3, 2, None, 1), (3, 5, None, 1),
    (3, None, -1, 3), (3, None, 2, 2), (1, None, 2, 1),
])
def test_publish_count(good, num_out, best, expected):
    assert publish_count(good, num_out, best) == expected


@given(st.dictionaries(st.sampled_from(MEMBERS),
                       st.one_of(st.none(), st.floats(-100, 100, allow_nan=False)), min_size=1),
       st.integers(1, 3), st.lists(st.sampled_from(MEMBERS), max_size=2))
def test_never_empty_and_only_members(weights, num_out, current):
    members = tuple(weights)
    d = decide("a", members, cands(**weights), num_out=num_out, current=current)
    assert len(d.published) >= 1
    assert set(d.published) <= set(members)
    good = [m for m in members if weights[m] is not None and weights[m] >= 0]
    if good:
        assert not d.fallback
        assert set(d.published) <= set(good)
        assert len(d.published) == max(1, len(good) - num_out)
        # Every published node is at least as good as every spare one.
        assert min(weights[m] for m in d.published) >= max([weights[m] for m in d.spare], default=-1)
    else:
        assert d.fallback and len(d.published) == 1
