"""Keeps the HAProxy session map current after each poll cycle: the map file, and the running HAProxy.

The composition root registers :meth:`SessionMapService.kick` as an
after-cycle observer. A sync runs on one worker thread (a kick while one
runs is skipped, so a slow HAProxy builds no backlog):

1. the wanted map, from the cycle's snapshot (:mod:`lbserver.haproxy.sessionmap`);
2. the map file, rewritten atomically when its content changes, so an
   HAProxy that starts or reloads loads the current map;
3. one runtime API connection: ``show info`` says HAProxy's process id;
   when it differs from the last sync's (a restart or reload), or after any
   error, ``show map`` says what HAProxy holds; then only the differences
   are sent (``del map``, ``set map``, ``add map``).

A dead, missing or wrong socket, a timeout or an unexpected answer is
counted and logged (at most once a minute), and the next cycle starts
over with a full comparison; terminals are answered all the while, since
none of this runs on the loop. Refused user names (see
:func:`~lbserver.haproxy.sessionmap.map_key`) are counted, and each is
logged once (at most :data:`NAMES_LOGGED` lines a minute, and up to
:data:`MAX_REMEMBERED` distinct names: beyond, new ones are not counted
nor logged again).

Threading: :meth:`kick` and :meth:`status` run on the loop thread; the
sync on the worker. The worker replaces :attr:`SessionMapService.state`
whole, so a reader never sees half of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any

from common.atomicfile import write_atomic
from common.ratelimit import LogBudget
from lbserver.config import HaproxyMap, ServerConfig
from lbserver.core.selection import Snapshot
from lbserver.core.view import BalancerView
from lbserver.haproxy.reply import clean
from lbserver.haproxy.runtime import RuntimeApi, RuntimeApiError, process_id
from lbserver.haproxy.sessionmap import addresses, changes, commands, entries, file_text, parse_show_map

log = logging.getLogger("lbserver.haproxy")

LOG_INTERVAL = 60.0
"""Seconds between two log lines about failed syncs."""
MAX_REMEMBERED = 10000
"""Distinct refused user names counted and remembered as logged."""
NAMES_LOGGED = 20
"""Log lines about refused user names per minute at most."""


class SessionMapService:
    """The ``<haproxy-map>`` of one balancer (idle without one)."""

    def __init__(self, view: BalancerView) -> None:
        self._view = view
        self._config: HaproxyMap | None = None
        self._busy = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="haproxy-map")
        # Worker thread only:
        self._file_text: str | None = None
        self._pid: str | None = None
        self._sent: dict[str, str] | None = None  # what HAProxy holds, as far as this side knows
        self._refused_seen: set[str] = set()
        self._names_log = LogBudget(NAMES_LOGGED, 60.0)
        self._last_error_log = -1e18
        self.state: dict[str, Any] = {}
        """The last sync: see :meth:`status`."""
        self.errors = 0
        self.refused_total = 0
        self.commands_sent = 0

    def configure(self, config: HaproxyMap | None) -> None:
        """Follow a (re)loaded ``<haproxy-map>`` (None: stop syncing)."""
        if config != self._config:
            self._config = config
            self._pool.submit(self._forget)

    def kick(self) -> None:
        """Start one sync on the worker thread from the current snapshot (skipped while one runs)."""
        config = self._config
        if config is None or self._busy:
            return
        self._busy = True
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self.sync, self._view.snapshot,
                                                         self._view.config, config)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future) -> None:
        self._busy = False
        if not fut.cancelled() and fut.exception() is not None:
            log.error("HAProxy session map sync failed", exc_info=fut.exception())

    def _forget(self) -> None:
        self._file_text = self._pid = self._sent = None

    def sync(self, snapshot: Snapshot, server: ServerConfig, config: HaproxyMap) -> dict[str, Any]:
        """One sync of the map with ``snapshot`` (blocking; the worker's job). Returns the new :attr:`state`."""
        started = time.monotonic()
        if config.group not in snapshot.groups:
            return self.state  # a reload's group, before its first cycle
        answer = {n: server.nodes[n].answer_ip for n in snapshot.groups[config.group]}
        homes, refused = addresses(snapshot, config.group, answer)
        self._note_refused(refused, config)
        wanted = entries(homes)
        error = self._write_file(config, wanted)
        sent = 0
        try:
            sent = self._push(config, wanted)
        except (OSError, RuntimeApiError) as exc:
            self._sent = None
            error = error or f"runtime API {config.socket}: {clean(str(exc) or type(exc).__name__)}"
        if error:
            self.errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= LOG_INTERVAL:
                self._last_error_log = now
                log.error("HAProxy session map of group %s: %s (retried at each poll cycle)", config.group, error)
        self.commands_sent += sent
        self.state = {
            "group": config.group, "socket": config.socket, "file": config.file,
            "entries": len(wanted), "users": len(homes), "refused": len(refused),
            "refused_total": self.refused_total, "last_sync": time.time(), "in_sync": not error,
            "commands": sent, "commands_total": self.commands_sent, "errors": self.errors, "error": error,
            "seconds": round(time.monotonic() - started, 4),
        }
        return self.state

    def _note_refused(self, refused: list[str], config: HaproxyMap) -> None:
        seen = self._refused_seen
        for user in refused:
            if user in seen or len(seen) >= MAX_REMEMBERED:
                continue
            seen.add(user)
            self.refused_total += 1
            verdict = self._names_log.take(time.monotonic())
            if verdict == LogBudget.LOG:
                log.warning("user name %s (group %s) left out of the HAProxy session map: it could break a map "
                            "line", ascii(user[:80]), config.group)
            elif verdict == LogBudget.SUMMARY:
                log.warning("more user names left out of the HAProxy session map are not logged this minute "
                            "(lbctl status counts them)")

    def _write_file(self, config: HaproxyMap, wanted: dict[str, str]) -> str | None:
        """Rewrite the map file when its content changes; the error, or None."""
        text = file_text(wanted)
        if self._file_text is None:
            try:
                with open(config.file, encoding="utf-8") as fh:
                    self._file_text = fh.read()
            except (OSError, ValueError):
                self._file_text = ""
        if text == self._file_text:
            return None
        try:
            write_atomic(config.file, text, 0o644)
        except OSError as exc:
            return f"map file {config.file}: {exc.strerror or exc}"
        self._file_text = text
        return None

    def _push(self, config: HaproxyMap, wanted: dict[str, str]) -> int:
        """Bring the running HAProxy's map to ``wanted``; returns the changing commands sent."""
        with RuntimeApi(config.socket, config.timeout) as api:
            pid = process_id(api.ask(["show info"])[0])
            if pid != self._pid or self._sent is None:
                self._sent = None
                shown = api.ask([f"show map {config.file}"])[0]
                if not shown.startswith("0x") and shown.strip():
                    raise RuntimeApiError(f"show map {config.file}: {shown.strip()[:160]}")
                held = parse_show_map(shown.splitlines())
                self._pid = pid
            else:
                held = self._sent
            todo = commands(config.file, changes(held, wanted))
            answers = api.ask(todo)
        wrong = [(c, a.strip()) for c, a in zip(todo, answers) if a.strip()]
        if wrong:
            raise RuntimeApiError(f"{len(wrong)} of {len(todo)} map commands refused, first {wrong[0][0]!r}: "
                                  f"{wrong[0][1][:160]}")
        self._sent = wanted
        return len(todo)

    def status(self) -> dict[str, Any] | None:
        """The last sync's ``{"group", "entries", "last_sync", "in_sync", "errors", "error", ...}``.

        None without ``<haproxy-map>``; before the first sync, ``last_sync`` is None.
        """
        if self._config is None:
            return None
        return dict(self.state) or {"group": self._config.group, "socket": self._config.socket,
                                    "file": self._config.file, "entries": None, "last_sync": None,
                                    "in_sync": False, "errors": 0, "error": None}

    def close(self) -> None:
        """Stop the worker thread (a sync in progress is abandoned: HAProxy keeps the map it has)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["SessionMapService"]
