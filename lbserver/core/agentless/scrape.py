"""Scraping ``source="node-exporter"`` nodes: one bounded GET of each node's metrics page per poll.

The exchange is the agents' (:func:`lbserver.core.poller.exchange`): the
whole of it within the poll timeout, the page within ``max-reply-bytes``,
at most a fixed number at once, pages parsed by one task in slices of the
loop's time (:func:`lbserver.core.poller.poll_all` with this module's fetch
and decode). An address that gives no query string is scraped with
``collect[]`` parameters naming only the collectors the built-ins need
(:data:`~lbserver.core.agentless.exposition.COLLECTORS`), so the exporter
does less work and the page is a third of its full size. Runs on the
balancer's loop thread.
"""

from __future__ import annotations

import functools
import time
import urllib.parse
from typing import Iterable, Mapping

from lbserver.config import Node
from lbserver.core.agentless import exposition
from lbserver.core.poller import Decode, PollError, PollResult, exchange, poll_all, reply_body

SERVER = "node_exporter"


@functools.lru_cache(maxsize=16384)  # a Node is frozen: its request never changes
def build_request(node: Node) -> bytes:
    """The HTTP/1.0 GET of ``node``'s metrics page (with collect[] when its address names no collectors)."""
    url = urllib.parse.urlsplit(node.address)
    path = url.path or "/metrics"
    query = url.query or "&".join(f"collect[]={c}" for c in exposition.COLLECTORS)
    host = f"[{node.host}]" if ":" in node.host else node.host
    return (f"GET {path}?{query} HTTP/1.0\r\nHost: {host}:{node.port}\r\nUser-Agent: lbserver\r\n"
            "Accept: text/plain\r\n\r\n").encode()


async def fetch_page(node: Node, timeout: float, max_bytes: int) -> bytes:
    """``node``'s metrics page; raises :class:`PollError` in words for the status page."""
    raw = await exchange(node.host, node.port, build_request(node), timeout, max_bytes, node.ssl_context,
                         server=SERVER)
    if not raw:
        raise PollError(f"{SERVER} closed the connection without answering")
    return reply_body(raw, max_bytes, server=SERVER)


def decoder(counters: exposition.CpuCounters) -> Decode:
    """The decode step of :func:`scrape_all`: a page to an agent-shaped state, CPU counters kept in ``counters``."""
    def decode(name: str, page: bytes) -> dict:
        try:
            return exposition.state(page, name, time.time(), counters)
        except exposition.ExpositionError as exc:
            raise PollError(f"{SERVER} page: {exc}") from None
    return decode


async def scrape_all(nodes: Iterable[Node], timeout: float, max_bytes: int, counters: exposition.CpuCounters,
                     validate=None) -> Mapping[str, PollResult]:
    """Scrape every node_exporter node once; results as :func:`~lbserver.core.poller.poll_all` gives them.

    ``counters`` (kept by the caller between cycles) holds each node's CPU
    counters for CPUUSED; nodes no longer scraped are dropped from it. No
    page is kept to compare with the next: an exporter's page always
    changes (its clock, node_time_seconds, is on it).
    """
    nodes = list(nodes)
    results = await poll_all(nodes, timeout, max_bytes, validate=validate,
                             fetch=fetch_page, decode=decoder(counters))
    for name in set(counters) - {n.name for n in nodes}:
        del counters[name]
    return results


__all__ = ["SERVER", "build_request", "fetch_page", "scrape_all"]
