"""Custom variables: reading each admin-defined value, bounded in time.

Each reader returns a value or raises :class:`VariableProblem`; a variable
with a problem is left out of the sample (absent), and the problem is logged
once per change of outcome so a broken command does not flood the log.
Command variables run concurrently, each in its own process group that is
killed with the group when it overruns its timeout, so one hanging command
delays a sample by at most its own timeout. On stop, running commands are
killed at once rather than waited for. Count variables (the length of a
queue kept as files in a directory) are counted side by side with the
commands, each bounded by its timeout and by :data:`MAX_COUNT`.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
import selectors
import signal
import stat
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Sequence

import psutil

from common.ratelimit import ProblemLog
from lbagent.config import CustomVariable
from lbagent.values import BadValue, Value, parse_output

log = logging.getLogger(__name__)

MAX_OUTPUT = 64 * 1024   # more than any sane one-value command prints
MAX_FILE_READ = 4096     # the first line is all that counts
MAX_WORKERS = 32
# Commands see a predictable locale, so numbers come out with a '.' decimal point.
COMMAND_ENV_OVERRIDES = {"LC_ALL": "C"}


class VariableProblem(Exception):
    """Why a custom variable has no value this time (a stable, loggable reason)."""


class Stopped(Exception):
    """The sample was cut short because the agent is stopping: it must not be published.

    Its commands were killed, so it lacks their values; a balancer served it
    would see the node wrongly (missing variables) around a restart.
    """


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class RunningCommands:
    """The commands running now, so that stopping can kill them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._closed = False

    def add(self, proc: subprocess.Popen) -> None:
        """Track ``proc``; one started after :meth:`kill_all` is killed at once."""
        with self._lock:
            self._procs.add(proc)
            if self._closed:
                _kill_group(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        """``proc`` has been reaped."""
        with self._lock:
            self._procs.discard(proc)

    @property
    def closed(self) -> bool:
        """Whether :meth:`kill_all` was called."""
        return self._closed

    def kill_all(self) -> None:
        """Kill the process group of every running command, and of any started later."""
        with self._lock:
            self._closed = True
            for proc in self._procs:
                _kill_group(proc)


def run_command(command: str, timeout: float, running: RunningCommands | None = None) -> Value:
    """Run ``command`` with /bin/sh -c and parse the first line of its output.

    The command gets its own session and process group; past ``timeout``
    seconds the whole group is killed. ``running``, if given, tracks the
    command while it runs. Raises :class:`VariableProblem` on a timeout, a
    non-zero exit, too much output or output that is not a value.
    """
    env = dict(os.environ, **COMMAND_ENV_OVERRIDES)
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True, env=env)
    except OSError as exc:
        raise VariableProblem(f"cannot start /bin/sh: {exc.strerror or exc}") from None
    if running is not None:
        running.add(proc)
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    try:
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _kill_group(proc)
                    raise VariableProblem(f"timed out after {timeout:g} s (killed)")
                if not sel.select(remaining):
                    continue
                data = os.read(fd, 65536)
                if not data:
                    break
                size += len(data)
                if size > MAX_OUTPUT:
                    _kill_group(proc)
                    raise VariableProblem(f"printed more than {MAX_OUTPUT} bytes (killed)")
                chunks.append(data)
        try:
            status = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise VariableProblem(f"timed out after {timeout:g} s (killed)") from None
    finally:
        proc.stdout.close()
        if proc.returncode is None:
            # Killed already on a timeout; on any other way out (an unexpected
            # exception) this is what keeps the command from running on unseen.
            _kill_group(proc)
            try:
                proc.wait(1.0)  # reap the killed shell; SIGKILL is prompt
            except subprocess.TimeoutExpired:
                log.warning("command %r (pid %d) did not die after SIGKILL", command, proc.pid)
        if running is not None:
            running.discard(proc)
    if status != 0:
        what = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        raise VariableProblem(what)
    try:
        return parse_output(b"".join(chunks))
    except BadValue as exc:
        raise VariableProblem(f"unusable output: {exc}") from None


