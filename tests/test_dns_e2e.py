"""The DNS arbiter end to end: real lbagents, a real lbserver, a real BIND and SMTP server."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.cluster import server_xml, start_agent, start_balancer, stop
from tests.support import ROOT, free_port, python_cmd, wait_until

pytestmark = pytest.mark.system


def dns_element(named, smtp, alias_attrs: str = 'num-out="1"', lease: str = 'lease-time="60"') -> str:
    # A lease longer than each test: its renewals (zone changes of their own) never blur "nothing was sent".
    return (f'<dns server="127.0.0.1" port="{named.port}" zone="{named.zone}" ttl="60" timeout="3" {lease} '
            f'key-file="{named.key_file}" contact="admin@lbtest.example" smtp="127.0.0.1:{smtp.port}">'
            f'<alias name="wms" group="PROD" {alias_attrs}/></dns>')


def test_daemon_publishes_best_and_follows_failures(procs, tmp_path, named_server, smtp_server):
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 40, 70))]
    bal = start_balancer(procs, tmp_path, {"PROD": [(a.name, a.url) for a in agents]},
                         extra=dns_element(named_server, smtp_server))
    # all but num-out=1: the most loaded server (xapp3) is left out
    wait_until(lambda: set(named_server.dig("wms")) == {"127.0.0.2", "127.0.0.3"}, 20, what="first publish")
    alias = wait_until(lambda: bal.status()["aliases"], 10, what="alias in /status")[0]
    assert alias["alias"] == "wms" and set(alias["published"]) == {"127.0.0.2", "127.0.0.3"}
    serial = named_server.soa_serial()

    # an agent dies: its node leaves the alias, one mail says so
    stop(agents[0].proc)
    wait_until(lambda: named_server.dig("wms") == ["127.0.0.3"], 20, what="xapp1 withdrawn")
    mails = smtp_server.wait_count(1)
    body = mails[0].get_payload(decode=True).decode()
    assert "xapp1" in body and mails[0]["To"] == "admin@lbtest.example"
    assert named_server.soa_serial() > serial

    # every agent dead: the alias keeps one address, never empty
    for a in agents[1:]:
        stop(a.proc)
    wait_until(lambda: bal.status()["nodes"]["xapp3"]["health"] == "down", 15, what="all down")
    wait_until(lambda: (s := bal.status()["aliases"]) and s[0]["fallback"], 15, what="fallback reported")
    assert len(named_server.dig("wms")) == 1
    count = len(smtp_server.messages)
    serial = named_server.soa_serial()
    # later cycles with nothing new: no update sent, no further mail
    cycles = bal.status()["last_poll"]["started"]
    wait_until(lambda: bal.status()["last_poll"]["started"] > cycles + 2, 15, what="more cycles")
    assert named_server.soa_serial() == serial
    assert len(smtp_server.messages) == count


def test_once_mode_publishes_and_reports(procs, tmp_path, named_server, smtp_server):
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((50, 20, 70))]
    cfg = tmp_path / "once.xml"
    cfg.write_text(server_xml(free_port(), free_port(), {"PROD": [(a.name, a.url) for a in agents]}, tmp_path,
                              extra=dns_element(named_server, smtp_server, 'best-hosts="1"')))
    res = subprocess.run(python_cmd("lbserver", "--once", "-c", str(cfg)), capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert named_server.dig("wms") == ["127.0.0.3"]  # xapp2, the least loaded
    assert "wms" in res.stdout and "127.0.0.3" in res.stdout
    # a second run changes nothing and says so
    serial = named_server.soa_serial()
    res = subprocess.run(python_cmd("lbserver", "--once", "-c", str(cfg)), capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and "unchanged" in res.stdout, res.stdout
    assert named_server.soa_serial() == serial
    # DNS server gone: exit status 2 and a clear message naming the server
    named_server.stop()
    res = subprocess.run(python_cmd("lbserver", "--once", "-c", str(cfg)), capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 2
    assert f"127.0.0.1:{named_server.port}" in res.stdout + res.stderr
