"""Long work on the event loop, cut into slices so terminals are answered in between.

The balancer answers terminals on the same loop that polls the agents and
weighs them. At ten thousand agents, weighing them and installing the new
snapshot is a few hundred milliseconds of CPU; done in one go, every
terminal that asks meanwhile waits that long. So that work is written as a
:class:`Job`: a plain function that handles some of its items (nodes,
replies) in order, and one that gives the result once all are handled.
Neither knows about slicing. :func:`run_sliced` runs a job on the loop a
chunk of :attr:`Job.step` items at a time, giving the loop back
(``await asyncio.sleep(0)``) each time :data:`SLICE` seconds of work have
passed; :func:`run_whole` runs the same job at once where nothing waits (a
drain, a reload, the tests). Nothing here uses threads.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, TypeVar

T = TypeVar("T")

SLICE = 0.005
"""Seconds of work between two returns to the loop: a terminal waits about this long at most."""

STEP_NODES = 64
"""Items a job handles between two points where :func:`run_sliced` may give the loop back (see :attr:`Job.step`)."""


@dataclass(frozen=True)
class Job(Generic[T]):
    """Work over many items: ``each`` handles any run of ``items`` in order; ``finish`` then gives the result.

    Calling ``each`` once on all of ``items`` or several times on
    consecutive runs of them must come to the same; ``items`` is iterated
    once, lazily, so it may be a generator.
    """

    items: Iterable[Any]
    each: Callable[[Iterable[Any]], None]
    finish: Callable[[], T]
    step: int = STEP_NODES
    """Items per chunk when sliced: fewer where one item costs much (a reply to parse)."""


def run_whole(job: Job[T]) -> T:
    """Run ``job`` at once; return its result."""
    job.each(job.items)
    return job.finish()


async def run_sliced(job: Job[T], budget: float = SLICE) -> T:
    """Run ``job`` on the loop a chunk at a time, giving it back every ``budget`` seconds of work; return its result."""
    clock = time.perf_counter
    items = iter(job.items)
    end = clock() + budget
    while chunk := list(itertools.islice(items, job.step)):
        job.each(chunk)
        if clock() >= end:
            await asyncio.sleep(0)
            end = clock() + budget
    return job.finish()


__all__ = ["Job", "SLICE", "STEP_NODES", "run_sliced", "run_whole"]