def read_file_value(path: str) -> Value:
    """The first line of the regular file ``path``, parsed as a value."""
    try:
        # O_NONBLOCK: a FIFO put at the path must not stall the sampler.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise VariableProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VariableProblem(f"{path} is not a regular file")
        data = os.read(fd, MAX_FILE_READ)
    except OSError as exc:
        raise VariableProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        return parse_output(data)
    except BadValue as exc:
        raise VariableProblem(f"unusable content in {path}: {exc}") from None


def disk_used_pct(path: str) -> float:
    """Used space of the file system holding ``path``, in % (2 decimals)."""
    try:
        return round(psutil.disk_usage(path).percent, 2)
    except OSError as exc:
        raise VariableProblem(f"cannot stat {path}: {exc.strerror or exc}") from None


MAX_COUNT = 1_000_000   # a count variable stops here: the queue is at least this long
_DEADLINE_EVERY = 4096   # entries between two looks at the clock
_GLOB_MAGIC = re.compile(r"[*?[]")
COUNT_MARGIN = 5.0       # seconds a sample waits for a count beyond its timeout (a busy pool, a slow start)


def _name_matcher(pattern: str):
    """A test of one directory entry's name against a glob component, hidden names as the shell treats them."""
    hidden_ok = pattern.startswith(".")
    if pattern in ("*", "**"):
        return lambda name: name[0] != "."
    regex = re.compile(fnmatch.translate(pattern))
    if hidden_ok:
        return regex.match
    return lambda name: name[0] != "." and regex.match(name) is not None


def _directories(dirpart: str) -> list[str]:
    """The directories a count reads: ``dirpart`` itself, or those it matches when it holds a glob."""
    if not _GLOB_MAGIC.search(dirpart):
        return [dirpart]
    return sorted(d for d in glob.iglob(dirpart) if os.path.isdir(d))


def count_entries(path: str, timeout: float, cap: int = MAX_COUNT) -> int:
    """The number of directory entries ``path`` names, as the shell would expand it (at most ``cap``).

    When the last component of ``path`` holds a glob character (``*``, ``?``
    or ``[``), the value is the number of entries of the directory part that
    match it; otherwise ``path`` must be a directory, and every entry in it
    counts (like ``DIR/*``). Names starting with ``.`` count only when the
    pattern starts with ``.``. Entries are counted, never opened or descended
    into (``**`` is a plain ``*``); the directory part may hold glob
    characters too, and every directory it matches is counted. Counting
    stops at ``cap`` and raises :class:`VariableProblem` past ``timeout``
    seconds, when no directory is there, or when ``path`` without a glob is
    not a directory.
    """
    deadline = time.monotonic() + timeout
    path = path.rstrip("/") or "/"
    dirpart, last = os.path.split(path)
    if _GLOB_MAGIC.search(last):
        match = _name_matcher(last)
        dirs = _directories(dirpart or ".")
    else:
        match = _name_matcher("*")
        dirs = _directories(path)
        if len(dirs) == 1 and os.path.exists(dirs[0]) and not os.path.isdir(dirs[0]):
            raise VariableProblem(f"{path} is not a directory: give a directory, or a glob pattern such as "
                                  "DIR/*.job")
    if not dirs:
        raise VariableProblem(f"no directory matches {dirpart if _GLOB_MAGIC.search(last) else path}")
    count = 0
    seen = 0
    for d in dirs:
        try:
            with os.scandir(d) as entries:
                for entry in entries:
                    seen += 1
                    if seen % _DEADLINE_EVERY == 0 and time.monotonic() > deadline:
                        raise VariableProblem(f"still counting after {timeout:g} s ({count} so far in {d}); "
                                              "raise the timeout")
                    if match(entry.name):
                        count += 1
                        if count >= cap:
                            return cap
        except OSError as exc:
            raise VariableProblem(f"cannot list {d}: {exc.strerror or exc}") from None
    return count


