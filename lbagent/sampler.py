"""Background sampling: one immutable :class:`Sample` at a time, swapped atomically.

The sampler thread reads built-in and custom variables and the sessions every
``sample-interval`` seconds and replaces :attr:`Sampler.current` with a new
frozen object; request threads only read that attribute (a single reference
load, atomic in CPython), so they never wait for sampling.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import xmlrpc.client
from dataclasses import dataclass

from common.version import __version__
from lbagent.config import AgentConfig
from lbagent.drain import DrainWatch
from lbagent.metrics import Builtins
from lbagent.sessions import SessionSampler
from lbagent.values import Value
from lbagent.variables import CustomSampler, Stopped

__all__ = ["Sample", "Sampler", "Stopped", "make_sample"]

log = logging.getLogger(__name__)

STOP_WAIT = 2.0  # seconds stop() waits for the sampling thread once its commands are killed


@dataclass(frozen=True)
class Sample:
    """One reading of every variable, as the ``get_state()`` reply, ready to send."""

    state: dict
    """The reply as a struct (callers must not modify it)."""
    response: bytes
    """The same, marshalled once as an XML-RPC methodResponse (UTF-8)."""


def make_sample(hostname: str, sampled_at: float, variables: dict[str, Value], users: list[str],
                sessions: list[dict] = ()) -> Sample:
    """Build a :class:`Sample`: the ``get_state`` reply and its marshalled response."""
    state = {
        "hostname": hostname,
        "agent_version": __version__,
        "sampled_at": round(sampled_at, 3),
        "variables": dict(variables),
        "users": list(users),
        "sessions": list(sessions),
    }
    response = xmlrpc.client.dumps((state,), methodresponse=True, encoding="utf-8")
    return Sample(state=state, response=response.encode("utf-8", "xmlcharrefreplace"))


class Sampler:
    """Owns the sampling thread and the current sample."""

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._builtins = Builtins()
        self._drain = DrainWatch()
        self._custom = CustomSampler()
        self._sessions = SessionSampler()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.current: Sample | None = None

    def take(self) -> Sample:
        """Read every variable now, publish and return the new sample.

        Raises :class:`Stopped`, publishing nothing, when :meth:`stop` cut the
        sample short: the previous, complete sample stays current for the
        requests still being served while the agent stops.
        """
        config = self._config
        values = self._builtins.read()
        sessions = self._sessions.sample(config.sessions)
        users = sorted({s["user"] for s in sessions})
        values["NBUSERS"] = len(users)
        values["NBSESSIONS"] = len(sessions)
        values.update(self._drain.read(config.drain_file, config.nologin_file))
        values.update(self._custom.sample(config.variables))
        sample = make_sample(socket.gethostname(), time.time(), values, users, sessions)
        if self._stopping:
            raise Stopped
        self.current = sample
        return sample

    def start(self) -> None:
        """Take the first sample (so the first request has data), then sample in the background."""
        self.take()
        self._thread = threading.Thread(target=self._loop, name="lbagent-sampler", daemon=True)
        self._thread.start()

    def reconfigure(self, config: AgentConfig) -> None:
        """Use ``config`` from now on, and sample again at once."""
        self._config = config
        self._wake.set()

    def stop(self) -> None:
        """End the sampling thread promptly: running commands are killed, not waited for."""
        self._stopping = True
        self._wake.set()
        self._custom.close()  # a sample in progress then ends at once, without those commands
        self._sessions.close()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT)
            if self._thread.is_alive():
                log.warning("the sampling thread did not end within %g s; stopping without it", STOP_WAIT)

    def alive(self) -> bool:
        """Whether the sampling thread runs (False before start and after stop)."""
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        next_at = time.monotonic() + self._config.sample_interval
        while not self._stopping:
            self._wake.wait(max(0.0, next_at - time.monotonic()))
            if self._stopping:
                break
            self._wake.clear()
            started = time.monotonic()
            try:
                self.take()
            except Stopped:
                break
            except Exception:  # a bad reading must not end sampling; the old sample stays
                if self._stopping:
                    break  # failed because stop() pulled its commands away
                log.exception("sampling failed; keeping the previous sample")
            # Start-to-start spacing, but never back-to-back when a sample overruns.
            next_at = max(started + self._config.sample_interval, time.monotonic() + 0.1)
