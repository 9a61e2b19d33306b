"""Command line of lbagent, the mille-xterm load-balancer agent."""

from __future__ import annotations

import sys

from common.runtime import DaemonSpec, make_parser, run
from lbagent import config as agent_config
from lbagent.service import AgentService

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
         max-request-bytes="65536" request-timeout="5"/>
  <log file="/var/log/lbagent.log" level="info"/>       (default: syslog)
  <access> <allow from="10.0.0.0/24"/> ... </access>    (default: anyone)
  <variables>
    <variable name="NBX11SESS" type="command" command="..." timeout="2"/>
    <variable name="GDM"       type="process"  pattern="gdm3"/>
    <variable name="SCRATCH"   type="disk"     path="/scratch"/>
    <variable name="QUEUE"     type="file"     path="/run/wms/queue"/>
    <variable name="ROOM"      type="constant" value="3"/>
  </variables>

built-in variables:
  NBPROC CPUFREQ(MHz) LOADAVG LOADAVG5 LOADAVG15 CPUUSED(%) MEMTOTAL MEMUSED
  MEMAVAIL(MiB) MEMUSEDPCT SWAPUSEDPCT DISKUSEDPCT(% of /) NBUSERS NBSESSIONS
  UPTIME(s)

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

examples:
  lbagent --check-config -c /etc/mille-xterm/lbaconfig.xml
  lbagent -f -v                       run in the foreground, debug log on stderr
  python3 -c 'import xmlrpc.client as x; print(x.ServerProxy("http://app1:8001").get_state())'

exit status: 0 on a clean stop or a valid configuration, 1 on any error."""


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lbagent`` command; returns the exit status."""
    spec = make_spec()
    args = make_parser(spec).parse_args(argv)
    return run(spec, args)


if __name__ == "__main__":
    sys.exit(main())
