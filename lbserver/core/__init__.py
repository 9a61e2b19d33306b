"""The balancer core: polling, health, weights, selection, drain state, history.

Nothing here imports the terminal service, the DNS arbiter or the
management service; they read the core through :mod:`lbserver.core.view`.
"""
