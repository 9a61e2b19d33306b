"""The ``lbserver`` command: its third-party modules checked first, then :func:`lbserver.cli.main`.

This module imports nothing but :mod:`common.deps`, so that a missing
dependency is reported as such (``lbserver: cannot start: Python module lxml
is missing (apt-get install python3-lxml)``, exit status 5) instead of as a
traceback, or as an invalid configuration by the init script.
"""

from __future__ import annotations

import sys

from common.deps import run_guarded

REQUIRES = ("lxml", "daemon", "dns", "defusedxml", "prometheus_client")
"""The third-party modules lbserver imports (uvloop is optional: used when present)."""

OPTIONAL = ("uvloop",)
"""Modules lbserver uses when they are installed."""


def _load():
    from lbserver.cli import main  # noqa: PLC0415 (after the check)

    return main


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lbserver`` command; returns the exit status."""
    return run_guarded("lbserver", REQUIRES, _load, argv)


if __name__ == "__main__":
    sys.exit(main())
