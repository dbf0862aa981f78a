"""The tools the research loop can call (agent.tools.registry names them)."""
