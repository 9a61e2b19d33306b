"""Admin actions without traffic: who may act, the route itself, the drained-state file, history.

Authorisation is tested as pure functions and through
ManagementService.route() on a Balancer built from a config but not
started, so addresses like 192.0.2.1 are plain strings and no socket listens
anywhere but loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading

import pytest

from lbserver.core.balancer import Balancer
from lbserver.core.history import History
from lbserver.mgmt.api import Api
from lbserver.mgmt.auth import TokenFile, admin_allowed, host_allowed, is_loopback, loopback_allowed, read_token
from lbserver.mgmt import http as mgmt_http
from lbserver.mgmt.http import ManagementService
from lbserver.core.drainstate import DrainState
from tests.support.cluster import offline_balancer

pytestmark = pytest.mark.unit

REMOTE = "192.0.2.1"
TOKEN = "s3cret-token-value"


@pytest.mark.parametrize("peer, expected", [
    ("127.0.0.1", True), ("127.9.8.7", True), ("::1", True), ("::ffff:127.0.0.1", True),
    (REMOTE, False), ("::ffff:192.0.2.1", False), ("2001:db8::1", False), ("", False), ("not-an-ip", False),
    ("10.0.0.1", False),
])
def test_is_loopback(peer, expected):
    assert is_loopback(peer) is expected


def test_admin_allowed_from_loopback_without_token():
    assert admin_allowed("127.0.0.1", {}, None)
    assert admin_allowed("::1", {}, TOKEN)
    assert admin_allowed("127.0.0.1", {"origin": "http://127.0.0.1:8009"}, None)
    assert admin_allowed("127.0.0.1", {"origin": "http://localhost:8009"}, None)
    assert admin_allowed("127.0.0.1", {"origin": "http://[::1]:8009"}, None)


def test_browser_pages_from_elsewhere_get_no_loopback_trust():
    # A page of another site (or a DNS-rebound name) open in a browser on this host.
    for origin in ("http://evil.example", "http://evil.example:8009", "null", "http://192.0.2.1:8009"):
        headers = {"origin": origin}
        assert not loopback_allowed("127.0.0.1", headers), origin
        assert not admin_allowed("127.0.0.1", headers, None), origin
        assert not admin_allowed("127.0.0.1", headers, TOKEN), origin
    # ... unless it holds the token, which a foreign page cannot send without a preflight.
    assert admin_allowed("127.0.0.1", {"origin": "http://evil.example", "authorization": f"Bearer {TOKEN}"}, TOKEN)


@pytest.mark.parametrize("headers, token, expected", [
    ({}, None, False),                                            # no token configured, none given
    ({"authorization": f"Bearer {TOKEN}"}, None, False),          # no token configured: no remote admin
    ({}, TOKEN, False),                                           # token configured, none given
    ({"authorization": "Bearer wrong"}, TOKEN, False),
    ({"authorization": f"Bearer {TOKEN}x"}, TOKEN, False),
    ({"authorization": f"Basic {TOKEN}"}, TOKEN, False),
    ({"authorization": f"Bearer {TOKEN}"}, "", False),
    ({"authorization": f"Bearer {TOKEN}"}, TOKEN, True),
    ({"authorization": f"Bearer  {TOKEN} "}, TOKEN, True),
])
def test_admin_allowed_remote(headers, token, expected):
    assert admin_allowed(REMOTE, headers, token) is expected


def test_read_token(tmp_path, caplog):
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\nignored second line\n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="lbserver.mgmt.http"):
        assert read_token(str(path)) == TOKEN
    assert not caplog.records
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="lbserver.mgmt.http"):
        assert read_token(str(path)) == TOKEN
    assert "chmod 600" in caplog.text and TOKEN not in caplog.text
    caplog.clear()
    assert read_token(str(tmp_path / "missing")) is None
    assert "cannot read token file" in caplog.text
    assert read_token(None) is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert read_token(str(empty)) is None


def _route(bal: Balancer, method: str, path: str, peer: str, headers: dict | None = None, query: dict | None = None):
    return asyncio.run(ManagementService(Api(bal, bal)).route(method, path, query or {}, headers or {}, peer))


def test_route_refuses_remote_admin_without_the_right_token(tmp_path):
    bal = offline_balancer(tmp_path, TOKEN)
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        status, _, body = _route(bal, "POST", "/nodes/xapp1/drain", REMOTE, headers)
        assert status == 403, headers
        assert b"loopback" in body and TOKEN.encode() not in body
    # /reload is refused before anything is done (it would signal this process)
    assert _route(bal, "POST", "/reload", REMOTE)[0] == 403
    assert not any(v.drained for v in bal.snapshot.nodes.values())
    assert not bal.snapshot.nodes["xapp1"].drained
    # reads stay open to whoever reaches the port
    status, ctype, body = _route(bal, "GET", "/status", REMOTE)
    assert status == 200 and ctype.startswith("application/json")
    assert json.loads(body)["nodes"]["xapp1"]["drained"] is False


def test_route_accepts_remote_admin_with_the_token(tmp_path):
    bal = offline_balancer(tmp_path, TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    status, _, body = _route(bal, "POST", "/nodes/xapp1/drain", REMOTE, auth)
    assert status == 200, body
    assert json.loads(body) == {"node": "xapp1", "drained": True, "message": "node xapp1 drained"}
    assert bal.snapshot.nodes["xapp1"].drained and not bal.snapshot.nodes["xapp1"].selectable
    assert json.loads((tmp_path / "state/lbserver.state").read_text())["drained"] == ["xapp1"]
    assert json.loads(_route(bal, "POST", "/nodes/xapp1/drain", REMOTE, auth)[2])["message"].endswith("(no change)")
    assert _route(bal, "POST", "/nodes/nope/drain", REMOTE, auth)[0] == 404
    status, _, body = _route(bal, "POST", "/nodes/xapp1/enable", "127.0.0.1")
    assert status == 200 and json.loads(body)["drained"] is False
    assert json.loads((tmp_path / "state/lbserver.state").read_text())["drained"] == []


def test_route_without_token_file_allows_only_loopback(tmp_path):
    bal = offline_balancer(tmp_path, token=None)
    assert _route(bal, "POST", "/nodes/xapp2/drain", REMOTE, {"authorization": f"Bearer {TOKEN}"})[0] == 403
    assert _route(bal, "POST", "/nodes/xapp2/drain", "127.0.0.1", {"origin": "http://evil.example"})[0] == 403
    assert _route(bal, "POST", "/nodes/xapp2/drain", "::1")[0] == 200
    assert {n for n, v in bal.snapshot.nodes.items() if v.drained} == {"xapp2"}


def test_reads_are_rendered_on_a_worker_thread_from_a_copy(tmp_path, monkeypatch):
    bal = offline_balancer(tmp_path, TOKEN)
    api = Api(bal, bal)
    frozen = api.frozen()
    live = {k: v for k, v in api.status().items() if k != "generated_at"}
    assert {k: v for k, v in frozen.status().items() if k != "generated_at"} == live
    assert frozen.metrics() == api.metrics() and frozen.history() == api.history()

    bal.set_drained("xapp1", True)                                   # the balancer moves on ...
    assert frozen.status()["nodes"]["xapp1"]["drained"] is False     # ... the copy does not
    assert api.status()["nodes"]["xapp1"]["drained"] is True

    threads = []
    real = mgmt_http._read
    monkeypatch.setattr(mgmt_http, "_read", lambda *args: threads.append(threading.current_thread()) or real(*args))
    for path in ("/status", "/metrics", "/history", "/"):
        assert _route(bal, "GET", path, "127.0.0.1")[0] == 200
    assert len(threads) == 4 and threading.main_thread() not in threads  # the loop ran on the main thread
    assert json.loads(_route(bal, "GET", "/status", "127.0.0.1")[2])["nodes"]["xapp1"]["drained"] is True
    assert _route(bal, "POST", "/nodes/xapp1/enable", "127.0.0.1")[0] == 200  # actions stay on the loop
    assert len(threads) == 5


@pytest.mark.parametrize("doc", [{}, [], {"a": 1, "b": {}, "c": {"x": {"y": [1, 2]}, "z": None}, "d": ["é", {"q": 2}]},
                                 {"nodes": {f"n{i}": {"weight": i / 3, "users": ["u"]} for i in range(50)}}])
def test_documents_are_json_with_a_line_per_member_and_per_node(doc):
    text = mgmt_http._dumps(doc)
    assert json.loads(text) == doc
    if "nodes" in doc:
        assert len(text.splitlines()) == 2 + 2 + len(doc["nodes"])  # braces, the member's braces, a line per node


def test_route_bad_requests(tmp_path):
    bal = offline_balancer(tmp_path, TOKEN)
    assert _route(bal, "DELETE", "/nodes/xapp1", "127.0.0.1")[0] == 405
    assert _route(bal, "POST", "/nodes/xapp1/explode", "127.0.0.1")[0] == 404
    assert _route(bal, "GET", "/nope", "127.0.0.1")[0] == 404
    assert _route(bal, "GET", "/history", "127.0.0.1", query={"since": ["yesterday"]})[0] == 400


def test_drain_state_survives_reload_and_is_written_atomically(tmp_path):
    path = tmp_path / "sub" / "lbserver.state"
    state = DrainState.load(str(path))
    assert state.nodes == set()
    assert state.set("xapp2", True) and state.set("xapp1", True)
    assert not state.set("xapp1", True)
    assert json.loads(path.read_text())["drained"] == ["xapp1", "xapp2"]
    assert os.listdir(path.parent) == ["lbserver.state"]  # no temporary file left behind
    assert DrainState.load(str(path)).nodes == {"xapp1", "xapp2"}
    assert state.set("xapp1", False)
    assert DrainState.load(str(path)).nodes == {"xapp2"}


def test_drain_state_bad_files(tmp_path, caplog):
    bad = tmp_path / "bad.state"
    for text in ("{not json", '{"drained": "xapp1"}', '{"drained": [1, 2]}'):
        bad.write_text(text)
        caplog.clear()
        assert DrainState.load(str(bad)).nodes == set()
        assert f"ignoring unreadable state file {bad}" in caplog.text
    # a directory that cannot be created: the change is kept in memory and logged
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = DrainState.load(str(blocker / "dir" / "lbserver.state"))
    caplog.clear()
    assert state.set("xapp1", True)
    assert state.nodes == {"xapp1"}
    assert "cannot save state file" in caplog.text


class _View:
    def __init__(self, weight: float, load) -> None:
        self.weight, self.variables, self.selectable = weight, {"LOADAVG": load}, True


class _Snap:
    def __init__(self, **nodes) -> None:
        self.nodes = nodes


def test_history_since_and_window():
    h = History()
    h.add(_Snap(a=_View(1.0, 0.5)), 1000.0, 10)
    h.add(_Snap(a=_View(2.0, 0.6)), 1005.0, 10)          # too soon after the last point: skipped
    h.add(_Snap(a=_View(3.0, "x"), b=_View(4.0, 1)), 1010.0, 10)
    d = h.to_dict()
    assert d["t"] == [1000.0, 1010.0]
    assert d["nodes"]["a"] == {"weight": [1.0, 3.0], "load": [0.5, None], "selectable": [True, True]}
    assert d["nodes"]["b"]["weight"] == [None, 4.0]
    assert h.to_dict(since=1000.0)["t"] == [1010.0]
    assert h.to_dict(since=1010.0) == {"t": [], "nodes": {}}
    copy = h.copy()
    h.add(_Snap(a=_View(5.0, 1)), 1010.0 + 3600.5, 10)
    assert h.to_dict()["t"] == [4610.5]
    assert copy.to_dict()["t"] == [1000.0, 1010.0]  # a copy keeps the points it was taken with


def test_host_header_guards_against_dns_rebinding(tmp_path):
    assert host_allowed("127.0.0.1", {"host": "127.0.0.1:8009"})
    assert host_allowed("127.0.0.1", {"host": "localhost:8009"})
    assert host_allowed("::1", {"host": "[::1]:8009"})
    assert host_allowed("127.0.0.1", {})                        # HTTP/1.0 tools send none
    assert host_allowed("127.0.0.1", {"host": f"{socket.gethostname()}:8009"})  # lbctl --url http://$(hostname):8009
    assert host_allowed("127.0.0.1", {"host": "127.0.1.1:8009"})
    assert not host_allowed("127.0.0.1", {"host": "rebound.example:8009"})
    assert host_allowed("192.0.2.7", {"host": "boot1.example:8009"})  # remote peers are not browsers on this host
    bal = offline_balancer(tmp_path)
    status, _, body = _route(bal, "GET", "/status", "127.0.0.1", {"host": "rebound.example:8009"})
    assert status == 403 and b"loopback" in body
    status, _, _ = _route(bal, "GET", "/status", "127.0.0.1", {"host": "127.0.0.1:8009"})
    assert status == 200


def test_token_file_reread_only_when_it_changes(tmp_path, caplog):
    path = tmp_path / "token"
    cache = TokenFile()
    assert cache.get(str(path)) is None                          # missing: refused, logged once
    assert cache.get(str(path)) is None
    assert caplog.text.count("cannot read token file") == 1
    path.write_text("first\n")
    path.chmod(0o600)
    assert cache.get(str(path)) == "first"
    path.write_text("second-token\n")
    assert cache.get(str(path)) == "second-token"
