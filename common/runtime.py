"""The daemon runtime both lbagent and lbserver run under.

One process lifecycle, with every signal handled in one place (the main
thread's loop in :func:`run`):

1. load and validate the config (errors go to the terminal, exit 1);
2. refuse to start when the pidfile is held by a running instance;
3. let the service open its listening sockets while errors still reach the
   terminal (port in use, bad address);
4. daemonise with python-daemon unless ``-f`` (the sockets are preserved);
5. take the pidfile lock, start the service's threads;
6. loop on signals: SIGHUP reloads (a bad new config is logged and the old
   one stays) and reopens the log file, SIGTERM/SIGINT stop cleanly and
   remove the pidfile.

Signals only write their number to a pipe (``signal.set_wakeup_fd``); the
loop reads the pipe, so no work ever runs inside a signal handler.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import select
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from common.pidfile import PidFile, PidFileError
from common.version import __version__
from common.xmlconfig import ConfigError

log = logging.getLogger(__name__)

LOG_FORMAT_FOREGROUND = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Service(Protocol):
    """What a daemon provides to the runtime."""

    def bind(self, config: Any) -> list[socket.socket]:
        """Open listening sockets (before daemonising, so errors reach the terminal)."""

    def start(self, config: Any) -> None:
        """Start serving with ``config``; returns once threads are running."""

    def reload(self, config: Any) -> None:
        """Apply an already validated new config."""

    def stop(self) -> None:
        """Stop serving and release resources; returns when done."""

    def failure(self) -> str | None:
        """A reason when the service can no longer run (the daemon then exits 1)."""


@dataclass
class DaemonSpec:
    """Static facts about one daemon program."""

    prog: str
    description: str
    epilog: str
    default_config: str
    default_pidfile: str
    load_config: Callable[[str], Any]
    make_service: Callable[[], Service]
    log_settings: Callable[[Any], tuple[str | None, str | None]] = lambda cfg: (None, None)
    """Return (log file or None for syslog, level name or None) from a config."""


def make_parser(spec: DaemonSpec) -> argparse.ArgumentParser:
    """The common command line; daemons add their own options to it."""
    parser = argparse.ArgumentParser(
        prog=spec.prog,
        description=spec.description,
        epilog=spec.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE", default=spec.default_config,
                        help=f"configuration file (default: {spec.default_config})")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground and log to stderr (for systemd, debugging)")
    parser.add_argument("-p", "--pidfile", metavar="PIDFILE", default=None,
                        help=f"pid file, locked while running (default when daemonised: {spec.default_pidfile}; "
                             "in the foreground only when given)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration file; exit 0 when valid, "
                             "else print FILE:LINE: message and exit 1")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def check_config(spec: DaemonSpec, path: str) -> int:
    """``--check-config``: print the verdict, return the exit status."""
    try:
        spec.load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: configuration OK")
    return 0


class _Logging:
    """Owns the root handler so SIGHUP can reopen or switch it."""

    def __init__(self, prog: str, foreground: bool, verbose: bool) -> None:
        self.prog = prog
        self.foreground = foreground
        self.verbose = verbose
        self.handler: logging.Handler | None = None
        self.target: str | None = None

    def configure(self, log_file: str | None, level: str | None) -> None:
        root = logging.getLogger()
        lvl = logging.DEBUG if self.verbose else getattr(logging, (level or "info").upper(), logging.INFO)
        root.setLevel(lvl)
        target = "stderr" if self.foreground else (log_file or "syslog")
        if self.handler is not None and target == self.target:
            if isinstance(self.handler, logging.FileHandler):
                # Reopen so logrotate's move-and-HUP works.
                self.handler.acquire()
                try:
                    self.handler.close()
                    self.handler.stream = self.handler._open()
                finally:
                    self.handler.release()
            return
        if target == "stderr":
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(LOG_FORMAT_FOREGROUND))
        elif target == "syslog":
            address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
            handler = logging.handlers.SysLogHandler(address=address,
                                                     facility=logging.handlers.SysLogHandler.LOG_DAEMON)
            handler.ident = ""
            handler.setFormatter(logging.Formatter(f"{self.prog}[%(process)d]: %(levelname)s %(name)s: %(message)s"))
        else:
            handler = logging.FileHandler(target)
            handler.setFormatter(logging.Formatter(LOG_FORMAT_FOREGROUND))
        if self.handler is not None:
            root.removeHandler(self.handler)
            self.handler.close()
        root.addHandler(handler)
        self.handler = handler
        self.target = target


def _daemonise(sockets: list[socket.socket]) -> None:
    import daemon  # python-daemon

    ctx = daemon.DaemonContext(
        working_directory="/",
        umask=0o022,
        files_preserve=[s.fileno() for s in sockets],
        signal_map={},  # the runtime installs its own handlers afterwards
        prevent_core=True,
    )
    ctx.open()


def run(spec: DaemonSpec, args: argparse.Namespace) -> int:
    """Run the daemon described by ``spec`` with parsed ``args``; return the exit status."""
    if args.check_config:
        return check_config(spec, args.config)
    try:
        config = spec.load_config(args.config)
    except ConfigError as exc:
        print(f"{spec.prog}: {exc}", file=sys.stderr)
        return 1

    pid_path = args.pidfile or (None if args.foreground else spec.default_pidfile)
    pidfile = PidFile(pid_path) if pid_path else None
    try:
        if pidfile:
            pidfile.check_free()
    except PidFileError as exc:
        print(f"{spec.prog}: {exc}", file=sys.stderr)
        return 1

    service = spec.make_service()
    try:
        sockets = service.bind(config)
    except OSError as exc:
        print(f"{spec.prog}: {exc}", file=sys.stderr)
        return 1

    if not args.foreground:
        _daemonise(sockets)
    logs = _Logging(spec.prog, args.foreground, args.verbose)
    logs.configure(*spec.log_settings(config))

    try:
        if pidfile:
            pidfile.acquire()
    except PidFileError as exc:
        log.error("%s", exc)
        return 1

    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)  # the wakeup fd carries the number

    status = 0
    try:
        service.start(config)
        log.info("%s %s started (config %s, pid %d)", spec.prog, __version__, args.config, os.getpid())
        while True:
            ready, _, _ = select.select([rfd], [], [], 1.0)
            failure = service.failure()
            if failure:
                log.error("%s cannot continue: %s", spec.prog, failure)
                status = 1
                break
            if not ready:
                continue
            signums = os.read(rfd, 64)
            if any(s in (signal.SIGTERM, signal.SIGINT) for s in signums):
                log.info("%s stopping on signal", spec.prog)
                break
            if signal.SIGHUP in signums:
                config = _reload(spec, args.config, config, service, logs)
    finally:
        service.stop()
        if pidfile:
            pidfile.release()
        signal.set_wakeup_fd(-1)
        os.close(rfd)
        os.close(wfd)
    log.info("%s stopped", spec.prog)
    return status


def _reload(spec: DaemonSpec, path: str, old: Any, service: Service, logs: _Logging) -> Any:
    log.info("SIGHUP: reloading %s", path)
    try:
        new = spec.load_config(path)
    except ConfigError as exc:
        logs.configure(*spec.log_settings(old))
        log.error("reload refused, keeping the running configuration: %s", exc)
        return old
    except Exception:  # a loader bug must not take a running daemon down on SIGHUP
        log.exception("reload refused, keeping the running configuration: %s could not be read", path)
        return old
    logs.configure(*spec.log_settings(new))
    try:
        service.reload(new)
    except Exception as exc:  # a reload must never take the daemon down
        logs.configure(*spec.log_settings(old))
        log.exception("reload failed, keeping the running configuration: %s", exc)
        return old
    log.info("configuration reloaded from %s", path)
    return new
