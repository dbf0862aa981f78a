"""What the planner is shown (its PlanContext), and a proposal as the state keeps it."""

from __future__ import annotations

from typing import Any

from agent.goal.knob_values import read_knob_values
from agent.loop import tool_step
from agent.loop.runtime import Runtime
from agent.loop.state import RunState
from agent.planners.base import (
    ExperimentSummary,
    Failure,
    PlanContext,
    Proposal,
    ToolCall,
    ToolExchange,
)
from agent.rundir import ranking
from agent.tools.registry import planner_specs


def plan_context(rt: Runtime, state: RunState) -> PlanContext:
    """The editable files as they are now, the history from the records, the last failure and
    the hints, and the tools the planner may still call for this experiment."""
    spec = rt.spec
    files = {p: (rt.workspace.path / p).read_text(encoding="utf-8", errors="replace")
             for p in spec.editable}
    facts = record_facts(rt.records.read(), spec.metric.goal)
    failure = state.get("last_failure")
    tools, note = [], ""
    if rt.planner.chooses_tools and spec.tools:
        if tool_step.calls_left(spec, state):
            tools = planner_specs(list(spec.tools))
        else:
            note = tool_step.budget_spent(spec).capitalize() + "."
    exchanges = [ToolExchange(call=ToolCall(id=x["id"], name=x["tool"], arguments=x["args"]),
                              result=x["result"], reply=x["reply"])
                 for x in state.get("tool_exchanges") or []]
    return PlanContext(
        brief=rt.goal.brief, metric_name=spec.metric.name,
        goal=spec.metric.goal, editable_files=files, knobs=rt.goal.knobs,
        current_knobs=read_knob_values(files, rt.goal.knobs), **facts,
        last_failure=Failure(**failure) if failure else None, hints=list(state["hints"]),
        seed=spec.seed + len(facts["history"]), tools=tools, tool_exchanges=exchanges,
        tool_note=note,
    )


def record_facts(records: list[dict[str, Any]], goal: str) -> dict[str, Any]:
    """All a planner is told of the run's records: each experiment's summary (never its test
    score: rundir.held_out), the best and the baseline, all on the validation split."""
    history = [ExperimentSummary(exp=r["exp"], hypothesis=r["hypothesis"],
                                 status=r["status"], metric=r.get("metric"),
                                 knobs=r.get("knobs") or {}) for r in records]
    return {"history": history, "best_metric": ranking.best(records, goal),
            "baseline_metric": ranking.baseline(records)}


def dump(proposal: Proposal) -> dict[str, Any]:
    """A proposal as plain JSON for the checkpointed state, with what it cost."""
    data = proposal.model_dump()
    usage = proposal.usage
    data["usage"] = {"prompt_tokens": usage.prompt_tokens,
                     "completion_tokens": usage.completion_tokens, "seconds": usage.seconds,
                     "cost_usd": usage.cost_usd, "attempts": usage.attempts}
    return data
