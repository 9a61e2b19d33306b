"""The agent-check replies (pure): each node state, the weight percentages, the question's framing and junk."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbserver.core.selection import NodeView, Snapshot
from lbserver.haproxy.access import LOOPBACK, effective_allow, is_allowed
from lbserver.haproxy.reply import (MAX_LINE, Question, Replies, clean, line_end, parse_question, percent,
                                    reply)

pytestmark = pytest.mark.unit


def view(name: str, weight: float = 10.0, size: float = 1.0, healthy: bool = True, drained_by=(),
         drain_reason: str = "", reasons=(), up: bool | None = True) -> NodeView:
    return NodeView(name=name, healthy=healthy, weight=weight if healthy else 0.0, size=size,
                    reasons=tuple(reasons), drained=bool(drained_by), drained_by=tuple(drained_by),
                    drain_reason=drain_reason, up=up)


def snap(*views: NodeView, groups: dict[str, tuple[str, ...]] | None = None) -> Snapshot:
    nodes = {v.name: v for v in views}
    groups = groups or {"PROD": tuple(nodes)}
    return Snapshot(nodes, groups, next(iter(groups)), 0.0)


def ask(snapshot: Snapshot, line: bytes) -> str:
    out = reply(snapshot, line)
    assert out.endswith(b"\n") and out.count(b"\n") == 1 and b"\r" not in out
    return out.decode("ascii")[:-1]


def test_each_node_state_gets_its_reply():
    s = snap(view("a", 80), view("b", 40), view("c", 20),
             view("d", 50, drained_by=("admin",)),
             view("e", 0, healthy=False, reasons=("agent down: connection refused",), up=False),
             view("f", 0, healthy=False, reasons=("MEMUSEDPCT 99 >= critical 98",)),
             view("g", 30, drained_by=("agent",), drain_reason="kernel update"),
             view("h", 0, healthy=False, reasons=("not polled yet",), up=None))
    assert ask(s, b"a\n") == "up ready 100%"
    assert ask(s, b"b\n") == "up ready 50%"
    assert ask(s, b"c\n") == "up ready 25%"
    assert ask(s, b"d\n") == "up drain #drained by admin"
    assert ask(s, b"e\n") == "down #agent down: connection refused"
    assert ask(s, b"f\n") == "down #MEMUSEDPCT 99 >= critical 98"
    assert ask(s, b"g\n") == "up drain #drained at the source (kernel update)"
    assert ask(s, b"h\n") == "down #not polled yet"
    assert ask(s, b"zz\n") == "down #unknown node zz"
    assert ask(s, b"\n") == "down #no node name received (agent-send names the node)"


def test_drained_by_both_and_drained_while_unhealthy():
    s = snap(view("a", 10), view("b", 10, drained_by=("admin", "agent"), drain_reason="nologin"),
             view("c", 0, healthy=False, drained_by=("admin",), reasons=("agent down: timed out",), up=False))
    assert ask(s, b"b\n") == "up drain #drained by admin and at the source (nologin)"
    # Down wins: HAProxy must not send even the users its stick table remembers to a broken server.
    assert ask(s, b"c\n") == "down #agent down: timed out"


def test_percentages_keep_the_balancers_proportions():
    weights = {"a": 73.4, "b": 51.0, "c": 12.2, "d": 99.9}
    s = snap(*(view(n, w) for n, w in weights.items()))
    got = {n: int(ask(s, n.encode() + b"\n").split()[2].rstrip("%")) for n in weights}
    for n, w in weights.items():
        assert abs(got[n] - 100 * w / 99.9) <= 0.5 + 1e-9, (n, got)


def test_a_selectable_node_never_gets_zero_and_drained_nodes_do_not_set_the_scale():
    s = snap(view("a", 100), view("b", 0.1), view("c", 0.0), view("big", 1000, drained_by=("admin",)),
             view("sick", 0, healthy=False, reasons=("x",)))
    assert ask(s, b"a\n") == "up ready 100%"  # the drained heavier node is no yardstick
    assert ask(s, b"b\n") == "up ready 1%"
    assert ask(s, b"c\n") == "up ready 1%"   # 0 % would drain it in HAProxy


def test_all_at_capacity_spreads_by_size_like_the_overflow_rule():
    s = snap(view("small", 0.0, size=1.0), view("big", 0.0, size=4.0), view("mid", 0.0, size=2.0))
    assert [ask(s, n + b"\n") for n in (b"small", b"big", b"mid")] == \
        ["up ready 25%", "up ready 100%", "up ready 50%"]


def test_a_named_group_is_the_scale():
    s = snap(view("a", 80), view("b", 40), view("x", 8), view("y", 2),
             groups={"PROD": ("a", "b", "x"), "LAB": ("x", "y")})
    assert ask(s, b"x\n") == "up ready 10%"          # over every node
    assert ask(s, b"x PROD\n") == "up ready 10%"
    assert ask(s, b"x LAB\n") == "up ready 100%"      # over LAB only
    assert ask(s, b"y LAB\n") == "up ready 25%"
    assert ask(s, b"a LAB\n") == "down #node a is not in group LAB"
    assert ask(s, b"a NOPE\n") == "down #unknown group NOPE"


@pytest.mark.parametrize("data,question", [
    (b"xapp1\n", Question("xapp1", None)),
    (b"xapp1\r\n", Question("xapp1", None)),
    (b"xapp1\\n", Question("xapp1", None)),          # agent-send 'xapp1\n' (single quotes): no line end at all
    (b"xapp1\\r\\n", Question("xapp1", None)),
    (b"xapp1\\", Question("xapp1", None)),            # the same cut by the read timeout
    (b"xapp1", Question("xapp1", None)),
    (b"  xapp1 \t PROD  \n", Question("xapp1", "PROD")),
    (b"xapp1 PROD extra\n", Question("xapp1", "PROD")),
    (b"xapp1\nxapp2\n", Question("xapp1", None)),
    (b"", Question("", None)),
    (b"\\n", Question("", None)),
    (b"\xff\xfe\n", Question("\ufffd\ufffd", None)),
])
def test_parse_question(data, question):
    assert parse_question(data) == question


@pytest.mark.parametrize("data,end", [
    (b"", -1), (b"xapp", -1), (b"xapp1\n", 5), (b"xapp1\r\n", 5), (b"a\rb\n", 1), (b"xapp1\\n", 7),
    (b"xapp1\\", -1), (b"x\\ny", -1),
])
def test_line_end(data, end):
    assert line_end(data) == end


def test_unknown_names_are_cleaned_and_cut():
    s = snap(view("a"))
    assert ask(s, b"\x1b[31mred\x00\n") == "down #unknown node ?[31mred?"
    long = ask(s, b"n" * 1000)
    assert long == "down #unknown node " + "n" * 64
    assert ask(s, "x\u00e9t\u00e9\n".encode()) == "down #unknown node x?t?"


def test_reasons_are_one_line_of_ascii():
    s = snap(view("a", healthy=False, reasons=("agent down: bad\r\nreply\x00", "\u00e9" * 500)))
    text = ask(s, b"a\n")
    assert text.startswith("down #agent down: bad??reply?; ???")
    assert len(text) <= len("down #") + 160


def test_percent_bounds():
    assert percent(0, 0) == 100
    assert percent(0, 10) == 1
    assert percent(10, 10) == 100
    assert percent(20, 10) == 100
    assert percent(4.95, 10) == 50
    assert clean("a\tb\nc  d") == "a?b?c d"


def test_replies_are_cached_per_snapshot_for_known_names_only():
    s = snap(view("a", 10), view("b", 5))
    r = Replies(s)
    first = r.answer(Question("b", None))
    assert r.answer(Question("b", None)) is first
    for i in range(10000):  # junk names never fill the cache
        r.answer(Question(f"junk{i}", None))
    assert len(r._cache) == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MAX_LINE + 50))
def test_any_bytes_get_one_well_formed_line(data):
    s = snap(view("a", 10), view("b", 5, drained_by=("admin",)), view("c", healthy=False, reasons=("x",)))
    text = ask(s, data)
    assert text.split(" ", 1)[0] in ("up", "down")
    assert all(" " <= c <= "~" for c in text)


def test_access_list():
    assert effective_allow(()) == LOOPBACK
    assert is_allowed("127.0.0.1", LOOPBACK) and is_allowed("127.9.9.9", LOOPBACK)
    assert is_allowed("::1", LOOPBACK) and is_allowed("::ffff:127.0.0.1", LOOPBACK)
    assert not is_allowed("10.0.0.1", LOOPBACK)
    import ipaddress
    nets = effective_allow((ipaddress.ip_network("10.0.0.0/24"),))
    assert is_allowed("10.0.0.7", nets) and is_allowed("::ffff:10.0.0.7", nets)
    assert not is_allowed("127.0.0.1", nets) and not is_allowed("10.0.1.1", nets)
    assert not is_allowed("not-an-address", nets) and not is_allowed("", nets)
