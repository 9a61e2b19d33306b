"""Descriptor limits shared by the daemons."""

from __future__ import annotations

import resource


def raise_nofile_limit(wanted: int = 65536) -> int:
    """Raise the soft open-files limit towards ``wanted`` (capped by the hard limit); return it.

    The usual soft default of 1024 is too low for a daemon holding many
    connections at once (a balancer polling a thousand agents, an agent
    answering a flood of refused peers): past it, accept() fails with EMFILE.
    Returns the soft limit in force afterwards (``resource.RLIM_INFINITY`` if
    unlimited); a refusal to raise it (a sandbox) leaves it as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
