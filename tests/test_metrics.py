"""GET /metrics: parsed with prometheus_client's own parser, offline and from a live lbserver."""

from __future__ import annotations

import http.client
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbserver.dns.report import AliasReport
from lbserver.dns.service import DnsService
from lbserver.core.counters import DurationHistogram
from lbserver.core.sessions import Session
from lbserver.mgmt.aliases import NoAliases
from lbserver.mgmt.metrics import render_metrics
from lbserver.mgmt.peers import NoPeers
from tests.support.cluster import offline_balancer, offline_config, start_agent, start_balancer
from tests.support import wait_until


def parse(text: str) -> dict:
    """{family name: family}; counters are named without ``_total`` by the parser."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, name: str | None = None) -> dict:
    """{tuple of label values: value} of the family's samples called ``name`` (default: the family's)."""
    name = name or family.name
    return {tuple(s.labels.values()): s.value for s in family.samples if s.name == name}


@pytest.mark.unit
def test_duration_histogram_is_cumulative():
    h = DurationHistogram((0.1, 1.0))
    for d in (0.05, 0.1, 0.5, 3.0):
        h.observe(d)
    # a value equal to a bound belongs to that bucket (le = "less or equal")
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.total == pytest.approx(3.65)


@pytest.mark.unit
def test_names_follow_conventions_and_dns_part_is_optional(tmp_path):
    bal = offline_balancer(tmp_path)
    text = render_metrics(bal, NoAliases(), NoPeers()).decode()
    fams = parse(text)
    for name in ("lbserver_node_up", "lbserver_node_weight", "lbserver_poll_duration_seconds",
                 "lbserver_dns_alias_published_addresses", "lbserver_build_info"):
        assert name in fams, name
    assert fams["lbserver_node_picks"].type == "counter"
    assert fams["lbserver_terminal_requests"].type == "counter"
    assert fams["lbserver_dns_updates"].type == "counter"
    assert fams["lbserver_poll_duration_seconds"].type == "histogram"
    # never polled: known nodes, down, no DNS samples
    assert samples(fams["lbserver_node_up"]) == {("xapp1",): 0.0, ("xapp2",): 0.0}
    assert samples(fams["lbserver_dns_alias_published_addresses"]) == {}
    assert samples(fams["lbserver_dns_updates"], "lbserver_dns_updates_total") == {}
    for fam in fams.values():
        assert fam.name.startswith("lbserver_"), fam.name
        if fam.type == "counter":
            assert all(smp.name == fam.name + "_total" for smp in fam.samples), fam.name
        else:
            assert not fam.name.endswith("_total"), fam.name
    bal.terminal_responses[200] = 1
    assert "\nlbserver_terminal_requests_total{code=\"200\"} 1.0\n" in render_metrics(bal, NoAliases(), NoPeers()).decode()

    dns = DnsService(bal)
    dns.reports = [AliasReport(alias="wms-alice", fqdn="wms-alice.example.org.", group="PROD", enabled=True,
                                   result="updated", published=("192.0.2.11", "192.0.2.12"),
                                   published_nodes=("xapp1", "xapp2"), excluded={"xapp3": "down"},
                                   fallback=False)]
    dns.update_counts = {("wms-alice", "updated"): 3, ("wms-alice", "unchanged"): 7}
    bal.terminal_responses.update({200: 5, 404: 1})
    fams = parse(render_metrics(bal, dns, NoPeers()).decode())
    assert samples(fams["lbserver_dns_alias_published_addresses"]) == {("wms-alice",): 2.0}
    assert samples(fams["lbserver_dns_alias_excluded_nodes"]) == {("wms-alice",): 1.0}
    assert samples(fams["lbserver_dns_alias_fallback"]) == {("wms-alice",): 0.0}
    assert samples(fams["lbserver_dns_updates"], "lbserver_dns_updates_total") == {
        ("wms-alice", "updated"): 3.0, ("wms-alice", "unchanged"): 7.0}
    assert samples(fams["lbserver_terminal_requests"], "lbserver_terminal_requests_total") == {
        ("200",): 5.0, ("404",): 1.0}


def _metrics(url: str) -> dict:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(resp.read().decode())


@pytest.mark.daemon
def test_live_metrics_match_status(procs, tmp_path):
    loads = {"xapp1": 20.0, "xapp2": 60.0}
    agents = [start_agent(procs, tmp_path, name, f"127.0.0.{i + 2}", load) for i, (name, load) in enumerate(loads.items())]
    members = [(a.name, a.url) for a in agents] + [("gone", "http://127.0.0.9:9")]
    interval = 0.5
    bal = start_balancer(procs, tmp_path, {"PROD": members},
                         poll=f'interval="{interval}" timeout="0.4" rise="1" fall="1"')
    status = wait_until(lambda: all((s := bal.status())["nodes"][n]["health"] == "up" for n in loads) and s,
                        15, what="agents up")
    fams = _metrics(bal.mgmt_url)

    # health and weights agree with /status (SIMLOAD is fixed, so weights are stable between the two reads)
    assert samples(fams["lbserver_node_up"]) == {("xapp1",): 1.0, ("xapp2",): 1.0, ("gone",): 0.0}
    assert samples(fams["lbserver_node_selectable"])[("gone",)] == 0.0
    weights = samples(fams["lbserver_node_weight"])
    for name in ("xapp1", "xapp2", "gone"):
        assert weights[(name,)] == pytest.approx(status["nodes"][name]["weight"], abs=1e-3)
    assert weights[("xapp1",)] > weights[("xapp2",)] > 0
    variables = samples(fams["lbserver_node_variable"])
    assert variables[("xapp1", "SIMLOAD")] == 20.0 and variables[("xapp2", "SIMLOAD")] == 60.0
    assert variables[("xapp1", "NBPROC")] >= 1
    seen = samples(fams["lbserver_node_last_success_timestamp_seconds"])
    assert set(seen) == {("xapp1",), ("xapp2",)} and abs(seen[("xapp1",)] - time.time()) < 10

    # picks and requests by code grow with terminal requests
    picks_before = sum(samples(fams["lbserver_node_picks"], "lbserver_node_picks_total").values())
    conn = http.client.HTTPConnection("127.0.0.1", bal.port, timeout=5)
    for _ in range(40):
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    conn.request("GET", "/?group=NOPE")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 404
    conn.close()
    fams = _metrics(bal.mgmt_url)
    picks = samples(fams["lbserver_node_picks"], "lbserver_node_picks_total")
    assert sum(picks.values()) == picks_before + 40
    assert picks[("xapp1",)] > 0 and picks[("gone",)] == 0
    codes = samples(fams["lbserver_terminal_requests"], "lbserver_terminal_requests_total")
    assert codes[("200",)] >= 40 and codes[("404",)] >= 1

    # one histogram observation per poll cycle: cycles so far ~ time since the first one / interval
    hist = fams["lbserver_poll_duration_seconds"]
    count = samples(hist, "lbserver_poll_duration_seconds_count")[()]
    buckets = [(s.labels["le"], s.value) for s in hist.samples if s.name.endswith("_bucket")]
    assert buckets[-1] == ("+Inf", count)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert samples(hist, "lbserver_poll_duration_seconds_sum")[()] > 0
    last = samples(fams["lbserver_last_poll_timestamp_seconds"])[()]
    start = samples(fams["lbserver_start_time_seconds"])[()]
    expected = (last - start) / interval + 1
    assert abs(count - expected) <= 2 + 0.1 * expected, (count, expected)
    later = wait_until(lambda: (c := samples(_metrics(bal.mgmt_url)["lbserver_poll_duration_seconds"],
                                             "lbserver_poll_duration_seconds_count")[()]) >= count + 2 and c,
                       10, what="more poll cycles")
    assert later >= count + 2


@pytest.mark.unit
def test_node_lines_are_what_prometheus_client_writes():
    """The per-node families, written directly, against the client's own exposition of the same samples."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from lbserver.core.health import NodeRecord, record_success
    from lbserver.core.selection import Snapshot
    from lbserver.mgmt.metrics import NODE_FAMILIES, _node_exposition

    names = ['plain', 'quo"te', 'back\\slash', 'new\nline', 'never-polled']
    cfg = offline_config({"G": names})
    records = {}
    for i, n in enumerate(names[:-1]):
        records[n] = NodeRecord(n)
        sessions = (Session("bob", "x2go", "disconnected", 1.0), Session("amy", "utmp", "active", 2.0)) if i == 2 \
            else None
        record_success(records[n], {"hostname": n, "agent_version": "t", "sampled_at": 5.0, "users": [],
                                    "sessions": sessions,
                                    "variables": {"NBPROC": 4, "LOADAVG": 0.25 * i, "BIG": 1796057254.532,
                                                  "DRAINED": i == 1, "NAME": "not a number", 'odd"var': -1}},
                       5.0 + i, 1)
    snap = Snapshot.build(cfg, records, drained=frozenset({"plain"}), now=9.0)

    class View:
        snapshot = snap

        def pick_counts(self):
            return {"quo\"te": 7}

    class Reference:
        def collect(self):
            fams = [CounterMetricFamily(name[:-len("_total")], text, labels=["node"]) if kind == "counter"
                    else GaugeMetricFamily(name, text, labels=["node", "variable"] if "variable" in name
                                           else ["node", "state"] if "sessions" in name else ["node"])
                    for name, kind, text in NODE_FAMILIES]
            up, healthy, selectable, drained, weight, variable, seen, picks, sessions = fams
            for n, v in snap.nodes.items():
                up.add_metric([n], 1.0 if v.up else 0.0)
                healthy.add_metric([n], 1.0 if (v.up and v.healthy) else 0.0)
                selectable.add_metric([n], 1.0 if (v.up and v.selectable) else 0.0)
                drained.add_metric([n], 1.0 if v.drained else 0.0)
                weight.add_metric([n], v.weight)
                picks.add_metric([n], View().pick_counts().get(n, 0))
                if v.last_success is not None:
                    seen.add_metric([n], v.last_success)
                for var, value in v.variables.items():
                    if isinstance(value, (int, float)):
                        variable.add_metric([n, var], float(value))
                disconnected = sum(s.state == "disconnected" for s in v.sessions)
                sessions.add_metric([n, "active"], len(v.sessions) - disconnected)
                sessions.add_metric([n, "disconnected"], disconnected)
            yield from fams

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Reference())
    assert _node_exposition(View()) == generate_latest(registry).decode()
    fams = parse(_node_exposition(View()))
    assert samples(fams["lbserver_node_picks"], "lbserver_node_picks_total")[("quo\"te",)] == 7.0
    assert samples(fams["lbserver_node_variable"])[("back\\slash", "odd\"var")] == -1.0
    assert ("never-polled",) not in samples(fams["lbserver_node_last_success_timestamp_seconds"])
    with_sessions = names[2]
    assert samples(fams["lbserver_node_sessions"])[(with_sessions, "disconnected")] == 1.0
    assert samples(fams["lbserver_node_sessions"])[(with_sessions, "active")] == 1.0
