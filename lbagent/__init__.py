"""lbagent: reports an application server's state to the balancers over XML-RPC."""
