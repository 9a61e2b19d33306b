"""Pid files that cannot go stale: the running daemon holds an fcntl lock on it.

A file left behind by a crashed daemon is not locked, so it is recognised as
stale and replaced; a second instance finds the lock held and refuses to start.
"""

from __future__ import annotations

import errno
import fcntl
import os


class PidFileError(Exception):
    """The pid file is held by a running instance, or cannot be written."""


class PidFile:
    """A locked pid file at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def _holder(self) -> int | None:
        """Pid of the running instance holding the lock, else None."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PidFileError(f"cannot read pid file {self.path}: {exc.strerror}") from None
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                content = os.read(fd, 32).decode("ascii", "replace").strip()
                return int(content) if content.isdigit() else -1
            return None
        finally:
            os.close(fd)

    def check_free(self) -> None:
        """Raise :class:`PidFileError` when another instance runs."""
        pid = self._holder()
        if pid is not None:
            shown = f"pid {pid}" if pid > 0 else "pid unknown"
            raise PidFileError(f"already running ({shown}, pid file {self.path})")

    def acquire(self) -> None:
        """Lock the file and write our pid (replacing a stale file)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PidFileError(f"cannot create pid file {self.path}: {exc.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self.check_free()
            raise PidFileError(f"pid file {self.path} is locked by another process") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove the file and drop the lock."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
