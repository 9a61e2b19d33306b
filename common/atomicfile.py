"""Write a file so that readers see either the old or the new content, never half."""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_atomic(path: str, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` through a synced temporary file renamed over it.

    The file gets ``mode`` (0600 by default: the temporary file never exists
    with looser permissions). Raises OSError; nothing is left behind on failure.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
