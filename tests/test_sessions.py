"""Sessions: an agent's ``sessions`` checked and parsed, the return-home rule, the session limit (in process)."""

from __future__ import annotations

import dataclasses
import random
import time
import xmlrpc.client
from collections import Counter

import pytest

from lbserver.config import Rule
from lbserver.core import rpcreply
from lbserver.core.health import NodeRecord, record_success, validate_state
from lbserver.core.sessions import (MAX_SESSIONS, Home, PendingHomes, Session, check_sessions, return_home,
                                    session_count)
from lbserver.core.selection import Selector, Snapshot
from lbserver.mgmt.status import why
from lbserver.peers.message import BadMessage, Message, decode, encode, split_homes
from tests.support.cluster import offline_config
from tests.support.doubles import Clock

pytestmark = pytest.mark.unit

# Weight follows free sessions (room for 100); a node beyond 150 is unhealthy.
RULES = (Rule("NBSESSIONS", weight=1, capacity=100, critical=150),)


def session(user: str, state: str = "active", since: float = 100.0, kind: str = "utmp") -> dict:
    return {"user": user, "kind": kind, "state": state, "since": since, "info": ""}


def reply(sessions: list | None = None, users: list[str] | None = None, **variables) -> dict:
    doc = {"hostname": "h", "agent_version": "t", "sampled_at": 50.0,
           "variables": {"NBPROC": 1, "CPUFREQ": 1000, "NBSESSIONS": 0, **variables},
           "users": users if users is not None else sorted({s["user"] for s in sessions or ()})}
    if sessions is not None:
        doc["sessions"] = sessions
    return doc


def build(states: dict[str, dict | None], groups: dict[str, list[str]] | None = None, limits: dict | None = None,
          drained=frozenset(), at: float = 50.0) -> Snapshot:
    """A snapshot of nodes answering ``states`` (None: down), with ``max-sessions`` from ``limits``."""
    groups = groups or {"g": list(states)}
    cfg = offline_config(groups, nodes=sorted(states), rules=RULES)
    nodes = {n: dataclasses.replace(node, max_sessions=(limits or {}).get(n)) for n, node in cfg.nodes.items()}
    cfg = dataclasses.replace(cfg, nodes=nodes)
    records = {}
    for n, s in states.items():
        rec = records[n] = NodeRecord(n)
        if s is None:
            rec.up, rec.last_error = False, "connection refused"
        else:
            record_success(rec, validate_state({**s, "sampled_at": at}), at, 1)
    return Snapshot.build(cfg, records, drained=frozenset(drained), now=at)


def selector(snap: Snapshot, algorithm: str = "two-choices", clock: Clock | None = None) -> Selector:
    sel = Selector(random.Random(7), algorithm, clock=clock or Clock(60.0))
    sel.install(snap)
    return sel


# -- the agent's reply --------------------------------------------------------


def test_sessions_are_checked_and_kept():
    state = validate_state(reply([session("ann", "disconnected", 10.5, "x2go"), session("bob")]))
    assert state["sessions"] == (Session("ann", "x2go", "disconnected", 10.5), Session("bob", "utmp", "active", 100.0))
    assert state["sessions_error"] is None


def test_bad_session_entries_are_left_out_and_named_the_node_kept():
    raw = [session("ann"), "nonsense", {**session("bob"), "state": "gone"}, {**session("cy"), "since": "soon"},
           {**session("dee"), "user": 7}, {**session("eve"), "info": "i" * 5000}, session("fay", "disconnected")]
    state = validate_state(reply(raw, users=["ann"]))
    assert [s.user for s in state["sessions"]] == ["ann", "fay"]
    error = state["sessions_error"]
    assert error.startswith("5 bad session entries left out: sessions[1]: expected a struct, got str")
    assert "sessions[2]: state: expected active or disconnected, got 'gone'" in error
    assert "sessions[3]: since: expected a number" in error and error.endswith("and 2 more")
    # The node stays up and selectable, its error says what was left out.
    snap = build({"a": reply(raw, users=["ann"])})
    assert snap.nodes["a"].selectable and snap.nodes["a"].error == error


