"""Regional balancing: a balancer whose group's nodes come from another lbserver's management service."""

from __future__ import annotations

import pytest

from lbserver import config as configmod
from lbserver.config import Group
from lbserver.core.poller import PollError
from lbserver.core.remote import group_nodes
from tests.support.cluster import Balancer, lbctl, server_xml, start_agent, start_balancer, stop
from tests.support import free_port, python_cmd, wait_for_port

SITE = Group(name="REGION", nodes=(), source="http://127.0.0.1:9", remote_group="WMS")


def _doc(**nodes) -> dict:
    return {"groups": {"WMS": {"nodes": list(nodes)}}, "nodes": nodes}


def _node(up=True, **kw) -> dict:
    base = {"address": "http://127.0.0.2:8001", "ip": "127.0.0.2", "up": up, "variables": {"NBPROC": 2},
            "users": [], "drained_by": [], "why": ""}
    return {**base, **kw}


@pytest.mark.unit
def test_a_site_document_becomes_nodes():
    got = group_nodes(SITE, _doc(a=_node(), b=_node(up=False, why="agent down: refused"),
                                 c=_node(drained_by=["admin"]), d=_node(address="not a url"),
                                 e=_node(variables={"X": [1]})), now=5.0)
    by = {r.node.name: r for r in got}
    assert set(by) == {"a", "b", "c", "e"}                              # d: no agent URL, left out
    assert by["a"].state["variables"] == {"NBPROC": 2} and by["a"].node.answer_ip == "127.0.0.2"
    assert by["b"].state is None and by["b"].error == "down at http://127.0.0.1:9: agent down: refused"
    assert by["c"].state["variables"]["DRAINED"] is True                # drained at the site: at its source here
    assert by["e"].state is None and "invalid site reply" in by["e"].error
    with pytest.raises(PollError, match="has no group 'WMS'"):
        group_nodes(SITE, {"groups": {}, "nodes": {}})


@pytest.mark.unit
def test_a_site_node_without_a_port_gets_the_port_of_its_scheme():
    """As a <node address> would: 8001 for http, 443 for https."""
    got = group_nodes(SITE, _doc(plain=_node(address="http://127.0.0.2"), tls=_node(address="https://127.0.0.3"),
                                 given=_node(address="https://127.0.0.4:9443"), bad=_node(address="https://h:x")),
                      now=5.0)
    assert {r.node.name: (r.node.host, r.node.port) for r in got} == {
        "plain": ("127.0.0.2", 8001), "tls": ("127.0.0.3", 443), "given": ("127.0.0.4", 9443)}


@pytest.mark.parametrize("attrs, message", [
    ('from="ftp://site:8009"', "expected the URL of another lbserver"),
    ('from="http://site:8009" token-file="/nonexistent/token"', "token-file"),
])
@pytest.mark.unit
def test_bad_remote_groups_are_refused(tmp_path, attrs, message):
    path = tmp_path / "l.xml"
    path.write_text(f'<lbsconfig><nodes><group name="R" {attrs}/></nodes></lbsconfig>')
    with pytest.raises(configmod.ConfigError, match=message):
        configmod.load(str(path))
    path.write_text('<lbsconfig><nodes><group name="R" from="http://site:8009">'
                    '<node name="a" address="http://10.0.0.1:8001"/></group></nodes></lbsconfig>')
    with pytest.raises(configmod.ConfigError, match="has no <node>"):
        configmod.load(str(path))


@pytest.mark.daemon
def test_a_regional_balancer_answers_from_a_site_and_follows_it(procs, tmp_path):
    site_dir, region_dir = tmp_path / "site", tmp_path / "region"
    site_dir.mkdir()
    region_dir.mkdir()
    agents = [start_agent(procs, site_dir, name, f"127.0.0.{i + 2}", load)
              for i, (name, load) in enumerate((("wms1", 10), ("wms2", 50)))]
    site = start_balancer(procs, site_dir, {"WMS": [(a.name, a.url) for a in agents]},
                          poll='interval="0.3" timeout="0.25" rise="1" fall="1"')
    site.wait_health("wms1", "up")
    port, mgmt = free_port(), free_port()
    region = Balancer(region_dir / "lbsconfig.xml", port, mgmt)
    text = server_xml(port, mgmt, {"PLACEHOLDER": [("x", "http://127.0.0.1:9")]}, region_dir,
                      poll='interval="0.3" timeout="0.25" rise="1" fall="2"')
    start, end = text.index("<nodes>"), text.index("</nodes>")
    region.config.write_text(text[:start] + f'<nodes><group name="REGION" default="true" from="{site.mgmt_url}" '
                             'remote-group="WMS"/></nodes>' + text[end + len("</nodes>"):])
    region.proc = procs.start(python_cmd("lbserver", "-f", "-c", str(region.config)))
    wait_for_port("127.0.0.1", port, timeout=20, proc=region.proc)
    status = region.wait_health("wms2", "up")
    assert status["groups"]["REGION"]["nodes"] == ["wms1", "wms2"]
    assert status["nodes"]["wms1"]["variables"]["SIMLOAD"] == 10     # the agent's own figures, via the site
    assert {region.ask() for _ in range(60)} == {"wms1", "wms2"}
    assert status["nodes"]["wms1"]["weight"] > status["nodes"]["wms2"]["weight"]  # weighed by the region's rules

    stop(agents[1].proc)                                   # a node goes down at the site ...
    status = region.wait_health("wms2", "down", timeout=15)
    assert "down at http://127.0.0.1" in status["nodes"]["wms2"]["why"]
    assert {region.ask() for _ in range(30)} == {"wms1"}

    assert lbctl(site.mgmt_url, "drain", "wms1").returncode == 0   # ... a node is drained at the site
    status = region.wait_health("wms1", "drained", timeout=15)
    assert "drained at the source" in status["nodes"]["wms1"]["why"]

    stop(site.proc)                                        # the site balancer is gone: down after fall polls
    status = region.wait_health("wms1", "down", timeout=15)
    assert "site balancer" in status["nodes"]["wms1"]["why"]
