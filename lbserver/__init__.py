"""lbserver: polls the agents, weighs the servers, answers terminals, publishes DNS aliases."""
