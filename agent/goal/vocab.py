"""Names a goal may choose among that higher layers also offer, spelt once and import-light.

The goal's pydantic model, the planner factory (agent.planners) and the CLI's `--planner` all
read `PLANNER_NAMES`; this module imports nothing, so `magnet-agent --help` stays fast.
"""

PLANNER_NAMES = ("auto", "openai", "local", "search")  # auto: openai when configured, else local
