"""Fault injection on the DNS arbiter: the DNS server and the mail relay go away and come back.

The alias is watched with the real ``dig`` all along: whenever the DNS server
answers, the alias holds at least one address. Alerts come once per outage,
and a mail relay that is down costs nothing but the delay of the mail.
"""

from __future__ import annotations

import re
import subprocess
import threading

import pytest

from tests.support.dns import start_smtp
from tests.support.faults import LogCapture
from tests.support.cluster import start_agent, start_balancer, stop
from tests.support import free_port, wait_until

pytestmark = pytest.mark.system

POLL = 'interval="0.5" timeout="0.4" rise="1" fall="1"'


def dns_element(named, smtp_port: int, alias_attrs: str = 'num-out="1"') -> str:
    return (f'<dns server="127.0.0.1" port="{named.port}" zone="{named.zone}" ttl="60" timeout="2" '
            f'key-file="{named.key_file}" contact="admin@lbtest.example" smtp="127.0.0.1:{smtp_port}">'
            f'<alias name="wms" group="PROD" {alias_attrs}/></dns>')


class DigWatch:
    """Runs the real ``dig`` on the alias in a loop; records every answer and every empty one."""

    def __init__(self, named, name: str = "wms") -> None:
        self.cmd = ["dig", "@127.0.0.1", "-p", str(named.port), "+tcp", "+time=1", "+tries=1", "+noall",
                    "+comments", "+answer", f"{name}.{named.zone}", "A"]
        self.answers = 0
        self.unreachable = 0
        self.empty: list[float] = []
        self.last: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "DigWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(self.cmd, capture_output=True, text=True, timeout=10)
            status = re.search(r"status: (\w+)", out.stdout)
            flags = re.search(r"flags:([\w ]*);", out.stdout)
            if out.returncode != 0 or status is None or status.group(1) == "SERVFAIL" \
                    or flags is None or "qr" not in flags.group(1).split():
                # The server is down or still loading the zone: no answer, which is not an empty one. A
                # message without the response flag is dig's own query: with nothing listening, its TCP
                # connection can land on itself (a self-connect, when the kernel picks the same port).
                self.unreachable += 1
                continue
            addrs = sorted(ln.split()[-1] for ln in out.stdout.splitlines()
                           if ln and not ln.startswith(";") and ln.split()[3:4] == ["A"])
            self.answers += 1
            if not addrs:
                self.empty.append(out.stdout)
            self.last = addrs
            self._stop.wait(0.05)


def _mail_lines(smtp, word: str, text: str) -> list[str]:
    out = []
    for m in list(smtp.messages):
        body = m.get_payload(decode=True).decode()
        out += [ln for ln in body.splitlines() if word in ln and text in ln]
    return out


def test_dns_server_outages_while_aliases_change(procs, tmp_path, named_server, smtp_server):
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 40, 70))]
    bal = start_balancer(procs, tmp_path, {"PROD": [(a.name, a.url) for a in agents]}, poll=POLL,
                         extra=dns_element(named_server, smtp_server.port))
    logs = LogCapture(bal.proc)
    outages = 0
    # Before its first publication the alias does not exist yet: watch from then on.
    wait_until(lambda: named_server.dig("wms") == ["127.0.0.2", "127.0.0.3"], 20, what="first publication")
    with DigWatch(named_server) as watch:

        def outage(change, expected: list[str]) -> None:
            nonlocal outages
            named_server.stop()
            outages += 1
            change()
            # The balancer notices, keeps going, and says so once.
            wait_until(lambda: bal.status()["aliases"][0]["result"] == "error", 15, what="DNS error noticed")
            wait_until(lambda: len(_mail_lines(smtp_server, "PROBLEM", "cannot read the current records"))
                       == outages, 15, what="one problem mail")
            cycle = bal.status()["last_poll"]["started"]
            wait_until(lambda: bal.status()["last_poll"]["started"] >= cycle + 1.5, 10, what="3 more cycles")
            assert bal.ask() in {a.name for a in agents}
            named_server.start()  # same port, same zone (with its journal)
            wait_until(lambda: watch.last == expected, 20, what=f"{expected} published after the outage")
            wait_until(lambda: len(_mail_lines(smtp_server, "RESOLVED", "DNS works again")) == outages, 15,
                       what="one resolved mail")

        # 1: loads change while the DNS server is away (xapp1 becomes the most loaded)
        outage(lambda: agents[0].set_load(95), ["127.0.0.3", "127.0.0.4"])
        # 2: an agent dies while it is away
        outage(lambda: stop(agents[1].proc), ["127.0.0.4"])
        cycle = bal.status()["last_poll"]["started"]
        wait_until(lambda: bal.status()["last_poll"]["started"] >= cycle + 1.5, 10, what="3 more cycles")

    assert watch.empty == [], f"alias empty at {watch.empty}"
    assert watch.answers > 20 and watch.unreachable > 0  # dig did run through both outages
    # One problem and one resolution per outage, however many cycles each lasted.
    assert len(_mail_lines(smtp_server, "PROBLEM", "cannot read the current records")) == outages
    assert len(_mail_lines(smtp_server, "RESOLVED", "DNS works again")) == outages
    assert bal.proc.poll() is None and logs.count("Traceback") == 0
    print(f"\nDNS outages: {outages}; dig answers {watch.answers} (empty {len(watch.empty)}), "
          f"unreachable {watch.unreachable}; mails {len(smtp_server.messages)}")


def test_smtp_down_costs_nothing_but_the_mail(procs, tmp_path, named_server):
    smtp_port = free_port()  # nothing listens here yet
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", load)
              for i, load in enumerate((10, 40, 70))]
    bal = start_balancer(procs, tmp_path, {"PROD": [(a.name, a.url) for a in agents]}, poll=POLL,
                         extra=dns_element(named_server, smtp_port))
    logs = LogCapture(bal.proc)
    wait_until(lambda: named_server.dig("wms") == ["127.0.0.2", "127.0.0.3"], 20, what="first publication")
    stop(agents[0].proc)
    # The change is published and logged although no mail can go out.
    wait_until(lambda: named_server.dig("wms") == ["127.0.0.3"], 20, what="xapp1 withdrawn")
    wait_until(lambda: logs.count("cannot send alert mail"), 10, what="mail failure logged")
    assert logs.matching("DNS arbiter: ") and any("xapp1" in ln for ln in logs.matching("WARNING"))
    cycle = bal.status()["last_poll"]["started"]
    wait_until(lambda: bal.status()["last_poll"]["started"] >= cycle + 1.5, 10, what="3 more cycles")
    assert logs.count("cannot send alert mail") == 1  # later retries are not repeated in the log
    assert {bal.ask() for _ in range(20)} <= {"xapp2", "xapp3"}
    assert bal.proc.poll() is None
    # The relay comes back: the kept alert goes out, once.
    srv, ctl = start_smtp(port=smtp_port)
    try:
        mails = srv.wait_count(1, timeout=15)
        body = mails[0].get_payload(decode=True).decode()
        assert "xapp1" in body and "PROBLEM" in body
        cycle = bal.status()["last_poll"]["started"]
        wait_until(lambda: bal.status()["last_poll"]["started"] >= cycle + 1.5, 10, what="3 more cycles")
        assert len(srv.messages) == 1
    finally:
        ctl.stop()
    assert logs.count("Traceback") == 0
