"""A reload starts, moves, switches to HTTPS and stops the X2Go broker and the load-checker socket, terminals served throughout."""

from __future__ import annotations

import signal
import socket
import ssl
import urllib.request

import pytest

from tests.support import free_port, wait_until
from tests.support.cluster import start_agent, start_balancer
from tests.support.tls import make_ca

pytestmark = pytest.mark.daemon

PROFILE = '<profile name="Lab desktop" group="LAB"/>'


def select(port: int, context: ssl.SSLContext | None = None) -> str:
    scheme = "https" if context is not None else "http"
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/plain/", method="POST",
                                 data=b"task=selectsession&sid=Lab+desktop&user=alice")
    with urllib.request.urlopen(req, timeout=5, context=context) as resp:
        return resp.read().decode()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def ask_socket(path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(b"inifile\rLAB\rn1\n")
        return s.recv(1024)


def test_reload_starts_moves_and_stops_the_broker(procs, tmp_path):
    agent = start_agent(procs, tmp_path, "n1", "127.0.0.2")
    bal = start_balancer(procs, tmp_path, {"LAB": [("n1", agent.url)]})
    bal.wait_health("n1", "up")
    first, second = free_port(), free_port()
    lc = tmp_path / "run" / "lc.sock"
    base = bal.config.read_text()

    def reload(extra: str) -> None:
        bal.config.write_text(base.replace("</lbsconfig>", extra + "\n</lbsconfig>"))
        bal.proc.send_signal(signal.SIGHUP)

    reload(f'<x2gobroker listen="127.0.0.1:{first}">{PROFILE}</x2gobroker><x2go-loadchecker socket="{lc}"/>')
    assert wait_until(lambda: select(first), what="the broker started by a reload") == \
        "Access granted\nSERVER:n1:22\n"
    assert int(wait_until(lambda: ask_socket(lc), what="the load-checker socket")) >= 1
    x2go = bal.status()["x2go"]
    assert x2go["broker"]["listen"] == f"127.0.0.1:{first}" and x2go["broker"]["replies"]["200"] >= 1
    assert x2go["broker"]["profiles"] == ["Lab desktop"] and x2go["broker"]["https"] is False
    assert x2go["loadchecker"] == {"socket": str(lc), "questions": 1}
    reload(f'<x2gobroker listen="127.0.0.1:{second}">{PROFILE}</x2gobroker>')
    wait_until(lambda: select(second), what="the broker moved")
    wait_until(lambda: refused(first) and not lc.exists(), what="the old port and the socket gone")
    # The same port switched to HTTPS by a reload: the listener starts again with the certificate.
    ca = make_ca(tmp_path / "ca")
    leaf = ca.issue(tmp_path, "broker", ips=("127.0.0.1",))
    reload(f'<x2gobroker listen="127.0.0.1:{second}" tls-cert="{leaf.cert}" tls-key="{leaf.key}">{PROFILE}'
           '</x2gobroker>')
    context = ssl.create_default_context(cafile=str(ca.cert))
    assert wait_until(lambda: select(second, context), what="the broker on HTTPS") == "Access granted\nSERVER:n1:22\n"
    assert bal.status()["x2go"]["broker"]["https"] is True and bal.status()["x2go"]["loadchecker"] is None
    reload("")
    wait_until(lambda: refused(second), what="the broker stopped")
    assert bal.status()["x2go"] is None
    assert bal.ask() == "n1" and bal.proc.poll() is None
