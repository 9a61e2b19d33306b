"""The daemon runtime both lbagent and lbserver run under.

One process lifecycle, with every signal handled in one place (the main
thread's loop in :func:`run`):

1. load and validate the config (errors go to the terminal, exit 1);
2. refuse to start when the pidfile is held by a running instance;
3. let the service open its listening sockets while errors still reach the
   terminal (port in use, bad address);
4. daemonise with python-daemon unless ``-f`` (the sockets are preserved);
5. take the pidfile lock, start the service's threads;
6. loop on signals, one job each (as gunicorn and nginx do):

   * SIGHUP reloads the configuration: a bad new file is logged and the
     old configuration stays; a changed ``<log file>`` or level is applied
     with it (a new path opens the new file), but the current log file is
     not reopened;
   * SIGUSR1 reopens the log file, for logrotate, and reads no
     configuration at all (so a rotation never applies a half-edited
     file); with nothing to reopen (stderr, syslog) it does nothing;
   * SIGTERM/SIGINT stop cleanly and remove the pidfile.

Signals only write their number to a pipe (``signal.set_wakeup_fd``); the
loop reads the pipe, so no work ever runs inside a signal handler. The
handlers are in place before the pidfile is written, so a script that finds
the pidfile may signal the daemon at once (SIGHUP and SIGUSR1 would
otherwise end it).
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
    """Owns the root handler: SIGHUP may switch it, SIGUSR1 reopens its file."""

    def __init__(self, prog: str, foreground: bool, verbose: bool) -> None:
        self.prog = prog
        self.foreground = foreground
        self.verbose = verbose
        self.handler: logging.Handler | None = None
        self.target: str | None = None

    def configure(self, log_file: str | None, level: str | None) -> None:
        """Log to ``log_file`` (syslog when None) at ``level``.

        The same destination keeps its open handler: only SIGUSR1 reopens a
        file. A new destination that cannot be opened raises OSError and
        leaves the current handler and level untouched.
        """
        root = logging.getLogger()
        lvl = logging.DEBUG if self.verbose else getattr(logging, (level or "info").upper(), logging.INFO)
        target = "stderr" if self.foreground else (log_file or "syslog")
        if self.handler is not None and target == self.target:
            root.setLevel(lvl)
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
        root.setLevel(lvl)
        if self.handler is not None:
            root.removeHandler(self.handler)
            self.handler.close()
        root.addHandler(handler)
        self.handler = handler
        self.target = target

    def reopen(self) -> None:
        """SIGUSR1: reopen the log file under its path (logrotate moved the old one away).

        Reads no configuration. When the path cannot be opened (directory
        gone, no permission) the daemon keeps writing to the file it has.
        """
        handler = self.handler
        if not isinstance(handler, logging.FileHandler):
            log.debug("SIGUSR1: logging to %s, no log file to reopen", self.target)
            return
        try:
            stream = handler._open()
        except OSError as exc:
            log.error("SIGUSR1: cannot reopen the log file, still writing to the old one: %s", exc)
            return
        handler.acquire()
        try:
            old, handler.stream = handler.stream, stream
            if old is not None:
                old.close()
        finally:
            handler.release()
        log.info("SIGUSR1: log file %s reopened", self.target)


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

    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)  # the wakeup fd carries the number

    try:
        if pidfile:
            pidfile.acquire()
    except PidFileError as exc:
        log.error("%s", exc)
        signal.set_wakeup_fd(-1)
        os.close(rfd)
        os.close(wfd)
        return 1

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
            # One job per signal: a rotation (USR1) never reads the configuration.
            if signal.SIGUSR1 in signums:
                logs.reopen()
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
    """SIGHUP: load ``path`` and apply it (log settings included); return the config now in force."""
    log.info("SIGHUP: reloading %s", path)
    try:
        new = spec.load_config(path)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        return old
    except Exception:  # a loader bug must not take a running daemon down on SIGHUP
        log.exception("reload refused, keeping the running configuration: %s could not be read", path)
        return old
    try:
        logs.configure(*spec.log_settings(new))
    except OSError as exc:
        log.error("reload refused, keeping the running configuration: cannot open the new log: %s", exc)
        return old
    try:
        service.reload(new)
    except Exception as exc:  # a reload must never take the daemon down
        _restore_logging(spec, old, logs)
        log.exception("reload failed, keeping the running configuration: %s", exc)
        return old
    log.info("configuration reloaded from %s", path)
    return new


def _restore_logging(spec: DaemonSpec, config: Any, logs: _Logging) -> None:
    try:
        logs.configure(*spec.log_settings(config))
    except OSError as exc:
        log.error("cannot return to the previous log destination, keeping the new one: %s", exc)
