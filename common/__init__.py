"""Code shared by lbagent and lbserver: config loading, daemon runtime, rate limits on log lines, version."""
