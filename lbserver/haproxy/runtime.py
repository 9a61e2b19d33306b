"""A client of HAProxy's runtime API (the stats socket at level admin): commands in, answers out, one connection.

The connection is put in prompt mode, so several commands share it: each
answer ends with HAProxy's ``"\\n> "`` prompt, which no answer used here
contains. :meth:`RuntimeApi.ask` sends commands and waits for all their
answers before more are sent, so HAProxy never stalls writing a long answer
(``show map``) while this side is still writing. Every step is bounded by
one deadline. Errors are :class:`RuntimeApiError` (or OSError).

Threading: blocking calls, made on the session map's worker thread.
"""

from __future__ import annotations

import socket
import time

PROMPT = "\n> "
MAX_ANSWER = 64 * 1024 * 1024
"""Bytes read from HAProxy at most in one connection (a map of a million users is some 60 MB)."""
BATCH = 500
"""Commands sent at once before their answers are read (see :meth:`RuntimeApi.ask`)."""


class RuntimeApiError(Exception):
    """HAProxy's runtime API did not answer as expected."""


class RuntimeApi:
    """One connection to the runtime API socket at ``path``, all of it within ``timeout`` seconds."""

    def __init__(self, path: str, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._buf = bytearray()
        self._read = 0
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            self.ask(["prompt"])
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> RuntimeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Say goodbye (best effort) and close."""
        try:
            self._sock.settimeout(0.1)
            self._sock.sendall(b"quit\n")
        except OSError:
            pass
        self._sock.close()

    def ask(self, commands: list[str]) -> list[str]:
        """Send ``commands`` (one line each) and return their answers, prompt removed, in order.

        They go in batches of :data:`BATCH`, each batch's answers read
        before the next is sent: HAProxy stops reading commands while it
        cannot write their answers, so sending thousands at once would
        leave both sides waiting on each other until the timeout.
        """
        answers: list[str] = []
        for start in range(0, len(commands), BATCH):
            answers.extend(self._ask(commands[start:start + BATCH]))
        return answers

    def _ask(self, commands: list[str]) -> list[str]:
        self._sock.settimeout(self._left())
        self._sock.sendall("".join(c + "\n" for c in commands).encode("ascii"))
        answers: list[str] = []
        marker, buf, searched = PROMPT.encode(), self._buf, 0
        while len(answers) < len(commands):
            end = buf.find(marker, searched)
            if end >= 0:
                answers.append(buf[:end].decode("utf-8", "replace"))
                del buf[:end + len(marker)]
                searched = 0
                continue
            searched = max(0, len(buf) - len(marker) + 1)  # a long answer is searched once, not at each read
            self._sock.settimeout(self._left())
            data = self._sock.recv(1 << 16)
            if not data:
                raise RuntimeApiError("HAProxy closed the runtime API connection")
            self._read += len(data)
            if self._read > MAX_ANSWER:
                raise RuntimeApiError(f"over {MAX_ANSWER} bytes from the runtime API")
            buf += data
        return answers

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("runtime API timed out")
        return left


def process_id(info: str) -> str:
    """The ``Pid`` of ``show info``'s answer (a new one after a restart or a reload); RuntimeApiError without one."""
    for line in info.splitlines():
        name, _, value = line.partition(":")
        if name == "Pid":
            return value.strip()
    raise RuntimeApiError("no Pid in 'show info': is this HAProxy's runtime API?")


__all__ = ["PROMPT", "RuntimeApi", "RuntimeApiError", "process_id"]
