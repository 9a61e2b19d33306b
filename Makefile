# mille-xterm load balancer
#   make demo      set up and run the loopback demo (agents + balancer + terminals)
#   make test      set up everything the tests need, then run them
#   make quick     the fast tests alone (-m unit, under a minute), with nothing but the virtualenv
#   make bench     the benchmarks, one after the other (several minutes)
#   make deb       the Debian packages in dist/ (installs the build dependencies with apt-get)
#   PYTHON=python3.12 make ...   the interpreter the virtualenv (.venv) is made with

PYTHON ?= python3
BOOTSTRAP = PYTHON="$(PYTHON)" scripts/bootstrap

.PHONY: demo test quick bench deb clean

demo:
	$(BOOTSTRAP)
	.venv/bin/python -m lbserver.tools.demo

test:
	$(BOOTSTRAP) --test
	.venv/bin/python -m pytest -q

quick:
	$(BOOTSTRAP) --quick
	.venv/bin/python -m pytest -q -m unit

bench:
	$(BOOTSTRAP) --test
	.venv/bin/python -m bench.bench_terminal
	.venv/bin/python -m bench.bench_poll
	.venv/bin/python -m bench.bench_agent --seconds 60
	.venv/bin/python -m bench.bench_storm
	.venv/bin/python -m bench.bench_pick
	.venv/bin/python -m bench.bench_dns
	.venv/bin/python -m bench.bench_peers
	.venv/bin/python -m bench.bench_x2go
	.venv/bin/python -m bench.bench_agentless
	.venv/bin/python -m bench.bench_sessions
	.venv/bin/python -m bench.bench_sessionmap

# Built in a copy of the tree under build/deb, so the working tree stays clean.
deb:
	scripts/build-deb

clean:
	rm -rf .venv build dist *.egg-info tests/artifacts .pytest_cache

# System install (see docs/install.md):
#   make install [DESTDIR=/staging/root] [PREFIX=/usr/local] [SYSTEM_PYTHON=/usr/bin/python3]
#   make uninstall       same variables; configuration files you edited are kept
# It first checks that SYSTEM_PYTHON imports every module the commands need, and
# refuses, naming the Debian packages to install, when one is missing
# (CHECK_DEPS=no skips that, e.g. for a DESTDIR staged for another machine).
DESTDIR ?=
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib/mille-xterm
SYSCONFDIR ?= /etc
LOCALSTATEDIR ?= /var
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
MANDIR ?= $(PREFIX)/share/man
MANIFEST ?= $(PREFIX)/share/mille-xterm/install-manifest
CHECK_DEPS ?= yes
# The interpreter the installed commands run with (their #! line).
SYSTEM_PYTHON ?= /usr/bin/python3

SYSINSTALL = $(SYSTEM_PYTHON) scripts/sysinstall --root "$(DESTDIR)" --manifest "$(MANIFEST)"
SUBST = --subst BINDIR=$(BINDIR)

.PHONY: install uninstall

install:
ifneq ($(CHECK_DEPS),no)
	$(SYSINSTALL) check-deps
endif
	$(SYSINSTALL) python --libdir "$(LIBDIR)" --bindir "$(BINDIR)"
	$(SYSINSTALL) dir --mode 0755 "$(SYSCONFDIR)/mille-xterm"
	$(SYSINSTALL) conffile etc/lbaconfig.xml "$(SYSCONFDIR)/mille-xterm/lbaconfig.xml"
	$(SYSINSTALL) conffile etc/lbsconfig.xml "$(SYSCONFDIR)/mille-xterm/lbsconfig.xml"
	$(SYSINSTALL) conffile $(SUBST) init/default/lbagent "$(SYSCONFDIR)/default/lbagent"
	$(SYSINSTALL) conffile $(SUBST) init/default/lbserver "$(SYSCONFDIR)/default/lbserver"
	$(SYSINSTALL) conffile --mode 0755 $(SUBST) init/lbagent.sysv init/common.sysv "$(SYSCONFDIR)/init.d/lbagent"
	$(SYSINSTALL) conffile --mode 0755 $(SUBST) init/lbserver.sysv init/common.sysv "$(SYSCONFDIR)/init.d/lbserver"
	$(SYSINSTALL) conffile init/logrotate "$(SYSCONFDIR)/logrotate.d/mille-xterm"
	$(SYSINSTALL) file $(SUBST) init/lbagent.service "$(SYSTEMDUNITDIR)/lbagent.service"
	$(SYSINSTALL) file $(SUBST) init/lbserver.service "$(SYSTEMDUNITDIR)/lbserver.service"
	$(SYSINSTALL) file init/sysusers.conf "$(SYSUSERSDIR)/mille-xterm.conf"
	$(SYSINSTALL) file man/lbagent.8 "$(MANDIR)/man8/lbagent.8"
	$(SYSINSTALL) file man/lbserver.8 "$(MANDIR)/man8/lbserver.8"
	$(SYSINSTALL) file man/lbctl.8 "$(MANDIR)/man8/lbctl.8"
	$(SYSINSTALL) file man/lbclient.1 "$(MANDIR)/man1/lbclient.1"
	$(SYSINSTALL) file man/lbaconfig.xml.5 "$(MANDIR)/man5/lbaconfig.xml.5"
	$(SYSINSTALL) file man/lbsconfig.xml.5 "$(MANDIR)/man5/lbsconfig.xml.5"
	$(SYSINSTALL) dir --mode 0755 "$(LOCALSTATEDIR)/lib/mille-xterm"
ifeq ($(DESTDIR),)
	$(SYSINSTALL) postinst --sysusers "$(SYSUSERSDIR)/mille-xterm.conf"
endif

uninstall:
	$(SYSINSTALL) uninstall
