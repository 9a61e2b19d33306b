"""The fixtures every test may use, and the rule that every test says what it needs to run.

The helpers themselves live in :mod:`tests.support` and are imported from
there like any package. This file only registers fixtures (real processes,
a real BIND, a real SMTP server) and checks, at collection, that each test
carries exactly one kind marker (``unit``, ``daemon`` or ``system``; see
pytest.ini and docs/development.md, "Tests") and starts no more than its
kind allows.
"""

from __future__ import annotations

import pytest

from tests.support.dns import (knot_server, named_pair, named_server, smtp_auth_server,  # noqa: F401 (fixtures)
                               smtp_server)
from tests.support.kinds import KINDS, kind_guard
from tests.support.processes import Procs


@pytest.fixture
def procs():
    """Factory for real processes, all stopped after the test."""
    p = Procs()
    yield p
    p.stop_all()


@pytest.fixture(autouse=True)
def _kind_guard(request: pytest.FixtureRequest):
    """Hold each test to what its kind marker allows it to start (see :mod:`tests.support.kinds`)."""
    mark = next(m.name for m in request.node.iter_markers() if m.name in KINDS)
    with kind_guard(mark):
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run a test that does not say, by exactly one kind marker, what it needs."""
    wrong = []
    for item in items:
        kinds = {mark.name for mark in item.iter_markers() if mark.name in KINDS}
        if len(kinds) != 1:
            wrong.append(f"{item.nodeid}: {' and '.join(sorted(kinds)) or 'no kind marker'}")
    if wrong:
        raise pytest.UsageError(
            "every test carries exactly one of the markers " + ", ".join(KINDS)
            + " (a module's pytestmark or the test's own decorator; see docs/development.md, Tests):\n  "
            + "\n  ".join(wrong))