@pytest.mark.parametrize("bad, words", [("a string", "expected an array, got str"),
                                        ({"user": "x"}, "expected an array, got dict"),
                                        ([session("x")] * (MAX_SESSIONS + 1), "10001 entries")])
def test_sessions_that_are_not_an_array_or_too_many_refuse_the_reply(bad, words):
    with pytest.raises(ValueError, match=f"sessions: {words}"):
        validate_state(reply(bad, users=[]))


def test_a_hostile_reply_is_judged_quickly_and_its_error_stays_short():
    raw = [session(f"u{i}") for i in range(MAX_SESSIONS - 3)]
    raw += [{**session("x" * 100_000)}, {"user": 5, "kind": [], "state": {}, "since": 1e400}, 12]
    body = xmlrpc.client.dumps((reply(raw, users=[]),), methodresponse=True).encode()
    started = time.perf_counter()
    state = validate_state(rpcreply.loads(body))
    elapsed = time.perf_counter() - started
    assert len(state["sessions"]) == MAX_SESSIONS - 3
    assert state["sessions_error"].startswith("3 bad session entries left out: sessions[9997]: user: a string of "
                                              "100000 characters")
    assert len(state["sessions_error"]) < 400
    assert elapsed < 2.0, elapsed


def test_the_fast_parser_reads_sessions_as_the_reference_does():
    doc = reply([session("ann", "disconnected", 1796057254.532, "x2go"), session("bob", since=3)])
    doc["sessions"][0]["info"] = "ann-50-1796057254_stDMATE_dp24 x2go 1 disconnected"
    body = xmlrpc.client.dumps((doc,), methodresponse=True).encode()
    fast = rpcreply.loads(body)  # the fast path answers: no NotPlain
    (reference,), _ = xmlrpc.client.loads(body)
    assert fast == reference == doc
    assert validate_state(fast) == validate_state(reference)


def test_session_count_is_the_sessions_else_nbsessions_else_the_users():
    assert session_count(validate_state(reply([session("a"), session("a", "disconnected")], NBSESSIONS=9))) == 2
    assert session_count(validate_state(reply(None, users=["a", "b"], NBSESSIONS=5))) == 5
    older = reply(None, users=["a", "b"])
    del older["variables"]["NBSESSIONS"]
    assert session_count(validate_state(older)) == 2
    assert session_count(None) == 0


def test_an_older_agent_has_one_active_session_per_user():
    snap = build({"a": reply(None, users=["ann", "bob"])})
    assert snap.homes("ann") == (Home("a", "active", None),)
    assert snap.nodes_with_user("bob") == ("a",)


# -- the rule -------------------------------------------------------------------


def everywhere(node: str) -> bool:
    return True


def test_a_disconnected_session_wins_the_most_recent_first():
    homes = [Home("a", "active", 900.0), Home("b", "disconnected", 100.0), Home("c", "disconnected", 200.0)]
    assert return_home(homes, everywhere) == "c"
    assert return_home(homes, lambda n: n != "c") == "b"
    assert return_home(homes, lambda n: n == "a") == "a"
    assert return_home(homes, lambda n: False) is None
    assert return_home([], everywhere) is None


def test_among_active_sessions_the_most_recent_then_known_times_then_the_preference():
    assert return_home([Home("a", "active", 1.0), Home("b", "active", 2.0)], everywhere) == "b"
    assert return_home([Home("a", "active", None), Home("b", "active", 1.0)], everywhere) == "b"
    unknown = [Home("a", "active", None), Home("b", "active", None)]
    assert return_home(unknown, everywhere, lambda n: (n == "a",)) == "a"
    assert return_home(unknown, everywhere) == "b"  # the same answer on every balancer


# -- the terminal port's picks --------------------------------------------------


def two_nodes(ann_on_small: dict, **small) -> dict:
    return {"big": reply([], NBSESSIONS=0), "small": reply([ann_on_small], **{"NBSESSIONS": 90, **small})}


