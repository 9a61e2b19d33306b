"""Files holding a secret (agent shared secret, admin token, TSIG key): reading and permission checks.

A secret file holds the secret on its first line; surrounding blanks and the
line end are dropped. Errors name the file and what is wrong, never its
content. Loose permissions are a warning, not an error: a daemon that
refused to start at boot because a package or an admin left a file at 0644
would turn a hardening advice into an outage of the whole site.
"""

from __future__ import annotations

import grp
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


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def permission_problem(path: str) -> str | None:
    """A warning text when ``path`` is open to more than this daemon, else None (also when it is missing).

    Any access by others is a problem. Access by the file's group is one
    only when that group is not one of this process's groups: ``root:mille-xterm
    0640`` read by a daemon running as group mille-xterm is the intended way
    to share a file with an unprivileged daemon.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    fix = f"restrict it with: chmod 600 {path}"
    if mode & stat.S_IRWXO:
        return f"{path} is accessible by others (mode {mode:04o}); {fix}"
    if mode & stat.S_IRWXG and st.st_gid != os.getegid() and st.st_gid not in os.getgroups():
        return (f"{path} is accessible by members of group {_group_name(st.st_gid)} (mode {mode:04o}), "
                f"not a group this daemon runs as; {fix}, or give it this daemon's group")
    return None


__all__ = ["MAX_SECRET_FILE_BYTES", "SecretFileError", "permission_problem", "read_secret_file"]
