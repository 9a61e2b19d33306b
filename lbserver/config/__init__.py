"""lbsconfig.xml: the balancer's configuration, loaded into frozen dataclasses.

:func:`load` (:mod:`lbserver.config.loader`) reads and checks a file; the
dataclasses (:mod:`lbserver.config.model`) are what every other part of
lbserver reads; every attribute is declared once, with its default and
meaning, in :mod:`lbserver.config.settings`. TSIG key files
(:mod:`lbserver.config.tsigkey`) are configuration too: they are checked when
the file loads.
"""

from lbserver.config.loader import EMAIL, ConfigError, default_path, load
from lbserver.config.model import (DEFAULT_RULES, Alias, Dns, Group, HaproxyAgent, HaproxyMap, Node, Peer, Peers,
                                   Poll, Require, Rule, ServerConfig, X2goBroker, X2goLoadChecker, X2goProfile)
from lbserver.config.settings import DEFAULT_PATH, DEFAULT_STATE_FILE

__all__ = ["DEFAULT_PATH", "DEFAULT_RULES", "DEFAULT_STATE_FILE", "EMAIL", "Alias", "ConfigError", "Dns", "Group",
           "HaproxyAgent", "HaproxyMap", "default_path", "Node", "Peer", "Peers", "Poll", "Require", "Rule",
           "ServerConfig", "X2goBroker", "X2goLoadChecker", "X2goProfile", "load"]
