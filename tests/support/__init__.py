"""What the tests share, imported as an ordinary package (``from tests.support import ...``).

* :mod:`~tests.support.processes`: starting real processes, waiting for them
  (re-exported here: ``Procs``, ``wait_for_port``, ``wait_until``, ...);
* :mod:`~tests.support.cluster`: small clusters of real lbagents and an lbserver;
* :mod:`~tests.support.dns`: a real BIND 9 (or Knot DNS) and a real SMTP server on loopback;
* :mod:`~tests.support.aliaswatch`: a DNS alias and its zone's serial watched through a lease takeover;
* :mod:`~tests.support.relay`: a UDP relay between two peer balancers that can cut either direction;
* :mod:`~tests.support.tls`: throwaway certificate authorities;
* :mod:`~tests.support.faults`: log capture, a checking terminal loop, /proc figures;
* :mod:`~tests.support.doubles`: the stand-ins unit tests use (a hand-moved clock, a fixed snapshot);
* :mod:`~tests.support.stats`: the chi-square the placement tests judge by;
* :mod:`~tests.support.agentless`: real node_exporters and a real Prometheus on loopback, and a page
  server standing in for either (``node_exporter_page.txt``: a real node_exporter 1.5 page);
* :mod:`~tests.support.x2go`: x2goserver's session database, Debian's x2gobroker and the Python X2Go
  clients, and a broker request as the clients send it;
* :mod:`~tests.support.haproxy`: stand-in RDP servers, an RDP client's first packet, HAProxy's runtime API;
* :mod:`~tests.support.fakeagent` and :mod:`~tests.support.terminal_harness`:
  programs run as processes (``python -m tests.support.fakeagent``).

The fixtures (``procs``, ``named_server``, ``smtp_server``) are registered by
tests/conftest.py, which holds nothing else but the test markers' rules.
"""

from tests.support.processes import (
    ARTIFACTS,
    ROOT,
    Procs,
    as_ordinary_user,
    free_port,
    python_cmd,
    require_program,
    wait_for_port,
    wait_until,
)

__all__ = ["ARTIFACTS", "ROOT", "Procs", "as_ordinary_user", "free_port", "python_cmd", "require_program",
           "wait_for_port", "wait_until"]
