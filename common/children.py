"""Child daemons of the demo, the tests and the benchmarks: waiting until one listens, stopping them all.

Each of them starts real daemons as child processes, must know when a port
accepts connections without waiting out a timeout when the child has already
died (a bad config, a port in use), and must leave none behind. No threads:
the caller's own thread polls.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable


class NotListening(Exception):
    """The port did not accept a connection in time, or the process meant to open it exited first.

    ``returncode`` is the exit status of that process, or None when it is
    still running (the wait timed out).
    """

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port currently free on ``host`` (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None,
                  interval: float = 0.02) -> None:
    """Return once ``host:port`` accepts a TCP connection.

    Raises :class:`NotListening` when ``timeout`` seconds pass first, or at
    once when ``proc`` (the process expected to listen) has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise NotListening(f"{_program(proc)} exited with status {proc.returncode} before listening on "
                               f"{host}:{port}", proc.returncode)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise NotListening(f"nothing listening on {host}:{port} after {timeout:g} s") from None
            time.sleep(interval)


def _program(proc: subprocess.Popen) -> str:
    """What ``proc`` runs, as a person would name it (``lbserver`` for ``python -m lbserver ...``)."""
    args = proc.args if isinstance(proc.args, (list, tuple)) else str(proc.args).split()
    if len(args) >= 3 and args[1] == "-m":
        return str(args[2])
    return str(args[0]) if args else "process"


def stop_children(children: Iterable[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM every child still running, then wait for each; SIGKILL one not gone within ``timeout`` seconds."""
    children = list(children)
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
