"""The connection worker pool: reuse, growth while busy, the cap, idle exit."""

import threading

import pytest

from tests.support import wait_until
from lbagent.workers import WorkerPool

pytestmark = pytest.mark.unit


def test_workers_are_reused():
    pool = WorkerPool(max_workers=4, keep_idle=2)
    seen = []
    try:
        for _ in range(5):
            done = threading.Event()
            assert pool.submit(lambda: (seen.append(threading.current_thread().ident), done.set()))
            assert done.wait(5)
            wait_until(lambda: pool.idle == 1, timeout=5, what="worker idle again")
        assert len(set(seen)) == 1 and pool.size == 1
    finally:
        pool.close()


def test_a_stuck_job_does_not_block_the_next_and_the_cap_holds():
    pool = WorkerPool(max_workers=2, keep_idle=0, idle_timeout=0.2)
    release = threading.Event()
    ran = threading.Event()
    try:
        assert pool.submit(release.wait)            # stuck until released
        assert pool.submit(lambda: (ran.set(), release.wait()))
        assert ran.wait(5)                          # ran beside the stuck one
        assert not pool.submit(lambda: None)        # both busy, cap reached: refused
        release.set()
        # With keep_idle=0 the idle workers leave after idle_timeout.
        wait_until(lambda: pool.size == 0, timeout=5, what="idle workers gone")
        done = threading.Event()
        assert pool.submit(done.set) and done.wait(5)
    finally:
        release.set()
        pool.close()


def test_failing_job_keeps_the_worker():
    pool = WorkerPool(max_workers=1, keep_idle=1)
    try:
        assert pool.submit(lambda: 1 / 0)
        wait_until(lambda: pool.idle == 1, timeout=5, what="worker idle after failure")
        done = threading.Event()
        assert pool.submit(done.set) and done.wait(5)
    finally:
        pool.close()
    wait_until(lambda: pool.size == 0, timeout=5, what="workers gone after close")


def test_has_room_says_whether_a_job_would_be_taken_now():
    pool = WorkerPool(max_workers=1, keep_idle=1)
    release = threading.Event()
    try:
        assert pool.has_room
        assert pool.submit(release.wait)
        assert not pool.has_room and not pool.submit(lambda: None)  # the one worker is busy
        release.set()
        wait_until(lambda: pool.has_room, what="the worker idle again")
        assert pool.submit(lambda: None)
    finally:
        release.set()
        pool.close()
    assert not pool.has_room  # a closed pool takes nothing
