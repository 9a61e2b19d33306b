"""Lingering close of refused connections: one thread for all, never a worker.

The accept loop answers a refused peer (403, 503) at once and hands the
socket here. Closing it straight away would reset the connection as soon as
the peer's request arrives, and the reset can destroy our answer before the
peer reads it. So what the peer still sends is read and dropped, bounded in
bytes and time, before the socket is closed.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time

log = logging.getLogger(__name__)


class LingeringCloser:
    """Drains and closes sockets whose answer has been sent, in one background thread."""

    def __init__(self, seconds: float = 1.0, max_bytes: int = 64 * 1024, max_sockets: int = 1024) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.max_sockets = max_sockets
        self._lock = threading.Lock()
        self._incoming: list[socket.socket] = []
        self._count = 0  # sockets held (incoming or lingering)
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="lbagent-linger", daemon=True)
        self._thread.start()

    def close(self, sock: socket.socket) -> None:
        """Shut down our side of ``sock`` now and close it once the peer is done (bounded).

        Never blocks; beyond ``max_sockets`` at once, sockets are closed at once.
        """
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        with self._lock:
            if self._stopping or self._count >= self.max_sockets:
                sock.close()
                return
            self._count += 1
            self._incoming.append(sock)
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # the thread has wake-ups pending already

    def stop(self) -> None:
        """Close every socket held and end the thread."""
        with self._lock:
            self._stopping = True
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass
        self._thread.join(timeout=5)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        held: dict[socket.socket, list[float]] = {}  # socket -> [deadline, bytes left]
        try:
            while True:
                with self._lock:
                    stopping = self._stopping
                    incoming, self._incoming = self._incoming, []
                if stopping:
                    held.update((s, [0.0, 0]) for s in incoming)
                    break
                now = time.monotonic()
                for s in incoming:
                    held[s] = [now + self.seconds, self.max_bytes]
                    sel.register(s, selectors.EVENT_READ)
                timeout = min((d for d, _ in held.values()), default=now + 60) - now
                for key, _ in sel.select(max(0.0, timeout)):
                    if key.fileobj is self._wake_r:
                        _read_all(self._wake_r)
                    elif not self._drain(key.fileobj, held[key.fileobj]):
                        self._drop(sel, held, key.fileobj)
                now = time.monotonic()
                for s in [s for s, (deadline, _) in held.items() if deadline <= now]:
                    self._drop(sel, held, s)
        finally:
            for s in list(held):
                self._drop(sel, held, s)
            sel.close()
            self._wake_r.close()
            self._wake_w.close()

    @staticmethod
    def _drain(sock: socket.socket, state: list[float]) -> bool:
        """Read what ``sock`` has; False once the peer is done or has sent too much."""
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        state[1] -= len(data)
        return bool(data) and state[1] > 0

    def _drop(self, sel: selectors.BaseSelector, held: dict, sock: socket.socket) -> None:
        held.pop(sock, None)
        try:
            sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        with self._lock:
            self._count -= 1


def _read_all(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass
