"""The X2Go broker's protocol, its failure limit, its session choice and the load-checker answers (in-process)."""

from __future__ import annotations

import json

import pytest

from lbserver.config import X2goProfile
from lbserver.core.selection import NodeView
from lbserver.core.sessions import Session
from lbserver.x2go.broker import (BadRequest, Placement, answer, frontend_of, parse_form, profile_fields)
from lbserver.x2go.farm import x2go_session
from lbserver.x2go.guard import FailureLimit
from lbserver.x2go.loadchecker import UNREACHABLE, load_factor

pytestmark = pytest.mark.unit

LAB = X2goProfile(name="Lab desktop", group="LAB", command="xfce")
LINE = "4242|alice-51-1700000100_stDxfce_dp24|51|n1|S|2023-11-14T22:15:00|c|10.0.0.9|1|2|t|alice|60|3|4|5"


def test_frontends_by_path():
    assert [frontend_of(p) for p in ("/plain/", "/json", "/plain/inifile/", "/", "/uccs/", "/plainx/")] == \
        ["plain", "json", "plain", None, None, None]


def test_forms_as_the_clients_send_them():
    # X2Go Client: sid; Python X2Go: profile-id; sid wins when both are given, as in x2gobroker.
    f = parse_form("plain", b"task=selectsession&sid=Lab+desktop&user=alice&password=&authid=")
    assert (f.task, f.profile_id, f.user, f.login, f.has_password) == ("selectsession", "Lab desktop", "alice",
                                                                        "alice", False)
    f = parse_form("json", b"task=selectsession&profile-id=Lab%20desktop&user=bob&password=s%26cret&login=b2")
    assert (f.profile_id, f.login, f.password, f.has_password) == ("Lab desktop", "b2", "s&cret", True)
    assert "s&cret" not in repr(f)
    assert parse_form("json", b"").task == ""


@pytest.mark.parametrize("body, words", [
    (b"\xff\xfe", "not a URL-encoded form"),
    (b"task=a&task=b", "given twice"),
    (b"user=" + b"a" * 5000, "longer than"),
    (b"user=al%0Aice", "control character"),
    (b"&".join(b"f%d=1" % i for i in range(40)), "not a URL-encoded form"),
])
def test_bad_forms_are_refused_saying_why(body, words):
    with pytest.raises(BadRequest, match=words):
        parse_form("plain", body)


def test_profile_fields_as_x2gobroker_lists_them():
    fields = profile_fields(LAB, "alice", ["n1"])
    assert list(fields)[:3] == ["name", "host", "command"]
    assert fields["command"] == "XFCE" and fields["rootless"] is False  # a desktop, as x2gobroker makes it
    assert fields["user"] == "alice" and fields["host"] == ["n1"] and "status" not in fields
    app = profile_fields(X2goProfile(name="Term", group="LAB", command="xterm", user="shared"), "alice", ["n1", "n2"])
    assert app["command"] == "xterm" and app["rootless"] is True and app["user"] == "shared"
    assert app["host"] == ["n1", "n2"]


def _select(placement):
    return lambda pid: (placement, 22) if pid == "Lab desktop" else None


def test_plain_replies_parse_as_x2go_client_parses_them():
    profiles = {"Lab desktop": profile_fields(LAB, "alice", ["n1"])}
    out = answer(parse_form("plain", b"task=listsessions&user=alice"), lambda: profiles, _select(None)).body.decode()
    assert out.startswith("Access granted\nSTART_USER_SESSIONS\n\n[Lab desktop]\nname=Lab desktop\nhost=n1\n")
    ini = out.split("START_USER_SESSIONS\n")[1].split("END_USER_SESSIONS\n")[0]
    assert "rootless=0\n" in ini and "applications=TERMINAL,WWWBROWSER,MAILCLIENT,OFFICE\n" in ini
    reply = answer(parse_form("plain", b"task=selectsession&sid=Lab+desktop"), dict, _select(Placement("n1", LINE)))
    text = reply.body.decode()
    # X2Go Client: the text after SERVER: up to the line end, split at ':'; SESSION_INFO: lines to resume.
    server = text.split("SERVER:")[1].split("\n")[0].split(":")
    assert server == ["n1", "22"]
    assert text.split("SESSION_INFO:")[1].strip().split("\n") == [LINE]
    new = answer(parse_form("plain", b"task=selectsession&sid=Lab+desktop"), dict, _select(Placement("n2")))
    assert new.body == b"Access granted\nSERVER:n2:22\n"


def test_json_replies_parse_as_python_x2go_parses_them():
    profiles = {"Lab desktop": profile_fields(LAB, "alice", ["n1"])}
    reply = answer(parse_form("json", b"task=listsessions&user=alice"), lambda: profiles, _select(None))
    assert reply.content_type.startswith("text/json")
    doc = json.loads(reply.body)
    assert doc["task"] == "listprofiles" and doc["profiles"]["Lab desktop"]["host"] == ["n1"]
    doc = json.loads(answer(parse_form("json", b"task=selectsession&profile-id=Lab+desktop"), dict,
                            _select(Placement("n1", LINE))).body)
    assert doc["selected_session"] == {"server": "n1", "port": "22", "session_info": LINE}
    assert doc["auth-status"] == "Access granted"


def test_a_suspended_x2go_session_wins_then_the_most_recent():
    s = [Session("alice", "x2go", "active", 300.0, "R-line"), Session("alice", "x2go", "disconnected", 100.0, "S-old"),
         Session("alice", "x2go", "disconnected", 200.0, "S-new"), Session("alice", "utmp", "disconnected", 900.0, ""),
         Session("bob", "x2go", "disconnected", 999.0, "bob")]
    assert x2go_session(tuple(s), "alice").info == "S-new"
    assert x2go_session(tuple(s[:1]), "alice").info == "R-line"
    assert x2go_session(tuple(s[3:4]), "alice") is None


def test_wrong_passwords_are_limited_per_source_within_the_window():
    g = FailureLimit(3, window=60.0, max_sources=2)
    for t in (0.0, 1.0, 2.0):
        assert not g.blocked("10.0.0.1", t)
        g.fail("10.0.0.1", t)
    assert g.blocked("10.0.0.1", 3.0) and not g.blocked("10.0.0.2", 3.0)
    assert not g.blocked("10.0.0.1", 60.5)  # the first failure left the window
    g.fail("10.0.0.2", 70.0)
    g.fail("10.0.0.3", 70.0)
    assert len(g) <= 2  # bounded: the oldest source is forgotten


def test_load_factors_follow_the_weight_and_refuse_what_takes_no_new_session():
    up = NodeView(name="n1", healthy=True, weight=0.75, size=1.0)
    assert load_factor(up, 0.75, 0) == "76" and load_factor(up, 0.0, 0) == "1"
    assert load_factor(NodeView(name="n1", healthy=True, weight=1.0, size=1.0, drained=True), 1.0, 0) == UNREACHABLE
    assert load_factor(NodeView(name="n1", healthy=False, weight=0.0, size=1.0), 0.0, 0) == UNREACHABLE
    full = NodeView(name="n1", healthy=True, weight=1.0, size=1.0, max_sessions=2)
    assert load_factor(full, 1.0, 2, "LOAD-UNAVAILABLE") == "LOAD-UNAVAILABLE"
    assert load_factor(None, 0.0, 0) == UNREACHABLE
