"""Planner selection: `auto` = openai when an endpoint is configured, else the local model."""

from __future__ import annotations

import os

from agent.goal.spec import Goal
from agent.goal.vocab import PLANNER_NAMES
from agent.planners.base import ExperimentSummary, Planner, PlannerError


def resolve_planner_name(name: str) -> str:
    if name == "auto":
        configured = os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY")
        return "openai" if configured else "local"
    return name


def make_planner(name: str, goal: Goal, *, model: str | None = None,
                 history: list[ExperimentSummary] | None = None) -> Planner:
    """Build the planner `name` (auto | openai | local | search) for a goal."""
    name = resolve_planner_name(name)
    if name == "search":
        from agent.planners.search import SearchPlanner

        if not goal.knobs:
            raise PlannerError("the search planner needs `knobs:` in the goal; declare some "
                               "tunable constants or choose another planner")
        return SearchPlanner(history or [])
    if name == "local":
        from agent.planners.local import LocalPlanner

        if not goal.knobs:
            raise PlannerError("the local planner edits knobs only; declare `knobs:` in the goal "
                               "or use planner: openai")
        return LocalPlanner(gguf_path=model)
    if name == "openai":
        from agent.planners.openai_planner import OpenAIPlanner

        return OpenAIPlanner(model=model or goal.spec.model)
    raise PlannerError(f"unknown planner {name!r}; use one of {', '.join(PLANNER_NAMES)}")
