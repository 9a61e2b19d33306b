"""The terminal service: the HTTP hot path that answers each thin client with a server."""
