"""Many agent endpoints in one process, for poll-scale benchmarks.

    .venv/bin/python -m bench.agent_replicas --reply FILE --count 1000 [--blackhole 100] [--fresh] --port 8001

Listens on 127.10.X.Y:PORT for COUNT loopback addresses and answers every
XML-RPC request with the bytes of FILE (a real lbagent's get_state reply,
captured by bench_poll.py), so a thousand "agents" cost one process. The
first BLACKHOLE addresses accept connections and never answer. With
``--fresh`` every reply carries a new ``sampled_at``, as if each agent had
taken a new sample since the last poll (nothing a balancer may reuse); a
node_exporter page (bench_agentless.py) gets a new ``node_time_seconds``.
Prints "ready" on stdout once every socket listens.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import resource
import sys
from typing import Callable

from bench.support import replica_address


class Replica(asyncio.Protocol):
    """Answers one request per connection with a fixed reply, or never (black hole)."""

    def __init__(self, reply: Callable[[], bytes] | None) -> None:
        self.reply = reply
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.reply is None:
            return
        self.buf += data
        head, sep, body = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if len(body) >= length:
            self.transport.write(self.reply())
            self.transport.close()


async def serve(args: argparse.Namespace) -> None:
    """Bind every address, report readiness, serve forever."""
    with open(args.reply, "rb") as fh:
        body = fh.read()
    def http(payload: bytes) -> bytes:
        return b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload

    fixed = http(body)
    reply = lambda: fixed  # noqa: E731
    if args.fresh:
        m = (re.search(rb"<name>sampled_at</name>\s*<value><double>([^<]+)</double>", body)
             or re.search(rb"^node_time_seconds (\S+)$", body, re.M))  # a node_exporter page's clock
        if m is None:
            raise SystemExit("--fresh: no sampled_at (or node_time_seconds) in the reply")
        head, tail, base, count = body[:m.start(1)], body[m.end(1):], float(m.group(1)), itertools.count(1)
        reply = lambda: http(head + b"%.3f" % (base + next(count) / 1000) + tail)  # noqa: E731
    loop = asyncio.get_running_loop()
    for i in range(args.count):
        hole = i < args.blackhole
        await loop.create_server(lambda h=hole: Replica(None if h else reply), replica_address(i), args.port,
                                 backlog=64, reuse_address=True)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--reply", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--blackhole", type=int, default=0)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--fresh", action="store_true", help="a new sampled_at in every reply")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
