"""An XML-RPC client of the agent for tests: from a chosen loopback source address, with a timeout.

The agent's access list decides by source address, so a test picks which
127.0.0.N it calls from. No threads.
"""

from __future__ import annotations

import http.client
import xmlrpc.client

CLIENT_TIMEOUT = 5.0


class SourceTransport(xmlrpc.client.Transport):
    """xmlrpc.client transport connecting from a chosen local address, with a timeout."""

    def __init__(self, source: str | None = None, timeout: float = CLIENT_TIMEOUT) -> None:
        super().__init__()
        self.source = source
        self.timeout = timeout

    def make_connection(self, host):  # noqa: D102 (xmlrpc.client.Transport's hook)
        conn = http.client.HTTPConnection(host, timeout=self.timeout,
                                          source_address=(self.source, 0) if self.source else None)
        self._connection = host, conn
        return conn


def proxy(host: str, port: int, path: str = "/RPC2", source: str | None = None,
          timeout: float = CLIENT_TIMEOUT) -> xmlrpc.client.ServerProxy:
    """An XML-RPC proxy of the agent at ``host:port``, calling from ``source`` when given."""
    shown = f"[{host}]" if ":" in host else host
    return xmlrpc.client.ServerProxy(f"http://{shown}:{port}{path}",
                                     transport=SourceTransport(source, timeout))
