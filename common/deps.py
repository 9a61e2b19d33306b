"""The third-party Python modules the daemons need, and a clear word when one is missing.

A daemon started by an init script or a unit must not fail with a traceback,
or worse with a message that blames its configuration, when the real cause
is a Python module that is not installed. The commands' entry points
(:mod:`lbagent.entry`, :mod:`lbserver.entry`) go through :func:`run_guarded`,
which imports every module the program needs before anything else and, when
one cannot be imported, prints

    lbagent: cannot start: Python module lxml is missing (apt-get install python3-lxml)

and returns :data:`EXIT_MISSING_MODULE`, a status of its own that the SysV
scripts report as such (LSB's "program is not installed"). ``make install``
checks the same modules before it installs anything (``scripts/sysinstall
check-deps``).

Standard library only: this module must import when nothing else does.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Iterable

EXIT_MISSING_MODULE = 5
"""Exit status of a command that cannot start because a Python module it needs is missing."""

MODULES: dict[str, tuple[str, str]] = {
    "lxml": ("python3-lxml", "lxml"),
    "psutil": ("python3-psutil", "psutil"),
    "daemon": ("python3-daemon", "python-daemon"),
    "lockfile": ("python3-lockfile", "lockfile"),
    "dns": ("python3-dnspython", "dnspython"),
    "defusedxml": ("python3-defusedxml", "defusedxml"),
    "prometheus_client": ("python3-prometheus-client", "prometheus_client"),
    "uvloop": ("python3-uvloop", "uvloop"),
    "setuptools": ("python3-setuptools", "setuptools"),
}
"""Import name -> (Debian package, PyPI distribution) of every third-party module the project uses."""


def debian_package(module: str) -> str:
    """The Debian package that provides the top-level ``module`` (``python3-NAME`` when it is not listed)."""
    top = module.split(".")[0]
    return MODULES.get(top, ("python3-" + top.replace("_", "-"), top))[0]


def pip_name(module: str) -> str:
    """The PyPI distribution that provides the top-level ``module``."""
    top = module.split(".")[0]
    return MODULES.get(top, ("", top))[1]


def unimportable(modules: Iterable[str]) -> dict[str, str]:
    """Those of ``modules`` that cannot be imported, in the order given.

    Each maps to ``""`` when it is not installed at all, else to the error
    that stopped its import (a broken install, a missing shared library).
    A module missing underneath one of them (python-daemon's lockfile) is
    named itself.
    """
    failed: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            failed.setdefault((exc.name or name).split(".")[0], "")
        except ImportError as exc:
            failed.setdefault(name, str(exc))
    return failed


def _debian_python() -> bool:
    """Whether this is Debian's own interpreter, whose modules come from apt (not a virtualenv)."""
    return sys.prefix == sys.base_prefix and sys.executable.startswith(("/usr/bin/", "/bin/"))


def install_hint(modules: Iterable[str]) -> str:
    """``apt-get install python3-lxml ...`` (and the pip command where this is not Debian's interpreter)."""
    modules = list(modules)
    hint = "apt-get install " + " ".join(dict.fromkeys(debian_package(m) for m in modules))
    if not _debian_python():
        hint += f", or {sys.executable} -m pip install " + " ".join(dict.fromkeys(pip_name(m) for m in modules))
    return hint


def missing_message(prog: str, failed: dict[str, str]) -> str:
    """The one line a command prints when it cannot start for want of ``failed`` modules."""
    names = list(failed)
    broken = [f"Python module {name} cannot be imported ({reason})" for name, reason in failed.items() if reason]
    absent = [name for name, reason in failed.items() if not reason]
    parts = []
    if len(absent) == 1:
        parts.append(f"Python module {absent[0]} is missing")
    elif absent:
        parts.append(f"Python modules {', '.join(absent)} are missing")
    parts += broken
    return f"{prog}: cannot start: {'; '.join(parts)} ({install_hint(names)})"


def run_guarded(prog: str, requires: Iterable[str], load_main: Callable[[], Callable[..., int]],
                argv: list[str] | None = None) -> int:
    """Import ``requires``, then the real entry point from ``load_main()``, then run it with ``argv``.

    A module in ``requires`` (or a third-party module the program imports
    on the way) that cannot be imported ends the command with
    :func:`missing_message` on stderr and :data:`EXIT_MISSING_MODULE`; a
    missing module of the project itself is a broken install and raises.
    """
    failed = unimportable(requires)
    if not failed:
        try:
            main = load_main()
        except ModuleNotFoundError as exc:
            if not exc.name or exc.name.split(".")[0] not in MODULES:
                raise
            failed = {exc.name.split(".")[0]: ""}
        else:
            return main(argv)
    print(missing_message(prog, failed), file=sys.stderr)
    return EXIT_MISSING_MODULE
