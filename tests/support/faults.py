"""Helpers for the fault-injection tests: a checking terminal loop, log capture, /proc figures."""

from __future__ import annotations

import http.client
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field


class LogCapture:
    """Drains a process's stderr in a thread (so it never blocks on a full pipe) and keeps the lines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def matching(self, text: str) -> list[str]:
        """Lines containing ``text`` so far."""
        with self._lock:
            return [ln for ln in self.lines if text in ln]

    def count(self, text: str) -> int:
        return len(self.matching(text))


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid`` (from /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class Allowed:
    """Which answers are right at a given moment.

    A node is allowed while it is healthy and for ``grace`` seconds after a
    fault is injected into it (the balancer needs ``fall`` polls to notice).
    Once the test has *seen* the balancer report the node down, no request
    sent afterwards may get it, grace or not, until the test heals it.
    """

    healthy: set[str]
    grace: float
    faulted_at: dict[str, float] = field(default_factory=dict)
    seen_down_at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, name: str) -> None:
        with self.lock:
            self.faulted_at.setdefault(name, time.monotonic())

    def seen_down(self, name: str) -> None:
        with self.lock:
            self.seen_down_at.setdefault(name, time.monotonic())

    def heal(self, name: str) -> None:
        with self.lock:
            self.faulted_at.pop(name, None)
            self.seen_down_at.pop(name, None)

    def check(self, answer: str, sent: float) -> str | None:
        """None when ``answer`` to a request sent at ``sent`` is right, else why not."""
        with self.lock:
            if answer not in self.healthy:
                return f"{answer!r} is not a healthy node"
            down = self.seen_down_at.get(answer)
            if down is not None and sent > down:
                return f"{answer} answered {sent - down:.2f} s after the balancer reported it down"
            f = self.faulted_at.get(answer)
            if f is not None and sent > f + self.grace:
                return f"{answer} answered {sent - f:.2f} s after it failed (grace {self.grace} s)"
        return None


class TerminalLoop:
    """A terminal asking the balancer(s) again and again in a thread, checking every answer.

    Like lbclient, it asks the balancers of ``ports`` in order and takes the
    first answer. ``failures`` are requests no balancer answered with 200;
    ``violations`` are answers that were not right (see :class:`Allowed`).
    """

    def __init__(self, ports: list[int], allowed: Allowed, pause: float = 0.004) -> None:
        self.ports = ports
        self.allowed = allowed
        self.pause = pause
        self.requests = 0
        self.answers: dict[str, int] = {}
        self.failures: list[str] = []
        self.violations: list[str] = []
        self.fallbacks = 0  # answered by a later balancer because an earlier one failed
        self._stop = threading.Event()
        self._conns: dict[int, http.client.HTTPConnection] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TerminalLoop":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        for conn in self._conns.values():
            conn.close()

    def _ask(self, port: int) -> str:
        conn = self._conns.get(port)
        if conn is None:
            conn = self._conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read().decode()
        except Exception:
            conn.close()
            self._conns.pop(port, None)
            raise
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}: {body.strip()}")
        return body.strip()

    def _one(self) -> None:
        sent = time.monotonic()
        errors = []
        for i, port in enumerate(self.ports):
            try:
                answer = self._ask(port)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    # A keep-alive connection closed by a restarting balancer: ask again on a new one.
                    try:
                        answer = self._ask(port)
                    except (OSError, http.client.HTTPException) as exc2:
                        errors.append(f"{port}: {exc2!r}")
                        continue
                else:
                    errors.append(f"{port}: {exc!r}")
                    continue
            self.requests += 1
            self.fallbacks += i > 0
            self.answers[answer] = self.answers.get(answer, 0) + 1
            why = self.allowed.check(answer, sent)
            if why:
                self.violations.append(why)
            return
        self.requests += 1
        self.failures.append("; ".join(errors))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one()
            self._stop.wait(self.pause)

    def mark(self) -> int:
        """Requests made so far (to check that some were made after a point)."""
        return self.requests
