"""The WMS profiles in etc/examples: they load, their patterns fit the gLite daemons, a real lbagent
reports them (queues counted in temp dirs, daemons faked by processes with the daemons' command lines),
and the balancer example weighs what the agent profile reports."""

from __future__ import annotations

import re
import shutil
import subprocess
import xmlrpc.client
from pathlib import Path

import pytest
from lxml import etree

from tests.support import ROOT, free_port, python_cmd, wait_for_port, wait_until
from tests.support.cluster import env_with_root
from common.builtins import BUILTIN_VARIABLES
from lbagent import config as agent_config
from lbserver import config as server_config
from lbserver.config.tsigkey import write_key_file
from lbserver.core.weights import evaluate
from lbserver.tools import siteinfo

EXAMPLES = ROOT / "etc" / "examples"
AGENT_PROFILE = EXAMPLES / "lbaconfig-wms.xml"
SERVER_PROFILE = EXAMPLES / "lbsconfig-wms.xml"
SECRET = "bGJzZWNyZXRsYnNlY3JldGxic2VjcmV0bGJzZWNyZXQ="
IP = "127.0.0.71"

# Command lines of the gLite WMS daemons as ps shows them, and look-alikes that are no daemon.
DAEMONS = {
    "WMPROXY": "/usr/sbin/httpd -f /etc/glite-wms/glite_wms_wmproxy_httpd.conf -k start",
    "WM": "/usr/bin/glite-wms-workload_manager --conf glite_wms.conf --daemon",
    "JC": "/opt/glite/bin/glite-wms-job_controller -c glite_wms.conf",
    "LM": "/usr/bin/glite-wms-log_monitor -c glite_wms.conf",
    "ICE": "/usr/bin/glite-wms-ice --daemon /var/log/wms/ice.log",
    "LBLOGD": "/usr/bin/glite-lb-logd -f /var/glite/log/dglogd.log",
    "LBINTERLOGD": "/usr/bin/glite-lb-interlogd -f /var/glite/log/dglogd.log",
}
LOOK_ALIKES = [
    "tail -f /var/log/wms/glite-wms-workload_manager.log",
    "vi /etc/glite-wms/glite_wms_wmproxy_httpd.conf",
    "/usr/sbin/httpd -k start",
    "/usr/bin/glite-wms-ice-safe --conf glite_wms.conf",
    "less /var/log/glite/glite-lb-logd.log",
    "/etc/init.d/glite-wms-jc start",
]


def _variables(root) -> dict[str, etree._Element]:
    return {v.get("name"): v for v in root.iter("variable")}


@pytest.mark.daemon
def test_agent_profile_passes_check_config():
    res = subprocess.run(python_cmd("lbagent", "--check-config", "-c", str(AGENT_PROFILE)),
                         capture_output=True, text=True, timeout=30, env=env_with_root())
    assert res.returncode == 0, res.stderr
    assert "configuration OK" in res.stdout


@pytest.mark.unit
def test_agent_profile_patterns_match_the_daemons_only():
    cfg = agent_config.load(str(AGENT_PROFILE))
    patterns = {v.name: v.pattern for v in cfg.variables if v.type == "process"}
    assert set(patterns) == set(DAEMONS)
    for name, pattern in patterns.items():
        assert pattern.search(DAEMONS[name]), name
        for other, cmdline in DAEMONS.items():
            assert other == name or not pattern.search(cmdline), (name, other)
        for cmdline in LOOK_ALIKES:
            assert not pattern.search(cmdline), (name, cmdline)
    kinds = {v.name: v.type for v in cfg.variables}
    assert {n for n, t in kinds.items() if t == "count"} == {"WMQUEUE", "JCQUEUE", "ICEQUEUE", "LBQUEUE"}
    assert kinds["SANDBOXDISK"] == "disk"


