"""`python -m agent.cli` is `magnet-agent`."""

from agent.cli.main import entry

entry()
