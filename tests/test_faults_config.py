"""A broken configuration followed by SIGHUP: the running one stays, the error names file and line.

Both daemons get the same treatment: bad XML, a schema violation, a bad
value, a truncated file and an empty one, each followed by SIGHUP. After
each, the daemon is still running on its old configuration (checked through
what it serves), and its log holds exactly one ``reload refused`` line with
``FILE:LINE:``. A final good file proves the SIGHUPs were really handled.
"""

from __future__ import annotations

import re
import signal
import xmlrpc.client

import pytest

from tests.support.faults import LogCapture
from tests.support.cluster import agent_xml, server_xml, start_agent, start_balancer
from tests.support import wait_until

pytestmark = pytest.mark.daemon

REFUSED = "reload refused, keeping the running configuration: "


def line_of(text: str, marker: str) -> int:
    """1-based line of the first occurrence of ``marker`` in ``text``."""
    return text[:text.index(marker)].count("\n") + 1


def broken_variants(good: str, marker: str, bad_child: str, bad_value: tuple[str, str]) -> list[tuple[str, str, int | None]]:
    """(kind, text, expected line or None) for each way of breaking ``good``.

    ``marker`` is a line of ``good`` after which a child element may go;
    ``bad_value`` replaces one attribute text by one the loader must refuse.
    """
    at = good.index(marker) + len(marker)
    schema = good[:at] + "\n" + bad_child + good[at:]
    value = good.replace(*bad_value, 1)
    xml = good[:at] + "\n<unclosed>" + good[at:]
    return [
        ("bad XML", xml, None),
        ("schema violation", schema, line_of(schema, bad_child)),
        ("bad value", value, line_of(value, bad_value[1])),
        ("truncated", good[: len(good) * 2 // 3], None),
        ("empty", "", None),
    ]


def hup_refused(proc, logs: LogCapture, path, text: str, line: int | None) -> str:
    """Write ``text`` to ``path``, SIGHUP, wait for one more refusal; return that log line."""
    before = logs.count(REFUSED)
    path.write_text(text)
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: logs.count(REFUSED) == before + 1, 10, what="reload refused logged")
    msg = logs.matching(REFUSED)[-1]
    where = msg.split(REFUSED, 1)[1]
    m = re.match(rf"{re.escape(str(path))}:(\d+): \S", where)
    assert m, msg
    if line is not None:
        assert int(m.group(1)) == line, msg
    return msg


def test_agent_keeps_its_config_on_broken_reload(procs, tmp_path):
    agent = start_agent(procs, tmp_path, "xapp1", "127.0.0.2", 10,
                        extra='<variable name="MARK" type="constant" value="1"/>')
    logs = LogCapture(agent.proc)
    proxy = xmlrpc.client.ServerProxy(agent.url)
    assert proxy.get_state()["variables"]["MARK"] == 1
    new = agent_xml(agent.ip, agent.port, agent.load_file, '<variable name="MARK" type="constant" value="2"/>')
    marker = '<variable name="MARK" type="constant" value="2"/>'
    cases = broken_variants(new, marker, '<variable name="NEW" type="constant" value="1" colour="red"/>',
                            ('sample-interval="0.2"', 'sample-interval="0.01"'))
    # A number no double can hold: it used to escape the loader and end the agent on SIGHUP.
    huge = new.replace(marker, marker + '\n<variable name="HUGE" type="constant" value="' + "9" * 400 + '"/>')
    cases.append(("number out of range", huge, line_of(huge, 'name="HUGE"')))
    for kind, text, line in cases:
        msg = hup_refused(agent.proc, logs, agent.config, text, line)
        assert agent.proc.poll() is None, kind
        state = proxy.get_state()
        assert state["variables"]["MARK"] == 1, (kind, msg)  # nothing of the new file applied
        assert "NEW" not in state["variables"] and "HUGE" not in state["variables"]
    agent.config.write_text(new)
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: proxy.get_state()["variables"]["MARK"] == 2, 10, what="good reload applied")
    assert logs.count(REFUSED) == len(cases) and logs.count("Traceback") == 0
    print(f"\nagent: {len(cases)} broken reloads refused ({', '.join(k for k, _, _ in cases)})")


def test_balancer_keeps_its_config_on_broken_reload(procs, tmp_path):
    agents = [start_agent(procs, tmp_path, f"xapp{i + 1}", f"127.0.0.{i + 2}", 10) for i in range(2)]
    bal = start_balancer(procs, tmp_path, {"PROD": [(agents[0].name, agents[0].url)]})
    logs = LogCapture(bal.proc)
    bal.wait_health("xapp1", "up")
    good = server_xml(bal.port, bal.mgmt_port, {"PROD": [(a.name, a.url) for a in agents]}, tmp_path)
    marker = f'<node name="xapp2" address="{agents[1].url}"/>'
    cases = broken_variants(good, marker, '<node name="xapp9" address="http://127.0.0.9:1" weight="3"/>',
                            ('idle-timeout="5"', 'idle-timeout="-5"'))
    # An address urllib cannot even split: it used to escape the loader and end the balancer on SIGHUP.
    bad_url = good.replace(marker, marker + '\n<node name="xapp9" address="http://[127.0.0.9:1"/>')
    cases.append(("unsplittable URL", bad_url, line_of(bad_url, 'name="xapp9"')))
    for kind, text, line in cases:
        hup_refused(bal.proc, logs, bal.config, text, line)
        assert bal.proc.poll() is None, kind
        assert set(bal.status()["nodes"]) == {"xapp1"}, kind
        assert {bal.ask() for _ in range(5)} == {"xapp1"}
    bal.config.write_text(good)
    bal.proc.send_signal(signal.SIGHUP)
    bal.wait_health("xapp2", "up")
    assert logs.count(REFUSED) == len(cases) and logs.count("Traceback") == 0
    print(f"\nbalancer: {len(cases)} broken reloads refused ({', '.join(k for k, _, _ in cases)})")
