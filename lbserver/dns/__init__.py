"""The DNS arbiter: which nodes stand behind each alias, published by RFC 2136 update."""
