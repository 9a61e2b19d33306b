"""Command line of lbagent, the mille-xterm load-balancer agent."""

from __future__ import annotations

import argparse
import sys

from common.runtime import DaemonSpec, make_parser, run
from common.xmlconfig import ConfigError
from lbagent import config as agent_config
from lbagent import drain
from lbagent.daemon import AgentService

DESCRIPTION = """\
lbagent runs on every application server of a mille-xterm (LTSP) site. It
samples the server's state in the background (CPU count and frequency, load
averages, CPU, memory, swap and disk use, logged-in users and sessions,
uptime, plus the custom variables of its configuration) and answers the
balancers' XML-RPC get_state() calls from that cached sample, so a request
never waits for a measurement.

Without -f it detaches from the terminal, logs to syslog (or to the file of
<log file="..."/>) and writes its pid to PIDFILE. Errors found before it
detaches (bad configuration, address in use, already running) are printed
on stderr and the exit status is 1."""

EPILOG = """\
configuration (lbaconfig.xml):
  <agent listen="0.0.0.0:8001" sample-interval="5"
         max-request-bytes="65536" request-timeout="5"
         drain-file="/var/lib/mille-xterm/lbagent.drain" nologin-file="/etc/nologin"/>
  <log file="/var/log/lbagent.log" level="info"/>       (default: syslog)
  <access> <allow from="10.0.0.0/24"/> ... </access>    (default: anyone)
  <variables>
    <variable name="NBX11SESS" type="command" command="..." timeout="2"/>
    <variable name="GDM"       type="process"  pattern="gdm3"/>
    <variable name="SCRATCH"   type="disk"     path="/scratch"/>
    <variable name="QUEUE"     type="file"     path="/run/wms/queue"/>
    <variable name="WMQUEUE"   type="count"    path="/var/glite/workload_manager/jobdir/new/*"/>
    <variable name="ROOM"      type="constant" value="3"/>
  </variables>

built-in variables:
  NBPROC CPUFREQ(MHz) LOADAVG LOADAVG5 LOADAVG15 CPUUSED(%) MEMTOTAL MEMUSED
  MEMAVAIL(MiB) MEMUSEDPCT SWAPUSEDPCT DISKUSEDPCT(% of /) NBUSERS NBSESSIONS
  UPTIME(s) DRAINED(true while drain-file or nologin-file exists)
  DRAIN_REASON(that file's first line; empty when not drained)

drain at the source (every balancer polling this agent stops sending new
terminals here at its next poll; sessions already open are untouched):
  lbagent --drain [REASON]   write drain-file (REASON default: "drained by admin")
  lbagent --enable           remove drain-file

XML-RPC methods (at / and /RPC2):
  get_state()  -> {hostname, agent_version, sampled_at, variables, users}
  ping()       -> true
  system.listMethods(), system.methodHelp(name), system.methodSignature(name)

signals:
  SIGHUP       reload the configuration; a broken file is logged with
               FILE:LINE and the running configuration stays in force;
               a changed <log> is applied
  SIGUSR1      reopen the log file (for logrotate); the configuration
               is not read
  SIGTERM/INT  stop cleanly and remove the pid file

files:
  /etc/mille-xterm/lbaconfig.xml        configuration
  /run/lbagent.pid                      pid file when daemonised
  /var/lib/mille-xterm/lbagent.drain    drain-file: drained at the source while it exists

examples:
  lbagent --check-config -c /etc/mille-xterm/lbaconfig.xml
  lbagent -f -v                       run in the foreground, debug log on stderr
  lbagent --drain kernel update tonight
  python3 -c 'import xmlrpc.client as x; print(x.ServerProxy("http://app1:8001").get_state())'

exit status:
  0  a clean stop, or a valid configuration
  1  any error (the message says which)
  5  a Python module it needs is missing (the message names the package)"""


def make_spec() -> DaemonSpec:
    """The static description of lbagent for the daemon runtime."""
    return DaemonSpec(
        prog="lbagent",
        description=DESCRIPTION,
        epilog=EPILOG,
        default_config=agent_config.DEFAULT_PATH,
        default_pidfile="/run/lbagent.pid",
        load_config=agent_config.load,
        make_service=AgentService,
        log_settings=agent_config.log_settings,
    )


def add_drain_options(parser: argparse.ArgumentParser) -> None:
    """``--drain [REASON]`` and ``--enable``: drain at the source, then exit."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--drain", nargs="*", metavar="REASON",
                       help="write the drain-file of the configuration, so every balancer stops sending new "
                            f"terminals here, and exit (REASON default: {drain.DEFAULT_REASON!r})")
    group.add_argument("--enable", action="store_true",
                       help="remove the drain-file of the configuration, so balancers send new terminals here "
                            "again, and exit")


def drain_command(args: argparse.Namespace) -> int:
    """``--drain`` / ``--enable``: write or remove the drain file; print what was done; return the exit status."""
    try:
        config = agent_config.load(args.config)
        path = config.drain_file
        if path is None:
            raise drain.DrainFileError(f"{args.config}: <agent drain-file> is empty, so drain at the source is off")
        within = f"within {config.sample_interval:g} s"
        if args.enable:
            if drain.remove_drain(path):
                print(f"lbagent: enabled: removed {path}; the running agent reports DRAINED false at its next sample "
                      f"({within}) and balancers send new terminals here again from their next poll")
            else:
                print(f"lbagent: not drained by {path} (no such file); nothing to do")
            source = drain.drain_source(None, config.nologin_file)
            if source is not None:
                print(f"lbagent: note: {source[0]} exists, so the agent still reports DRAINED ({source[1]})",
                      file=sys.stderr)
        else:
            reason = drain.clean_reason(args.drain)
            drain.write_drain(path, reason)
            print(f"lbagent: drained: wrote {path} (reason: {reason}); the running agent reports DRAINED true at its "
                  f"next sample ({within}) and balancers send no new terminals here from their next poll")
    except (ConfigError, drain.DrainFileError) as exc:
        print(f"lbagent: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser(spec: DaemonSpec | None = None) -> argparse.ArgumentParser:
    """The whole command line of lbagent (its --help, and its man page, come from it)."""
    parser = make_parser(spec or make_spec())
    add_drain_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``lbagent`` command once its modules are known to import (see :mod:`lbagent.entry`)."""
    spec = make_spec()
    parser = build_parser(spec)
    args = parser.parse_args(argv)
    if args.drain is not None or args.enable:
        if args.check_config:
            parser.error("--check-config does not go with --drain or --enable")
        return drain_command(args)
    return run(spec, args)


if __name__ == "__main__":
    sys.exit(main())
