"""Drain at the source: the files that take this server out of every balancer's rotation.

While the agent's ``drain-file`` or ``nologin-file`` exists, every sample
reports the built-ins ``DRAINED`` = true and ``DRAIN_REASON`` = the file's
first line (the drain file wins when both exist); otherwise ``DRAINED`` =
false and ``DRAIN_REASON`` = ``""``. The files are looked at on every
sample (one failed ``open`` when they are absent), so no reload is needed.

``lbagent --drain [REASON]`` writes the drain file (:func:`write_drain`) and
``lbagent --enable`` removes it (:func:`remove_drain`).
"""

from __future__ import annotations

import logging
import os
import re

from common.atomicfile import write_atomic
from lbagent.values import MAX_STRING

log = logging.getLogger(__name__)

DEFAULT_REASON = "drained by admin"
"""What ``lbagent --drain`` writes when given no reason."""
EMPTY_DRAIN_REASON = "drained"
"""DRAIN_REASON for an empty drain file."""
EMPTY_NOLOGIN_REASON = "nologin"
"""DRAIN_REASON for an empty nologin file."""

READ_BYTES = 4096  # the first line is all that counts; /etc/nologin may hold a long message
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ufffe\uffff\ud800-\udfff]")


class DrainFileError(Exception):
    """The drain file could not be written or removed; ``str()`` says why."""


def first_line(path: str) -> str | None:
    """The first line of ``path``, cleaned for XML-RPC, or None when the file does not exist.

    A file that exists but cannot be read (no permission, a directory)
    counts as present with an empty line: what matters is that it exists.
    Control characters become spaces and the line is cut to
    :data:`~lbagent.values.MAX_STRING` characters.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(READ_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        log.debug("drain check: %s exists but cannot be read: %s", path, exc)
        return ""
    return _one_line(data.split(b"\n", 1)[0].decode("utf-8", errors="replace"))[:MAX_STRING]


def _one_line(text: str) -> str:
    """``text`` with control characters as spaces and white space runs collapsed."""
    return " ".join(_CONTROL.sub(" ", text).split())


def drain_source(drain_file: str | None, nologin_file: str | None) -> tuple[str, str] | None:
    """(the file that drains this server, its reason), or None when neither exists (None: that check is off)."""
    for path, empty in ((drain_file, EMPTY_DRAIN_REASON), (nologin_file, EMPTY_NOLOGIN_REASON)):
        if path:
            line = first_line(path)
            if line is not None:
                return path, line or empty
    return None


def drain_variables(drain_file: str | None, nologin_file: str | None) -> dict[str, bool | str]:
    """The built-ins ``DRAINED`` and ``DRAIN_REASON`` as the files say now."""
    return _variables(drain_source(drain_file, nologin_file))


def _variables(source: tuple[str, str] | None) -> dict[str, bool | str]:
    return {"DRAINED": source is not None, "DRAIN_REASON": source[1] if source else ""}


class DrainWatch:
    """Reads the drain state at each sample and logs when it changes."""

    def __init__(self) -> None:
        self._last: tuple[str, str] | None = None

    def read(self, drain_file: str | None, nologin_file: str | None) -> dict[str, bool | str]:
        """``DRAINED`` and ``DRAIN_REASON`` now."""
        source = drain_source(drain_file, nologin_file)
        if source != self._last:  # at start, not drained equals the initial None: nothing to say
            if source is not None:
                log.info("drained at the source by %s: %s", *source)
            else:
                log.info("no longer drained at the source: balancers may send new terminals here again")
        self._last = source
        return _variables(source)


def clean_reason(words: list[str] | str | None) -> str:
    """The reason ``lbagent --drain`` writes: one line, white space collapsed, a default when empty.

    Raises :class:`DrainFileError` for a reason longer than the agent reports.
    """
    text = " ".join(words) if isinstance(words, list) else (words or "")
    text = _one_line(text)
    if len(text) > MAX_STRING:
        raise DrainFileError(f"the reason is {len(text)} characters long; at most {MAX_STRING} are reported")
    return text or DEFAULT_REASON


def write_drain(path: str, reason: str) -> None:
    """Write ``reason`` to the drain file atomically (mode 0644), creating its directory.

    Raises :class:`DrainFileError` naming the file when it cannot be written.
    """
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
        write_atomic(path, reason + "\n", 0o644)
    except OSError as exc:
        raise DrainFileError(f"cannot write the drain file {path}: {exc.strerror or exc}") from None


def remove_drain(path: str) -> bool:
    """Remove the drain file; False when there was none.

    Raises :class:`DrainFileError` naming the file when it cannot be removed.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise DrainFileError(f"cannot remove the drain file {path}: {exc.strerror or exc}") from None
    return True


__all__ = ["DEFAULT_REASON", "DrainFileError", "DrainWatch", "clean_reason", "drain_source", "drain_variables",
           "first_line", "remove_drain", "write_drain"]