def _fake_daemon(procs, cmdline: str) -> subprocess.Popen:
    """A process whose command line reads as ``cmdline`` (it is sleep underneath)."""
    return procs.start([cmdline, "300"], executable=shutil.which("sleep"),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _profile_in(tmp_path, port: int):
    """The agent profile with its paths moved under tmp_path/root and listening on loopback."""
    root = etree.parse(str(AGENT_PROFILE)).getroot()
    fsroot = tmp_path / "root"
    agent = root.find("agent")
    agent.set("listen", f"{IP}:{port}")
    agent.set("sample-interval", "0.2")
    agent.set("drain-file", str(tmp_path / "lbagent.drain"))
    agent.set("nologin-file", str(tmp_path / "nologin"))
    queues = {}
    for name, v in _variables(root).items():
        if v.get("path"):
            v.set("path", str(fsroot) + v.get("path"))
            if v.get("type") == "count":
                queues[name] = v.get("path")
            else:
                Path(v.get("path")).mkdir(parents=True)
    cfg = tmp_path / "lbaconfig.xml"
    cfg.write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    return cfg, queues


@pytest.mark.daemon
def test_a_real_agent_reports_the_wms_profile(procs, tmp_path):
    port = free_port(IP)
    cfg, queues = _profile_in(tmp_path, port)
    assert set(queues) == {"WMQUEUE", "JCQUEUE", "ICEQUEUE", "LBQUEUE"}
    # Fill the queues: the jobdirs' new/ subdirectories and the L&B event files.
    expected = {"WMQUEUE": 12, "JCQUEUE": 3, "ICEQUEUE": 0, "LBQUEUE": 5}
    for name, pattern in queues.items():
        directory = Path(pattern).parent
        directory.mkdir(parents=True, exist_ok=True)
        prefix = Path(pattern).name.rstrip("*")
        for i in range(expected[name]):
            (directory / f"{prefix}job{i}").write_text("[ request ]\n")
    wm_new = Path(queues["WMQUEUE"]).parent
    (wm_new / ".lock").write_text("")                        # hidden: not a request
    (wm_new.parent / "old").mkdir()                           # requests taken, beside new/: not counted
    (wm_new.parent / "old" / "done1").write_text("")
    (Path(queues["LBQUEUE"]).parent / "interlogger.sock").write_text("")  # not an event file
    running = {name: _fake_daemon(procs, DAEMONS[name])
               for name in ("WMPROXY", "WM", "JC", "ICE", "LBLOGD", "LBINTERLOGD")}  # LM is down

    log = tmp_path / "agent.log"
    proc = procs.start(python_cmd("lbagent", "-f", "-c", str(cfg)), stderr=open(log, "w"),
                       stdout=subprocess.DEVNULL)
    wait_for_port(IP, port, proc=proc)
    rpc = xmlrpc.client.ServerProxy(f"http://{IP}:{port}/", allow_none=True)

    def variables():
        return rpc.get_state()["variables"]

    v = wait_until(lambda: (lambda v: v if v.get("WMQUEUE") == 12 else None)(variables()), 10,
                   what="the queues counted")
    assert {n: v[n] for n in expected} == expected
    assert {n: v[n] for n in DAEMONS} == {n: n != "LM" for n in DAEMONS}
    assert isinstance(v["SANDBOXDISK"], float) and 0 <= v["SANDBOXDISK"] <= 100
    for builtin in ("LOADAVG", "MEMUSEDPCT", "NBPROC"):
        assert builtin in v

    # The balancer example weighs this reply: LM being down excludes the instance.
    server = _server_config(tmp_path)
    verdict = evaluate(v, server.rules, server.requires)
    assert not verdict.healthy and verdict.reasons == ("require LM == true: got false",)
    lm = _fake_daemon(procs, DAEMONS["LM"])
    v = wait_until(lambda: (lambda v: v if v["LM"] else None)(variables()), 10, what="LM seen running")
    verdict = evaluate(v, server.rules, server.requires)
    assert verdict.healthy and verdict.weight > 0, verdict

    # Queues move; a daemon dies; a queue directory that vanishes makes its variable absent.
    for i in range(30):
        (wm_new / f"more{i}").write_text("")
    wait_until(lambda: variables()["WMQUEUE"] == 42, 10, what="WMQUEUE grown")
    running["WM"].kill()
    running["WM"].wait()
    wait_until(lambda: variables()["WM"] is False, 10, what="WM seen dead")
    shutil.rmtree(Path(queues["JCQUEUE"]).parent)
    wait_until(lambda: "JCQUEUE" not in variables(), 10, what="JCQUEUE absent")
    verdict = evaluate(variables(), server.rules, server.requires)
    assert not verdict.healthy
    assert "require WM == true: got false" in verdict.reasons
    assert "variable JCQUEUE missing from agent reply" in verdict.reasons
    assert proc.poll() is None
    lm.kill()
    text = log.read_text()
    assert text.count("variable JCQUEUE (count") == 1 and "No such file or directory" in text


def _server_config(tmp_path):
    """The balancer example, its key file written to tmp_path (the example's nodes are never contacted)."""
    key = tmp_path / "dns.key"
    if not key.exists():
        write_key_file(str(key), "lbkey", "hmac-sha256", SECRET)
    text = SERVER_PROFILE.read_text().replace('key-file="/etc/mille-xterm/dns.key"', f'key-file="{key}"')
    assert str(key) in text
    path = tmp_path / "lbsconfig-wms.xml"
    path.write_text(text)
    return server_config.load(str(path))


@pytest.mark.daemon
def test_server_profile_checks_and_names_the_agent_profiles_variables(tmp_path):
    cfg = _server_config(tmp_path)
    res = subprocess.run(python_cmd("lbserver", "--check-config", "-c", str(tmp_path / "lbsconfig-wms.xml")),
                         capture_output=True, text=True, timeout=30, env=env_with_root())
    assert res.returncode == 0, res.stdout + res.stderr
    agent = {v.name: v.type for v in agent_config.load(str(AGENT_PROFILE)).variables}
    for rule in cfg.rules:
        assert rule.name in BUILTIN_VARIABLES or rule.name in agent, rule.name
    assert {r.name for r in cfg.rules} >= {"WMQUEUE", "JCQUEUE", "LBQUEUE", "LOADAVG", "MEMUSEDPCT", "SANDBOXDISK"}
    # Every daemon of the agent profile is required running, and nothing else is required.
    assert {r.name: r.equals for r in cfg.requires} == {n: "true" for n, t in agent.items() if t == "process"}
    # Every queue and disk of the agent profile is weighed.
    assert {n for n, t in agent.items() if t in ("count", "disk")} <= {r.name for r in cfg.rules}
    assert {a.name for a in cfg.dns.aliases} == {"wms-alice", "wms-cms"}
    raw = SERVER_PROFILE.read_text()
    assert 'custom="true"' not in raw
    assert all(re.match(r"10\.", cfg.nodes[n].address.split("//")[1]) for n in cfg.nodes)


@pytest.mark.unit
def test_importer_writes_the_server_profiles_rules():
    """lbserver --import-siteinfo and etc/examples/lbsconfig-wms.xml carry the same WMS metric."""
    rules = etree.parse(str(SERVER_PROFILE)).getroot().find("rules")
    in_example = [(e.tag, dict(e.attrib)) for e in rules if isinstance(e.tag, str)]
    assert in_example == [(tag, dict(attrs)) for tag, attrs in siteinfo.WMS_RULES]
    assert (ROOT / siteinfo.WMS_AGENT_PROFILE) == AGENT_PROFILE


@pytest.mark.unit
def test_the_manual_shows_the_same_rules():
    text = (ROOT / "docs" / "dns.md").read_text()
    section = text.split("### The WMS metric", 1)[1]
    block = re.search(r"```xml\n(<rules>.*?</rules>)\n```", section, re.S).group(1)
    shown = [(e.tag, dict(e.attrib)) for e in etree.fromstring(block)]
    assert shown == [(tag, dict(attrs)) for tag, attrs in siteinfo.WMS_RULES]
    assert "etc/examples/lbaconfig-wms.xml" in (ROOT / "docs" / "agent.md").read_text()


@pytest.mark.unit
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.xml")), ids=lambda p: p.name)
def test_every_example_names_what_it_is_for(path):
    text = path.read_text()
    assert text.startswith('<?xml version="1.0"?>\n<!--')
    etree.fromstring(text.encode())  # well-formed (no "--" inside a comment, no stray "<")