def test_a_user_goes_back_to_his_disconnected_session_on_the_less_weighted_node():
    snap = build(two_nodes(session("ann", "disconnected")))
    assert snap.nodes["big"].weight > 5 * snap.nodes["small"].weight
    sel = selector(snap)
    assert sel.pick("g", "ann")[:2] == ("small", "user")
    assert not sel.pick("g", "ann").new_session


def test_a_disconnected_session_beats_a_newer_active_one():
    snap = build({"big": reply([session("ann", "active", 500.0)]),
                  "small": reply([session("ann", "disconnected", 100.0)], NBSESSIONS=90)})
    assert selector(snap).pick("g", "ann").node == "small"


def test_a_drained_node_still_takes_its_returning_user_but_no_one_new():
    snap = build(two_nodes(session("ann", "disconnected")), drained={"small"})
    sel = selector(snap)
    assert sel.pick("g", "ann")[:2] == ("small", "user")
    assert {sel.pick("g", f"new{i}").node for i in range(50)} == {"big"}


def test_an_unhealthy_or_down_node_is_no_home():
    unhealthy = build(two_nodes(session("ann", "disconnected"), NBSESSIONS=200))  # beyond its capacity
    assert not unhealthy.nodes["small"].healthy
    assert selector(unhealthy).pick("g", "ann")[:2] == ("big", "weighted")
    down = build({"big": reply([]), "small": None})
    assert selector(down).pick("g", "ann").node == "big"


def test_a_home_outside_the_group_does_not_count():
    snap = build({"a": reply([]), "b": reply([session("ann", "disconnected")])}, groups={"g": ["a"], "h": ["b"]})
    assert selector(snap).pick("g", "ann")[:2] == ("a", "weighted")


@pytest.mark.parametrize("algorithm", ["two-choices", "weighted-random"])
def test_a_node_at_its_limit_takes_no_new_session_but_its_returning_user(algorithm):
    snap = build({"big": reply([session("ann", "disconnected"), session("bob")]), "small": reply([], NBSESSIONS=50)},
                 limits={"big": 2})
    sel = selector(snap, algorithm)
    assert Counter(sel.pick("g", f"new{i}").node for i in range(200)) == {"small": 200}
    assert sel.pick("g", "ann")[:2] == ("big", "user")
    assert why(snap.nodes["big"], sel.sessions_now("big")) == "at its session limit 2/2"
    assert why(snap.nodes["small"], sel.sessions_now("small")) == ""


@pytest.mark.parametrize("algorithm", ["two-choices", "weighted-random"])
def test_picks_count_towards_the_limit_until_the_figures_show_them(algorithm):
    clock = Clock(60.0)
    snap = build({"big": reply([]), "small": reply([], NBSESSIONS=50)}, limits={"big": 3})
    sel = selector(snap, algorithm, clock)
    picks = Counter(sel.pick("g").node for _ in range(100))
    assert picks["big"] == 3 and sel.sessions_now("big") == 3
    # New figures sampled after the picks, showing the three sessions: still full.
    clock.now = 70.0
    sel.install(build({"big": reply([session(u) for u in "abc"]), "small": reply([], NBSESSIONS=50)},
                      limits={"big": 3}, at=65.0))
    assert {sel.pick("g").node for _ in range(50)} == {"small"}
    # One session ended: one more fits.
    clock.now = 80.0
    sel.install(build({"big": reply([session(u) for u in "ab"]), "small": reply([], NBSESSIONS=50)},
                      limits={"big": 3}, at=75.0))
    assert Counter(sel.pick("g").node for _ in range(50))["big"] == 1


@pytest.mark.parametrize("algorithm", ["two-choices", "weighted-random"])
def test_in_an_overflow_the_nodes_at_their_limit_are_passed_over(algorithm):
    # Both at capacity by their load (weight 0), one of them at its session limit too.
    snap = build({"a": reply([session("x")], NBSESSIONS=100), "b": reply([], NBSESSIONS=100)}, limits={"a": 1})
    sel = selector(snap, algorithm)
    assert {sel.pick("g")[:2] for _ in range(50)} == {("b", "overflow")}


