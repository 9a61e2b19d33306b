"""A growing pool of reusable threads: one per busy connection, none created per call.

Starting a thread costs far more than answering get_state, so finished
workers wait for the next connection instead of exiting. When every worker
is busy (say, with slow clients) a new one is started, up to a maximum, so
a stuck client never delays the others; workers beyond ``keep_idle`` leave
after ``idle_timeout`` seconds without work.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)

Job = Callable[[], None]


class WorkerPool:
    """Runs jobs on idle workers, starting new ones while under ``max_workers``."""

    def __init__(self, max_workers: int = 256, keep_idle: int = 8, idle_timeout: float = 60.0,
                 name: str = "lbagent-worker") -> None:
        self.max_workers = max_workers
        self.keep_idle = keep_idle
        self.idle_timeout = idle_timeout
        self.name = name
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._total = 0
        self._closing = False

    @property
    def size(self) -> int:
        """Workers alive now (busy or idle)."""
        return self._total

    @property
    def idle(self) -> int:
        """Workers waiting for a job and not yet reserved by :meth:`submit`."""
        return self._idle

    @property
    def has_room(self) -> bool:
        """Whether :meth:`submit` would take a job now (an idle worker, or room for a new one).

        Only the thread that submits may rely on it: workers only ever add
        room, except one leaving after its idle timeout, which then gives
        its place back (so a new one can start).
        """
        with self._lock:
            return not self._closing and (self._idle > 0 or self._total < self.max_workers)

    def submit(self, job: Job) -> bool:
        """Run ``job`` on a worker; False (job not run) when all ``max_workers`` are busy."""
        with self._lock:
            if self._closing:
                return False
            if self._idle > 0:
                self._idle -= 1  # reserved: that worker will take this job
                self._jobs.put(job)
                return True
            if self._total >= self.max_workers:
                return False
            self._total += 1
        threading.Thread(target=self._work, args=(job,), name=self.name, daemon=True).start()
        return True

    def close(self) -> None:
        """Let idle workers exit; busy ones exit after their job."""
        with self._lock:
            self._closing = True
            for _ in range(self._total):
                self._jobs.put(None)

    def _work(self, job: Job | None) -> None:
        while job is not None:
            try:
                job()
            except Exception:  # a job must never take its worker down silently
                log.exception("connection handler failed")
            with self._lock:
                if self._closing:
                    self._total -= 1
                    return
                self._idle += 1
            job = self._next()
        with self._lock:
            self._total -= 1

    def _next(self) -> Job | None:
        """Wait for a job reserved by submit(); None when this worker should exit."""
        while True:
            try:
                return self._jobs.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    if not self._jobs.empty():
                        continue  # a job was queued for an idle worker meanwhile
                    if self._total > self.keep_idle:
                        self._idle -= 1
                        return None  # _work counts the exit