def processes_running(variables: Sequence[CustomVariable], exclude: int | None = None) -> dict[str, bool]:
    """For each process variable, whether any process's name or full command line matches.

    One pass over the process table serves every variable; ``exclude`` is a
    pid to ignore (the agent itself, whose command line names its config).
    """
    found = {v.name: False for v in variables}
    pending = list(variables)
    if not pending:
        return found
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        info = proc.info
        if info["pid"] == exclude:
            continue
        name = info.get("name") or ""
        cmdline = " ".join(info.get("cmdline") or ())
        for var in list(pending):
            if var.pattern.search(name) or (cmdline and var.pattern.search(cmdline)):
                found[var.name] = True
                pending.remove(var)
        if not pending:
            break
    return found


class CustomSampler:
    """Reads all custom variables for one sample; remembers outcomes for logging."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lbagent-cmd")
        self._running = RunningCommands()
        self._problems = ProblemLog(log)
        # Counts submitted and not finished: one stuck on a hung file system is not started again.
        self._counting: dict[str, Future] = {}

    def close(self) -> None:
        """Kill running commands and stop the command threads, without waiting for them.

        A sample in progress then ends promptly (its commands have no value).
        """
        self._running.kill_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def sample(self, variables: Sequence[CustomVariable]) -> dict[str, Value]:
        """Return the values of ``variables`` that could be read this time.

        Raises :class:`Stopped` once :meth:`close` has been called, even
        mid-sample: the values are then incomplete.
        """
        if self._running.closed:
            raise Stopped
        values: dict[str, Value] = {}
        outcomes: dict[str, str | None] = {}
        # The process table is scanned before commands start, so a command
        # such as "pgrep gdm" cannot make a GDM pattern match itself.
        procs = [v for v in variables if v.type == "process"]
        if procs:
            try:
                values.update(processes_running(procs, exclude=os.getpid()))
            except psutil.Error as exc:
                for v in procs:
                    outcomes[v.name] = f"cannot list processes: {exc}"
        try:
            futures: dict[str, Future] = {
                v.name: self._pool.submit(run_command, v.command, v.timeout, self._running)
                for v in variables if v.type == "command"
            }
            stuck: set[str] = set()
            for v in variables:
                if v.type != "count":
                    continue
                previous = self._counting.get(v.name)
                if previous is not None and not previous.done():
                    stuck.add(v.name)
                else:
                    futures[v.name] = self._counting[v.name] = self._pool.submit(count_entries, v.path, v.timeout)
        except RuntimeError:  # the pool was shut down by close() meanwhile
            if self._running.closed:
                raise Stopped from None
            raise
        for var in variables:
            try:
                if var.type == "constant":
                    values[var.name] = var.value
                elif var.type == "disk":
                    values[var.name] = disk_used_pct(var.path)
                elif var.type == "file":
                    values[var.name] = read_file_value(var.path)
                elif var.type == "command":
                    # run_command is bounded by its timeout; the margin covers reaping.
                    values[var.name] = futures[var.name].result(timeout=var.timeout + 5.0)
                elif var.type == "count":
                    if var.name in stuck:
                        raise VariableProblem("the previous count has not finished (a file system not answering?)")
                    # count_entries watches its own timeout between entries; the margin covers a slow
                    # start (a busy pool). Only a system call that never returns outlasts it.
                    values[var.name] = futures[var.name].result(timeout=var.timeout + COUNT_MARGIN)
            except VariableProblem as exc:
                outcomes[var.name] = str(exc)
            except FutureTimeout:
                waited = var.timeout + (COUNT_MARGIN if var.type == "count" else 5.0)
                outcomes[var.name] = f"no answer after {waited:g} s" + (
                    " (a file system not answering?)" if var.type == "count" else "")
            except Exception as exc:  # never let one variable break the sample
                outcomes[var.name] = f"unexpected error: {exc!r}"
        if self._running.closed:
            # Stopping: commands failed because they were killed; nothing to report or publish.
            raise Stopped
        for var in variables:
            self._problems.note(var.name, outcomes.get(var.name), f"variable {var.name} ({var.type}, line {var.line})",
                                f"variable {var.name} has a value again")
        self._problems.keep(v.name for v in variables)
        self._counting = {name: f for name, f in self._counting.items() if not f.done()}
        return values
