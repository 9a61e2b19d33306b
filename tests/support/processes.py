"""Real processes for the tests: starting them, waiting for them, and the programs they need.

Every daemon a test starts goes through :class:`Procs` (the ``procs``
fixture), which stops them all at the end of the test. Waiting is by
readiness (a port that accepts, a predicate that holds), never by sleeping
a fixed time. No threads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import common.children
from common.children import free_port, stop_children

ROOT = Path(__file__).resolve().parents[2]
"""The top of the source tree."""
ARTIFACTS = ROOT / "tests" / "artifacts"
"""Where tests leave what a person may want to look at (screenshots, measured figures)."""

__all__ = ["ARTIFACTS", "ROOT", "Procs", "as_ordinary_user", "free_port", "python_cmd", "require_program",
           "wait_for_port", "wait_until"]


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Return once ``host:port`` accepts connections; fail, with ``proc``'s stderr, if it exits first or time runs out."""
    try:
        common.children.wait_for_port(host, port, timeout, proc)
    except common.children.NotListening as exc:
        said = proc.stderr.read() if proc is not None and exc.returncode is not None and proc.stderr else ""
        raise AssertionError(f"{exc}: {said}" if said else str(exc)) from None


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
        """Start ``args`` with this tree first on PYTHONPATH; stdout and stderr piped unless ``kw`` says otherwise."""
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        env.update(kw.pop("env", {}))
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(args, env=env, text=True, **kw)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        """SIGTERM every process still running, then SIGKILL those not gone within 5 s."""
        stop_children(self.procs, 5.0)


def python_cmd(module: str, *args: str) -> list[str]:
    """Command line running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


# The Debian package that brings each program the system tests run.
PACKAGES = {
    "named": "bind9", "dig": "bind9-dnsutils", "nsupdate": "bind9-dnsutils", "haproxy": "haproxy",
    "chromium": "chromium", "nginx": "nginx-light", "wrk": "wrk", "curl": "curl", "jq": "jq",
    "openssl": "openssl", "lintian": "lintian", "dpkg-buildpackage": "dpkg-dev",
    "x2godbadmin": "x2goserver", "x2gobroker": "x2gobroker", "pyhoca-cli": "pyhoca-cli", "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "knotd": "knot",
}


def require_program(name: str, *fallbacks: str) -> str:
    """The path of program ``name`` (or of the first of ``fallbacks`` found); fail, saying what to install, if none is.

    A test that needs a Debian program calls this first, so that run by
    hand on a machine without it, the test says what is missing instead of
    failing somewhere inside. It fails rather than skips: ``make test``
    installs every such program, and nothing may be skipped there.
    """
    for candidate in (name, *fallbacks):
        found = shutil.which(candidate) or shutil.which(candidate, path="/usr/sbin:/sbin")
        if found:
            return found
    package = PACKAGES.get(name, name)
    pytest.fail(f"this test needs {name} (Debian package {package}), which is not installed: "
                "`make test` (scripts/bootstrap --test) installs it, or run the fast tests alone "
                "(see docs/development.md, Tests)", pytrace=False)


def as_ordinary_user() -> list[str]:
    """A command prefix that runs as nobody when the tests run as root (root reads anything), else ``[]``."""
    if os.geteuid() != 0:
        return []
    return [require_program("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"]
