"""HAProxy: the agent-check service (state and weight per node) and the session map (user to his server).

:mod:`lbserver.haproxy.reply` turns the current snapshot into the one-line
replies (pure); :mod:`lbserver.haproxy.access` is the ``<allow>`` list;
:mod:`lbserver.haproxy.service` is the asyncio TCP service the daemon plugs
in. :mod:`lbserver.haproxy.sessionmap` computes the session map (pure),
:mod:`lbserver.haproxy.runtime` talks to HAProxy's runtime API, and
:mod:`lbserver.haproxy.mapservice` keeps both current after each cycle.
"""
