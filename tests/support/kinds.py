"""The three kinds of test, and the check that a test starts only what its kind allows.

``unit`` tests run in this process (short-lived shell commands allowed, as
the agent's command variables need them); ``daemon`` tests also start this
project's programs, and any Python, as processes; ``system`` tests may run
anything, including the Debian programs the test setup installs. The fast
subset (``-m unit``) and the virtualenv-only subset (``-m "not system"``)
are only honest if a test cannot start more than its marker says: the
``kind_guard`` fixture (tests/conftest.py) refuses, while a unit or daemon
test runs, to start a program its kind does not allow, naming the marker
the test needs instead. No threads.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.processes import PACKAGES

KINDS = ("unit", "daemon", "system")
"""The kind markers, from the cheapest to run to the most demanding."""

DAEMON_PROGRAMS = frozenset({"lbagent", "lbserver", "lbctl", "lbclient", "openssl"})
"""What a daemon test may start besides any Python interpreter (the project's commands; openssl for its CAs)."""

SYSTEM_PROGRAMS = (frozenset(PACKAGES) - DAEMON_PROGRAMS) | {"make", "groff", "man", "systemd-analyze", "dpkg",
                                                          "apt-get", "chromium-browser"}
"""Programs only a system test may start: installed by the test setup, or acting on the machine."""


def program_of(args, executable: str | None = None) -> str:
    """The base name of the program a Popen call starts."""
    if executable:
        return os.path.basename(executable)
    first = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
    return os.path.basename(str(first))


def allowed(kind: str, program: str) -> bool:
    """Whether a test of ``kind`` may start ``program``."""
    if kind == "system":
        return True
    if program in SYSTEM_PROGRAMS:
        return False
    if kind == "daemon":
        return True
    return not program.startswith("python") and program not in DAEMON_PROGRAMS


@contextmanager
def kind_guard(kind: str) -> Iterator[None]:
    """While it is open, starting a program a test of ``kind`` may not start fails, saying which marker fits."""
    original = subprocess.Popen.__init__

    def checked(self, args, *rest, **kw):
        program = program_of(args, kw.get("executable"))
        if not allowed(kind, program):
            needed = "system" if program in SYSTEM_PROGRAMS else "daemon"
            raise AssertionError(f"a test marked {kind} starts {program}: mark it {needed} "
                                 "(see docs/development.md, Tests)")
        original(self, args, *rest, **kw)

    subprocess.Popen.__init__ = checked
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original
