"""Shared fixtures: real daemons as processes on loopback, bounded in time."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
sys.path.insert(0, str(ROOT))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port currently free on ``host``."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Return once ``host:port`` accepts connections; fail if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process exited with {proc.returncode} before listening: {out}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{host}:{port} not listening after {timeout}s")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the thing polled may not be up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


class Procs:
    """Starts processes and guarantees they are gone at the end of the test."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kw) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        env.update(kw.pop("env", {}))
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(args, env=env, text=True, **kw)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def procs():
    """Factory for real processes, all stopped after the test."""
    p = Procs()
    yield p
    p.stop_all()


def python_cmd(module: str, *args: str) -> list[str]:
    """Command line running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def chi2(observed, expected_share) -> float:
    """Pearson's chi-square of ``observed`` counts (a mapping) against shares proportional to ``expected_share``."""
    n, total = sum(observed.values()), sum(expected_share.values())
    return sum((observed.get(k, 0) - n * w / total) ** 2 / (n * w / total) for k, w in expected_share.items())


class Clock:
    """A clock the test moves by hand (``clock.now = ...``), for code that takes a clock callable."""

    def __init__(self, now: float = 1.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def as_ordinary_user() -> list[str]:
    """A command prefix that runs as nobody when the tests run as root (root reads anything), else ``[]``."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv to drop privileges")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


# The DNS and mail fixtures (real BIND, real SMTP) are available to every test.
from dnsfixture import named_server, smtp_auth_server, smtp_server  # noqa: E402,F401
