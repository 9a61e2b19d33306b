"""Code shared by lbagent and lbserver: config loading, daemon runtime, version."""
