"""The ``lbagent`` command: its third-party modules checked first, then :func:`lbagent.cli.main`.

This module imports nothing but :mod:`common.deps`, so that a missing
dependency is reported as such (``lbagent: cannot start: Python module lxml
is missing (apt-get install python3-lxml)``, exit status 5) instead of as a
traceback, or as an invalid configuration by the init script.
"""

from __future__ import annotations

import sys

from common.deps import run_guarded

REQUIRES = ("lxml", "psutil", "daemon", "defusedxml")
"""The third-party modules lbagent imports (python-daemon only when it detaches: checked at once all the same)."""


def _load():
    from lbagent.cli import main  # noqa: PLC0415 (after the check)

    return main


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lbagent`` command; returns the exit status."""
    return run_guarded("lbagent", REQUIRES, _load, argv)


if __name__ == "__main__":
    sys.exit(main())
