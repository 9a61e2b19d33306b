"""``lbserver``: command line of the balancer daemon."""

from __future__ import annotations

import argparse
import asyncio
import sys

from common import runtime
from common.xmlconfig import ConfigError
from lbserver import config as configmod
from lbserver.config.settings import LBSERVICE

DESCRIPTION = """\
lbserver runs on each boot server. Every poll interval it asks every lbagent
listed in lbsconfig.xml for its state (all at once, each bounded by the poll
timeout), computes a weight per application server (greater = less loaded),
and answers each terminal's HTTP request on the balancer port with a
server chosen at random in proportion to the weights. With a <dns> element
it also publishes the best servers of each group behind DNS aliases by
TSIG-signed dynamic update (the WMS load balancing arbiter).
"""

EPILOG = f"""\
modes:
  (default)            run as a daemon: detach, log to syslog, write PIDFILE
  -f                   run in the foreground, log to stderr (systemd, debugging)
  --once               one poll + DNS publish cycle, print the nodes and aliases,
                       exit (cron mode of the DNS arbiter); exit 0 when every
                       alias was published or unchanged, 2 when a DNS update failed
  --check-config       validate the file and exit
  --simulate SCENARIO  run a login-storm scenario through the real weight and
                       selection code with this file's rules, print where each
                       algorithm puts the storm (--balancers N, --unshared)
  --import-siteinfo DEF  convert a WMS arbiter wmsmon_site-info.def to
                       lbsconfig.xml on stdout (key written with --key-out)

signals:
  SIGHUP               reload the configuration (a bad file is logged, the
                       running configuration stays); a changed <log> is applied
  SIGUSR1              reopen the log file (for logrotate); the configuration
                       is not read
  SIGTERM, SIGINT      stop cleanly and remove the pid file

terminal protocol (port of <lbservice>, default {LBSERVICE.listen.default[1]}):
  GET /                a server from the default group, as "host\\n"
  GET /?group=NAME     a server from group NAME (404 if unknown)
  GET /?user=NAME      the server NAME already has a session on, if any

files:
  /etc/mille-xterm/lbsconfig.xml   configuration (/etc/ltsp/lbsconfig.xml, the
                                   ltsp-cluster balancer's, when only that exists)
  /run/lbserver.pid                pid file when daemonised
  /var/lib/mille-xterm/lbserver.state   drained nodes (kept across restarts)

exit status:
  0  success
  1  configuration or start-up error
  2  a DNS update failed (--once)
  5  a Python module it needs is missing (the message names the package)

example:
  lbserver --check-config -c /etc/mille-xterm/lbsconfig.xml && service lbserver reload
"""


def _spec() -> runtime.DaemonSpec:
    from lbserver.daemon import Daemon  # noqa: PLC0415 (heavy imports only for the daemon)

    return runtime.DaemonSpec(
        prog="lbserver",
        description=DESCRIPTION,
        epilog=EPILOG,
        default_config=configmod.default_path(),
        default_pidfile="/run/lbserver.pid",
        load_config=configmod.load,
        make_service=Daemon,
        log_settings=lambda cfg: (cfg.log_file, cfg.log_level),
    )


def run_once(path: str, out=sys.stdout) -> int:
    """``--once``: one poll and DNS cycle, a table on ``out``; return the exit status."""
    import logging  # noqa: PLC0415

    from lbserver.core.balancer import Balancer  # noqa: PLC0415
    from lbserver.dns.report import ERROR, format_reports  # noqa: PLC0415
    from lbserver.dns.service import DnsService  # noqa: PLC0415
    from lbserver.mgmt.status import build_status, format_table  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="lbserver: %(levelname)s %(message)s")
    try:
        cfg = configmod.load(path)
    except ConfigError as exc:
        print(f"lbserver: {exc}", file=sys.stderr)
        return 1
    core = Balancer(cfg)
    dns = DnsService(core, once=True)  # the lease outlives the run: kept, not released
    dns.configure(cfg)
    asyncio.run(core.cycle())
    reports = dns.run_once()
    dns.close()
    out.write(format_table(build_status(core)))
    if reports:
        out.write("\n" + format_reports(reports))
    return 2 if any(r.result == ERROR for r in reports) else 0


def build_parser(spec: runtime.DaemonSpec | None = None) -> argparse.ArgumentParser:
    """The whole command line of lbserver (its --help, and its man page, come from it)."""
    parser = runtime.make_parser(spec or _spec())
    parser.add_argument("--once", action="store_true",
                        help="poll once, publish DNS aliases once, print a table of nodes and exit")
    parser.add_argument("--simulate", metavar="SCENARIO",
                        help="run a login-storm scenario file with this config's rules and print the spread")
    parser.add_argument("--seed", type=int, default=1, help="random seed for --simulate (default 1)")
    parser.add_argument("--balancers", type=int, metavar="N",
                        help="with --simulate: balancers sharing the storm (default: the scenario's, else 1)")
    parser.add_argument("--unshared", action="store_true",
                        help="with --simulate: the balancers do not tell each other of their picks")
    parser.add_argument("--import-siteinfo", metavar="DEF",
                        help="convert a WMS arbiter wmsmon_site-info.def into lbsconfig.xml on stdout")
    parser.add_argument("--key-out", metavar="FILE",
                        help="with --import-siteinfo: where to write the TSIG key (mode 0600)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``lbserver`` command once its modules are known to import (see :mod:`lbserver.entry`)."""
    spec = _spec()
    args = build_parser(spec).parse_args(argv)
    if args.import_siteinfo:
        from lbserver.tools.siteinfo import main_import  # noqa: PLC0415

        return main_import(args.import_siteinfo, args.key_out)
    if args.simulate:
        from lbserver.tools.simulate import main_simulate  # noqa: PLC0415

        cfg_path = args.config if args.config != spec.default_config or _exists(args.config) else None
        return main_simulate(cfg_path, args.simulate, args.seed, balancers=args.balancers,
                             shared=False if args.unshared else None)
    if args.once:
        return run_once(args.config)
    return runtime.run(spec, args)


def _exists(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
