"""Long work on the event loop, cut into slices so terminals are answered in between.

The balancer answers terminals on the same loop that polls the agents and
weighs them. At ten thousand agents, weighing them and installing the new
snapshot is a few hundred milliseconds of CPU; done in one go, every
terminal that asks meanwhile waits that long. So that work is written as a
generator of :data:`Steps` that yields every few nodes; :func:`run_sliced`
drives it on the loop, giving the loop back (``await asyncio.sleep(0)``)
each time :data:`SLICE` seconds of work have passed, and :func:`run_whole`
drives the same steps at once where nothing waits (a drain, a reload, the
tests). Nothing here uses threads.
"""

from __future__ import annotations

import asyncio
import time
from typing import Generator, TypeVar

T = TypeVar("T")

Steps = Generator[None, None, T]
"""Work that yields (None) wherever it may be paused, and returns its result."""

SLICE = 0.005
"""Seconds of work between two returns to the loop: a terminal waits about this long at most."""

STEP_NODES = 64
"""Nodes handled between two points where steps yield (so the driver may pause them)."""


def run_whole(steps: Steps[T]) -> T:
    """Run ``steps`` to the end at once; return their result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


async def run_sliced(steps: Steps[T], budget: float = SLICE) -> T:
    """Run ``steps`` on the loop, giving it back every ``budget`` seconds of work; return their result."""
    clock = time.perf_counter
    end = clock() + budget
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        if clock() >= end:
            await asyncio.sleep(0)
            end = clock() + budget


__all__ = ["SLICE", "STEP_NODES", "Steps", "run_sliced", "run_whole"]
