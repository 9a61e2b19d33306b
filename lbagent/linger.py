"""Lingering close of refused connections: one thread for all, never a worker.

The accept loop answers a refused peer (403, 503) at once and hands the
socket here. Closing it straight away would reset the connection as soon as
the peer's request arrives, and the reset can destroy our answer before the
peer reads it. So what the peer still sends is read and dropped, bounded in
bytes and time, before the socket is closed.

The number of sockets held is bounded too (each is a file descriptor): at
capacity, or once the thread has ended, sockets are closed at once.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time

log = logging.getLogger(__name__)

ERROR_LOG_PERIOD = 60.0  # an error that repeats in every turn of the loop is logged once a minute
ERROR_PAUSE = 0.1        # and does not turn the loop into a busy one


def linger_capacity(nofile: int, cap: int = 1024, floor: int = 16) -> int:
    """How many sockets to hold for a lingering close, given the open-files limit ``nofile``.

    A quarter of the limit at most, so lingering refused peers leave
    descriptors for workers, command pipes and the balancers' connections.
    ``nofile`` < 0 means unlimited (``resource.RLIM_INFINITY``).
    """
    if nofile < 0:
        return cap
    return max(floor, min(cap, nofile // 4))


class LingeringCloser:
    """Drains and closes sockets whose answer has been sent, in one background thread."""

    def __init__(self, seconds: float = 1.0, max_bytes: int = 64 * 1024, max_sockets: int = 1024) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.max_sockets = max_sockets
        self._lock = threading.Lock()
        self._incoming: list[socket.socket] = []
        self._count = 0  # sockets held (incoming or lingering)
        self._stopping = False  # also set when the thread ends for any reason
        self._last_error = float("-inf")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="lbagent-linger", daemon=True)
        self._thread.start()

    @property
    def held(self) -> int:
        """Sockets waiting for their close now."""
        return self._count

    def alive(self) -> bool:
        """Whether the closing thread runs (False after :meth:`stop`)."""
        return self._thread.is_alive()

    def close(self, sock: socket.socket) -> None:
        """Shut down our side of ``sock`` now and close it once the peer is done (bounded).

        Never blocks and never raises; at ``max_sockets`` held, or when the
        thread has ended, ``sock`` is closed at once rather than queued.
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
        self._wake()

    def stop(self) -> None:
        """Close every socket held and end the thread."""
        with self._lock:
            self._stopping = True
        self._wake()
        self._thread.join(timeout=5)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # the thread has wake-ups pending already
        except OSError:
            # The thread has ended and closed its end (EBADF); the sockets it
            # had not taken were closed on its way out.
            pass

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        held: dict[socket.socket, list[float]] = {}  # socket -> [deadline, bytes left]
        try:
            while True:
                try:
                    if not self._turn(sel, held):
                        break
                except Exception:  # one bad socket must not end lingering for all
                    self._log_error()
                    time.sleep(ERROR_PAUSE)
        finally:
            with self._lock:
                self._stopping = True  # from now on close() closes at once
                incoming, self._incoming = self._incoming, []
            for s in incoming:
                held.setdefault(s, [0.0, 0])
            for s in list(held):
                self._drop(sel, held, s)
            sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _turn(self, sel: selectors.BaseSelector, held: dict[socket.socket, list[float]]) -> bool:
        """One turn of the loop: take new sockets, drain, drop the finished; False to end."""
        with self._lock:
            if self._stopping:
                return False
            incoming, self._incoming = self._incoming, []
        now = time.monotonic()
        for s in incoming:
            held[s] = [now + self.seconds, self.max_bytes]
            try:
                sel.register(s, selectors.EVENT_READ)
            except (OSError, ValueError):  # closed meanwhile: nothing to linger for
                self._drop(sel, held, s)
        timeout = min((d for d, _ in held.values()), default=now + 60) - now
        for key, _ in sel.select(max(0.0, timeout)):
            if key.fileobj is self._wake_r:
                _read_all(self._wake_r)
            elif key.fileobj in held and not self._drain(key.fileobj, held[key.fileobj]):
                self._drop(sel, held, key.fileobj)
        now = time.monotonic()
        for s in [s for s, (deadline, _) in held.items() if deadline <= now]:
            self._drop(sel, held, s)
        return True

    def _log_error(self) -> None:
        now = time.monotonic()
        if now - self._last_error >= ERROR_LOG_PERIOD:
            self._last_error = now
            log.exception("lingering close failed; going on (logged at most once a minute)")

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
        if held.pop(sock, None) is None:
            return  # dropped already: count it once
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
