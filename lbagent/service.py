"""The agent as a daemon service: the object :func:`common.runtime.run` drives.

bind() opens the listening socket before daemonising; start() takes the
first sample and then serves; reload() applies a new, already validated
config (a new listen address is bound first, so a failure leaves the old
one serving); stop() ends everything.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading

from common.netutil import raise_nofile_limit
from common.netutil import hosts_overlap
from lbagent.config import AgentConfig
from lbagent.linger import LingeringCloser, linger_capacity
from lbagent.rpc import AgentHTTPServer, Deadlines, Dispatcher, ServerParts
from lbagent.sampler import Sampler
from lbagent.workers import WorkerPool

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
POLL_INTERVAL = 0.5  # how soon serve_forever notices shutdown()
MAX_CONNECTIONS = 256  # served at once; more get 503 at once


def format_listen(listen: tuple[str, int]) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    host, port = listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def security_summary(config: AgentConfig) -> str:
    """How queries are protected, for the start-up log line (never the secret itself)."""
    parts = ["over TLS" if config.ssl_context is not None else "over plain HTTP"]
    if config.secret is not None:
        parts.append(f"shared secret from {config.secret_file}")
    if config.allow is not None:
        parts.append(f"{len(config.allow)} allowed network(s)")
    return " (" + ", ".join(parts) + ")"


def _resolve(listen: tuple[str, int]) -> tuple:
    """The first getaddrinfo() entry for listening on ``listen``; OSError names the address."""
    host, port = listen
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {format_listen(listen)}: {exc.strerror}") from None


def bind_listen(listen: tuple[str, int]) -> socket.socket:
    """A listening TCP socket on ``listen``; OSError names the address on failure.

    ``[::]`` is dual-stack where the system allows it, so IPv4 balancers
    reach an agent listening on all IPv6 addresses too.
    """
    where = format_listen(listen)
    family, stype, proto, _, addr = _resolve(listen)
    sock = socket.socket(family, stype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and addr[0] == "::":
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        sock.bind(addr)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sock


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
        self._sock = bind_listen(config.listen)
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
        """Serve on ``config.listen`` instead of ``old.listen``."""
        try:
            sock = bind_listen(config.listen)  # fails before anything changed
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not self._overlaps_listener(config.listen):
                raise  # taken by someone else: the old listener stays, untouched
            self._rebind_in_place(old, config)
            return
        old_server = self._server
        self._serve(sock, config)  # the new listener first: never a moment without one
        self._sock = sock
        _close_server(old_server)

    def _overlaps_listener(self, listen: tuple[str, int]) -> bool:
        """Whether ``listen`` collides with our own listening socket (same port, overlapping address)."""
        ours = self._server.server_address
        try:
            new = _resolve(listen)[4]
        except OSError:
            return False
        return new[1] == ours[1] and hosts_overlap(new[0], ours[0])

    def _rebind_in_place(self, old: AgentConfig, config: AgentConfig) -> None:
        """Move to an address that overlaps the old one on the same port.

        Linux refuses to bind 0.0.0.0:P or [::]:P (or another spelling of the
        old address, such as [::ffff:127.0.0.1]:P for 127.0.0.1:P) while the
        old socket listens on port P. So the old listener closes first; if the
        new address still cannot be bound, the old one is bound again and the
        OSError is raised (the reload fails, the old configuration stays).
        """
        log.warning("%s overlaps %s, which is listening: closing it to bind the new address",
                    format_listen(config.listen), format_listen(old.listen))
        _close_server(self._server)
        try:
            sock = bind_listen(config.listen)
        except OSError as exc:
            log.error("%s; listening on %s again", exc, format_listen(old.listen))
            try:
                sock = bind_listen(old.listen)
            except OSError as lost:
                self._lost = f"no listening socket: {lost} (after {exc})"
                log.critical("%s", self._lost)
                raise
            self._serve(sock, old)
            self._sock = sock
            raise
        self._serve(sock, config)
        self._sock = sock

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
