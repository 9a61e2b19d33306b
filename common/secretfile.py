"""Files holding a secret (agent shared secret, admin token, TSIG key): reading and permission checks.

A secret file holds the secret on its first line; surrounding blanks and the
line end are dropped. Errors name the file and what is wrong, never its
content. Loose permissions are a warning, not an error: a file that is
readable by a service group (mode 0640) is a legitimate setup, and a daemon
that refused to start at boot because a package or an admin left a file
at 0644 would turn a hardening advice into an outage.
"""

from __future__ import annotations

import os
import stat

MAX_SECRET_FILE_BYTES = 64 * 1024


class SecretFileError(Exception):
    """A secret file that cannot be used; ``str()`` is ``PATH: message``, never the secret."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def read_secret_file(path: str) -> str:
    """The secret on the first line of ``path``, stripped.

    Raises :class:`SecretFileError` when the file cannot be read, is too
    large, is not UTF-8 text, or its first line is empty.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise SecretFileError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecretFileError(path, f"larger than {MAX_SECRET_FILE_BYTES} bytes; expected one line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(path, "not UTF-8 text") from None
    lines = text.splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise SecretFileError(path, "empty first line: expected the secret there")
    return secret


def permission_problem(path: str) -> str | None:
    """A warning text when ``path`` is accessible by group or others, else None (also when it is missing)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"restrict it with: chmod 600 {path}")
    return None


__all__ = ["MAX_SECRET_FILE_BYTES", "SecretFileError", "permission_problem", "read_secret_file"]
