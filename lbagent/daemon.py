"""The agent as a daemon service: the object :func:`common.runtime.run` drives.

bind() opens the listening socket before daemonising; start() takes the
first sample and then serves; reload() applies a new, already validated
config (a new listen address is bound first, so a failure leaves the old
one serving); stop() ends everything.
"""

from __future__ import annotations

import logging
import socket
import threading

from common.netutil import raise_nofile_limit
from common.sockets import bind_after_close, format_listen, listen_socket, open_replacement
from lbagent.config import AgentConfig
from lbagent.linger import LingeringCloser, linger_capacity
from lbagent.rpc import AgentHTTPServer, Deadlines, Dispatcher, ServerParts
from lbagent.sampler import Sampler
from lbagent.workers import WorkerPool

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
POLL_INTERVAL = 0.5  # how soon serve_forever notices shutdown()
MAX_CONNECTIONS = 256  # served at once; more get 503 at once


def security_summary(config: AgentConfig) -> str:
    """How queries are protected, for the start-up log line (never the secret itself)."""
    parts = ["over TLS" if config.ssl_context is not None else "over plain HTTP"]
    if config.secret is not None:
        parts.append(f"shared secret from {config.secret_file}")
    if config.allow is not None:
        parts.append(f"{len(config.allow)} allowed network(s)")
    return " (" + ", ".join(parts) + ")"


def _close_server(server: AgentHTTPServer) -> None:
    """Stop accepting and close the listening socket (connections being served finish)."""
    server.shutdown()  # returns once serve_forever has ended
    server.server_close()


class AgentService:
    """lbagent's implementation of :class:`common.runtime.Service`."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._config: AgentConfig | None = None
        self._sampler: Sampler | None = None
        self._server: AgentHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._parts: ServerParts | None = None  # shared by successive servers, across rebinds
        self._stopping = False
        self._lost: str | None = None  # set when neither the new nor the old address could be bound

    @property
    def address(self) -> tuple:
        """The address actually listened on (after bind)."""
        return self._server.server_address if self._server else self._sock.getsockname()

    def bind(self, config: AgentConfig) -> list[socket.socket]:
        """Open the listening socket for ``config.listen``."""
        self._sock = listen_socket(config.listen, LISTEN_BACKLOG)
        self._config = config
        return [self._sock]

    def start(self, config: AgentConfig) -> None:
        """Take the first sample, then serve XML-RPC in a background thread."""
        if self._sock is None:
            self.bind(config)
        self._config = config
        # Refused peers held for a lingering close, workers and command pipes all
        # take descriptors; at the limit accept() fails and balancers are shut out.
        nofile = raise_nofile_limit()
        self._sampler = Sampler(config)
        self._sampler.start()
        closer = LingeringCloser(max_sockets=linger_capacity(nofile))
        log.debug("open files limit %s; at most %d refused connections held for a lingering close",
                  "unlimited" if nofile < 0 else nofile, closer.max_sockets)
        self._parts = ServerParts(dispatcher=Dispatcher(lambda: self._sampler.current), deadlines=Deadlines(),
                                  workers=WorkerPool(max_workers=MAX_CONNECTIONS), closer=closer)
        self._serve(self._sock, config)
        log.info("serving XML-RPC on %s%s, sampling every %g s, %d custom variable(s)",
                 format_listen(config.listen), security_summary(config), config.sample_interval,
                 len(config.variables))

    def _serve(self, sock: socket.socket, config: AgentConfig) -> None:
        server = AgentHTTPServer(sock, config, self._parts)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
                                  name="lbagent-rpc", daemon=True)
        thread.start()
        self._server, self._thread = server, thread

    def reload(self, config: AgentConfig) -> None:
        """Apply ``config``: variables, allow-list, limits and interval at once; rebind on a new address.

        Raises OSError when the new address cannot be listened on; the old
        configuration then stays in force, still listening on its address.
        """
        old = self._config
        if config.listen != old.listen:
            self._move(old, config)
            log.info("now listening on %s (was %s)", format_listen(config.listen), format_listen(old.listen))
        else:
            # Handlers take server.config per connection, so this applies from the next one.
            self._server.config = config
        self._config = config
        self._sampler.reconfigure(config)

    def _move(self, old: AgentConfig, config: AgentConfig) -> None:
        """Serve on ``config.listen`` instead of ``old.listen``.

        The new listener starts before the old one closes, so there is never a
        moment without one, except on an overlapping address (see
        :mod:`common.sockets`), where a failure binds the old address again
        and raises (the reload fails, the old configuration stays).
        """
        sock = open_replacement(config.listen, old.listen, LISTEN_BACKLOG)  # raises before anything changed
        if sock is not None:
            old_server = self._server
            self._serve(sock, config)
            self._sock = sock
            _close_server(old_server)
            return
        _close_server(self._server)
        try:
            sock, error = bind_after_close(config.listen, old.listen, LISTEN_BACKLOG)
        except OSError as lost:
            self._lost = str(lost)
            log.critical("%s", self._lost)
            raise
        self._serve(sock, old if error else config)
        self._sock = sock
        if error:
            raise error

    def stop(self) -> None:
        """Stop serving and sampling."""
        self._stopping = True
        if self._server is not None:
            _close_server(self._server)
        elif self._sock is not None:
            self._sock.close()
        if self._sampler is not None:
            self._sampler.stop()
        if self._parts is not None:
            self._parts.workers.close()
            self._parts.closer.stop()
            self._parts.deadlines.stop()

    def failure(self) -> str | None:
        """Why the agent cannot go on, if a thread it needs has ended."""
        if self._stopping:
            return None
        if self._lost is not None:
            return self._lost
        if self._thread is not None and not self._thread.is_alive():
            return "the XML-RPC server thread ended"
        if self._sampler is not None and self._thread is not None and not self._sampler.alive():
            return "the sampling thread ended"
        if self._parts is not None and not self._parts.closer.alive():
            return "the lingering-close thread ended"
        if self._parts is not None and not self._parts.deadlines.alive():
            return "the request deadline thread ended"
        return None
