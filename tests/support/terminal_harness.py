"""Run the terminal service alone with a fixed, deterministic answer function.

    python -m tests.support.terminal_harness --listen 127.0.0.1:PORT --hosts a,b --groups g1:x,y

Answers (all deterministic, so tests can assert exact bodies):

* no group: round robin over ``--hosts``;
* ``group=NAME``: round robin over that group's hosts (``--groups`` entries
  ``NAME:h1,h2`` separated by ``;``, or the option repeated); unknown -> 404;
* ``group=boom``: the answer function raises (-> 503);
* ``user=alice``: always ``--alice-host`` (default ``alice-host``), whatever the group;
* ``group=echo``: echoes ``group|user`` back, to check query decoding.

Runs until SIGTERM or SIGINT. Prints ``ready`` on stdout once serving.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import socket
import sys

from lbserver.config import ServerConfig
from lbserver.terminal.service import TerminalService, UnknownGroup, new_event_loop


def terminal_config(**settings) -> ServerConfig:
    """A configuration without nodes, with the given ``<lbservice>`` settings and the declared defaults."""
    return ServerConfig(path="-", nodes={}, groups={}, default_group="", **settings)


def make_answer(hosts: list[str], groups: dict[str, list[str]], alice: str):
    """The deterministic answer function described in the module docstring."""
    cycles = {name: itertools.cycle(members) for name, members in groups.items()}
    default = itertools.cycle(hosts)

    def answer(group: str | None, user: str | None) -> str:
        if group == "boom":
            raise RuntimeError("selection exploded")
        if group == "echo":
            return f"{group}|{user}"
        if group is not None and group not in cycles:
            raise UnknownGroup(group)
        if user == "alice":
            return alice
        return next(cycles[group] if group is not None else default)

    return answer


def parse_groups(values: list[str]) -> dict[str, list[str]]:
    """``["g1:x,y;g2:z"]`` -> ``{"g1": ["x", "y"], "g2": ["z"]}``."""
    groups: dict[str, list[str]] = {}
    for value in values:
        for item in filter(None, value.split(";")):
            name, _, members = item.partition(":")
            groups[name] = [m for m in members.split(",") if m]
    return groups


def listen_socket(spec: str) -> socket.socket:
    """A listening TCP socket for ``HOST:PORT`` or ``[V6]:PORT``."""
    host, _, port = spec.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    return sock


async def serve(args: argparse.Namespace) -> None:
    settings = {k: v for k, v in (("idle_timeout", args.idle_timeout), ("max_connections", args.max_connections))
                if v is not None}
    svc = TerminalService(make_answer(args.hosts.split(","), parse_groups(args.groups), args.alice_host),
                          terminal_config(**settings))
    await svc.start(listen_socket(args.listen))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await svc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="HOST:PORT or [V6]:PORT")
    parser.add_argument("--hosts", default="host-a,host-b")
    parser.add_argument("--groups", action="append", default=[])
    parser.add_argument("--alice-host", default="alice-host")
    parser.add_argument("--idle-timeout", type=float, help="default: that of <lbservice>")
    parser.add_argument("--max-connections", type=int, help="default: that of <lbservice>")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop even if uvloop is installed")
    args = parser.parse_args(argv)
    loop = asyncio.new_event_loop() if args.no_uvloop else new_event_loop()
    try:
        loop.run_until_complete(serve(args))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
