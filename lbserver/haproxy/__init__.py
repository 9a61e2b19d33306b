"""The HAProxy agent-check service: HAProxy asks about a node, the balancer answers its state and weight.

:mod:`lbserver.haproxy.reply` turns the current snapshot into the one-line
replies (pure); :mod:`lbserver.haproxy.access` is the ``<allow>`` list;
:mod:`lbserver.haproxy.service` is the asyncio TCP service the daemon plugs
in.
"""
