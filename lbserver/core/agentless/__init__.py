"""Nodes without lbagent: node_exporter pages scraped directly, and groups read from a Prometheus server.

:mod:`~lbserver.core.agentless.exposition` turns a node_exporter page into
an agent-shaped state; :mod:`~lbserver.core.agentless.scrape` fetches those
pages; :mod:`~lbserver.core.agentless.promapi` asks a Prometheus server
instant queries; :mod:`~lbserver.core.agentless.promgroup` makes a
``prometheus`` group's nodes and their states out of those answers.
"""
