"""A loopback UDP relay between two peer balancers that can drop either direction (a one-way partition).

Balancer A names ``127.0.0.1:a_port`` as its peer and B names
``127.0.0.1:b_port``: a datagram A sends to ``a_port`` leaves from
``b_port`` towards B, and one B sends to ``b_port`` leaves from ``a_port``
towards A, so each balancer sees its peer's datagrams come from the very
address it names (the peer exchange refuses any other source). Setting
``drop_a_to_b`` or ``drop_b_to_a`` loses that direction's datagrams, as a
broken link or a one-way firewall rule would. One thread, loopback only.
"""

from __future__ import annotations

import selectors
import socket
import threading

from tests.support.processes import free_port


class UdpRelay:
    """Relays datagrams between A (``a_addr``) and B (``b_addr``); ``close()`` stops it."""

    def __init__(self, a_addr: tuple[str, int], b_addr: tuple[str, int]) -> None:
        self.a_addr, self.b_addr = a_addr, b_addr
        self.sock_a = self._bind()   # A's peer address: what A sends to, and what B's datagrams come from
        self.sock_b = self._bind()   # B's peer address
        self.a_port, self.b_port = self.sock_a.getsockname()[1], self.sock_b.getsockname()[1]
        self.drop_a_to_b = False
        self.drop_b_to_a = False
        self.relayed = {"a_to_b": 0, "b_to_a": 0}
        self.dropped = {"a_to_b": 0, "b_to_a": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp-relay", daemon=True)
        self._thread.start()

    @staticmethod
    def _bind() -> socket.socket:
        for _ in range(20):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", free_port()))
                return s
            except OSError:
                s.close()
        raise AssertionError("no free UDP port for the relay")

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock_a, selectors.EVENT_READ)
        sel.register(self.sock_b, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                try:
                    data, _src = key.fileobj.recvfrom(65535)
                except OSError:
                    continue
                if key.fileobj is self.sock_a:  # from A, towards B
                    direction, out, dest, drop = "a_to_b", self.sock_b, self.b_addr, self.drop_a_to_b
                else:
                    direction, out, dest, drop = "b_to_a", self.sock_a, self.a_addr, self.drop_b_to_a
                if drop:
                    self.dropped[direction] += 1
                    continue
                try:
                    out.sendto(data, dest)
                    self.relayed[direction] += 1
                except OSError:
                    pass
        sel.close()

    def close(self) -> None:
        """Stop relaying and close both sockets."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock_a.close()
        self.sock_b.close()
