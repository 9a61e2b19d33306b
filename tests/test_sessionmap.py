"""The HAProxy session map's content (lbserver.haproxy.sessionmap): keys, homes, refused names, differences."""

from __future__ import annotations

import time

import pytest

from lbserver.config import Rule
from lbserver.core.sessions import check_sessions
from lbserver.haproxy.sessionmap import (MAX_NAME, addresses, changes, commands, entries, file_text, map_key,
                                         parse_show_map)
from tests.support.doubles import agent_state, snapshot_of

pytestmark = pytest.mark.unit

HOSTILE = ["a b", "a\tb", "bob\nset map x y z", "x;del map f y", "semi;colon", "#comment", 'quo"te', "it's",
           "tab\x00nul", "bell\x07", "\x1b[31mred", "é", "ünïcode", "a" * (MAX_NAME + 1), "", "\\", "dom\\",
           "back\\slash\\", "cr\r", "{brace}", "per%cent"]


def with_sessions(*sessions: tuple[str, str, float], **variables) -> dict:
    """An agent state reporting ``sessions`` as (user, state, since)."""
    raw = [{"user": u, "kind": "x2go", "state": s, "since": t, "info": ""} for u, s, t in sessions]
    state = agent_state(users=sorted({u for u, _, _ in sessions}), **variables)
    state["sessions"] = check_sessions(raw)[0]
    return state


def test_keys_are_lower_case_without_a_domain():
    assert map_key("Alice") == "alice"
    assert map_key("CORP\\Alice") == "alice"
    assert map_key("jean.dupont") == "jean.dupont"
    assert map_key("alice@corp.example") == "alice@corp.example"
    assert map_key("svc$") == "svc$"


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name):
    assert map_key(name) is None


def test_long_names_get_their_truncated_key_unless_another_shares_it():
    got = entries({"christopher": "10.0.0.1", "alice": "10.0.0.2"})
    assert got == {"christopher": "10.0.0.1", "christoph": "10.0.0.1", "alice": "10.0.0.2"}
    got = entries({"christopher": "10.0.0.1", "christophe": "10.0.0.2"})
    assert got == {"christopher": "10.0.0.1", "christophe": "10.0.0.2"}  # "christoph" would be a guess
    # A full name wins over another's truncation.
    assert entries({"christoph": "10.0.0.3", "christopher": "10.0.0.1"})["christoph"] == "10.0.0.3"


def test_names_differing_only_in_case_placed_apart_get_no_entry():
    assert entries({"Alice": "10.0.0.1", "alice": "10.0.0.2", "bob": "10.0.0.3"}) == {"bob": "10.0.0.3"}
    assert entries({"Alice": "10.0.0.1", "CORP\\alice": "10.0.0.1"}) == {"alice": "10.0.0.1"}


def test_homes_follow_the_return_home_rule_in_the_group_only():
    now = time.time()
    snap = snapshot_of(
        {"RDP": ["a", "b"], "OTHER": ["c"]},
        {"a": with_sessions(("alice", "active", now - 10), ("bob", "active", now)),
         "b": with_sessions(("alice", "disconnected", now - 100), ("bad name", "active", now)),
         "c": with_sessions(("carol", "active", now))},
        drained={"b"})
    answer = {"a": "10.0.0.1", "b": "10.0.0.2"}
    homes, refused = addresses(snap, "RDP", answer)
    assert homes == {"alice": "10.0.0.2", "bob": "10.0.0.1"}  # the disconnected session wins, drained or not
    assert refused == ["bad name"]


def test_an_unhealthy_node_is_no_home():
    states = {"a": with_sessions(("alice", "disconnected", 1.0), MEMUSEDPCT=99),
              "b": with_sessions(("alice", "active", 2.0), MEMUSEDPCT=10)}
    critical = [Rule("MEMUSEDPCT", weight=30, capacity=90, critical=98)]
    snap = snapshot_of({"RDP": ["a", "b"]}, states, rules=critical)
    assert not snap.nodes["a"].healthy
    assert addresses(snap, "RDP", {"a": "10.0.0.1", "b": "10.0.0.2"})[0] == {"alice": "10.0.0.2"}


def test_only_the_differences_are_sent():
    old = {"alice": "10.0.0.1", "bob": "10.0.0.2", "carol": "10.0.0.3"}
    new = {"alice": "10.0.0.1", "bob": "10.0.0.4", "dave": "10.0.0.5"}
    diff = changes(old, new)
    assert commands("/m.map", diff) == ["del map /m.map carol", "set map /m.map bob 10.0.0.4",
                                        "add map /m.map dave 10.0.0.5"]
    assert commands("/m.map", changes(new, new)) == []


def test_file_and_show_map_round_trip():
    want = {"bob": "10.0.0.2", "alice": "10.0.0.1"}
    text = file_text(want)
    assert text.splitlines()[1:] == ["alice 10.0.0.1", "bob 10.0.0.2"]
    shown = "".join(f"0x55d0{i:08x} {k} {v}\n" for i, (k, v) in enumerate(want.items()))
    assert parse_show_map(shown.splitlines()) == want
