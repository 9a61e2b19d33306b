"""Version of the mille-xterm load balancer (both daemons and the clients)."""

__version__ = "0.1.0"