@pytest.mark.parametrize("algorithm", ["two-choices", "weighted-random"])
def test_with_every_node_at_its_limit_a_terminal_still_gets_an_overflow_answer(algorithm):
    snap = build({"a": reply([session("x")]), "b": reply([session("y")])}, limits={"a": 1, "b": 1})
    sel = selector(snap, algorithm)
    picks = Counter(sel.pick("g")[:2] for _ in range(200))
    assert set(picks) == {("a", "overflow"), ("b", "overflow")}
    assert sel.pick("g", "x")[:2] == ("a", "user")


def test_a_user_sent_for_a_new_session_goes_there_again_until_the_figures_can_show_it():
    clock = Clock(60.0)
    snap = build({"a": reply([]), "b": reply([])})
    sel = selector(snap, clock=clock)
    first = sel.pick("g", "ann")
    assert first.reason == "weighted"
    assert {sel.pick("g", "ann")[:2] for _ in range(20)} == {(first.node, "user")}
    # Figures sampled before the pick cannot show it: still home.
    sel.install(build({"a": reply([]), "b": reply([])}, at=59.0))
    assert sel.pick("g", "ann")[:2] == (first.node, "user")
    # Figures sampled after, without his session (the login never happened): no longer.
    clock.now = 70.0
    sel.install(build({"a": reply([]), "b": reply([])}, at=65.0))
    assert Counter(sel.pick("g", "ann").reason for _ in range(20))["weighted"] >= 1


def test_a_home_from_a_peer_is_followed():
    sel = selector(build({"a": reply([]), "b": reply([], NBSESSIONS=90)}))
    assert sel.add_home("ann", "b") and not sel.add_home("ann", "nowhere")
    assert sel.pick("g", "ann")[:2] == ("b", "user")


def test_pending_homes_are_bounded_and_settled():
    homes = PendingHomes(limit=3)
    for i, user in enumerate("abcd"):
        homes.add(user, "n", float(i))
    assert homes.get("a") is None and len(homes) == 3
    homes.settle(lambda n: 2.0)  # figures sampled at 2.0 show what was sent at 1.0 and 2.0
    assert homes.get("d") == Home("n", "active", 3.0) and len(homes) == 1
    homes.settle(lambda n: {}[n])  # the node is gone
    assert len(homes) == 0


# -- peers ------------------------------------------------------------------------


def test_homes_travel_between_peers_and_a_message_without_them_still_reads():
    msg = Message("boot", 1, 10.0, picks={"a": 2}, homes={"ann": "a", "bob": "a"})
    assert decode(encode(msg, b"s"), b"s").homes == {"ann": "a", "bob": "a"}
    older = Message("boot", 2, 10.0, picks={"a": 1})
    assert b"homes" not in encode(older, None) and decode(encode(older, None), None).homes == {}
    many = {f"user{i:05}": f"node{i % 7}" for i in range(5000)}
    chunks = split_homes(many)
    assert len(chunks) > 1 and {k: v for c in chunks for k, v in c.items()} == many
    for c in chunks:
        encode(Message("boot", 3, 10.0, homes=c), None)  # each fits one datagram


def test_malformed_homes_refuse_the_message():
    body = b'{"id":"x","seq":1,"ts":1,"homes":{"ann":7}}'
    with pytest.raises(BadMessage, match="malformed"):
        decode(b"LBP1" + bytes(32) + body, None)


def test_pending_homes_keep_no_overlong_name_and_forget_the_oldest_past_their_bound():
    pending = PendingHomes(limit=2)
    pending.add("x" * 256, "a", 1.0)
    assert pending.get("x" * 256) is None and len(pending) == 0
    for i, user in enumerate(("u1", "u2", "u3")):
        pending.add(user, "a", float(i))
    assert pending.get("u1") is None and pending.get("u3").node == "a" and len(pending) == 2
