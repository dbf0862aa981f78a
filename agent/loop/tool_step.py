"""Tool calls in the loop: numbering the planner's requests against the per-experiment budget,
the goal's explicit steps for planners that cannot choose tools, and running each call once.

Every call is recorded in tool_calls.jsonl (agent.rundir.tool_records) before it runs and when it
finishes, so a call cut off by a crash is run again under its own number, and a finished one is
never run twice.
"""

from __future__ import annotations

import time
from typing import Any

from agent.goal.spec import GoalSpec
from agent.loop.runtime import Runtime
from agent.loop.state import RunState
from agent.planners.base import ToolRequest
from agent.rundir import ranking
from agent.rundir.tool_records import PLANNER, STEP, ToolCallRecord
from agent.tools.base import ToolContext
from agent.tools.registry import call_tool, for_planner


def run_requests(rt: Runtime, state: RunState) -> dict[str, Any]:
    """Run the requested calls, in order; the planner's results go back into its context."""
    exchanges = list(state.get("tool_exchanges") or [])
    reply = 1 + max((x["reply"] for x in exchanges), default=0)
    for request in state["tool_request"] or []:
        record = call(rt, request)
        rt.view.message(f"tool {record.summary()}")
        if request["by"] == PLANNER:
            exchanges.append({**request, "result": result_for_planner(record), "reply": reply})
    return {"tool_request": None, "tool_exchanges": exchanges}


def call(rt: Runtime, request: dict[str, Any]) -> ToolCallRecord:
    """Run one call, or return its recorded result if it finished before a crash."""
    records = rt.tool_records
    done = records.get(request["call"])
    if done is not None and done.finished:
        return done
    records.start(request["call"], rt.workspace.next_exp, request["tool"], request["args"],
                  request["by"])
    if "refused" in request:  # over the tool budget: recorded, never run
        return records.finish(request["call"], error=request["refused"], seconds=0.0)
    rt.view.message(f"tool #{request['call']} {request['tool']} running…")
    started = time.monotonic()
    ctx = ToolContext(run_dir=rt.run_dir, goal=rt.goal, workspace=rt.workspace.path,
                      call=request["call"], console=rt.view.console, unconfined=rt.unconfined)
    outcome = call_tool(ctx, request["tool"], request["args"])
    return records.finish(request["call"], result=outcome.get("result"),
                          error=outcome.get("error"), seconds=time.monotonic() - started)


def requested(rt: Runtime, state: RunState, request: ToolRequest) -> list[dict[str, Any]]:
    """The planner's calls, numbered; those beyond this experiment's budget are refused."""
    first = rt.tool_records.next_call()
    left = calls_left(rt.spec, state)
    calls = []
    for i, tool_call in enumerate(request.tool_calls):
        entry = {"call": first + i, "id": tool_call.id or f"call_{first + i}",
                 "tool": tool_call.name, "args": tool_call.arguments, "by": PLANNER}
        if i >= left:
            entry["refused"] = budget_spent(rt.spec)
        calls.append(entry)
    return calls


def budget_spent(spec: GoalSpec) -> str:
    return (f"the tool budget of {spec.budget.tool_calls} calls for this experiment is "
            "spent; reply with a proposal")


def calls_left(spec: GoalSpec, state: RunState) -> int:
    """The planner's tool calls still allowed before this experiment's proposal."""
    return max(0, spec.budget.tool_calls - len(state.get("tool_exchanges") or []))


def steps_due(rt: Runtime, *, at_end: bool) -> list[dict[str, Any]] | None:
    """The goal's tool settings as explicit steps, for planners that cannot choose tools: a
    claim for each kept improvement not yet claimed, and (at the end) the merge. A step cut
    off by a crash is due again under its own number."""
    enabled = rt.spec.tools
    if rt.planner.chooses_tools or not enabled:
        return None
    calls = [c for c in rt.tool_records.read() if c.by == STEP]
    wanted: list[tuple[str, dict[str, Any]]] = []
    if "record_contribution" in enabled:
        wanted += [("record_contribution", {"exp": r["exp"]})
                   for r in rt.records.read() if r.get("status") == ranking.KEEP]
    if at_end and "merge_specialists" in enabled:
        wanted.append(("merge_specialists", {}))
    due, fresh = [], rt.tool_records.next_call()
    for tool, args in wanted:
        same = [c for c in calls if c.tool == tool and c.args == args]
        if any(c.finished for c in same):
            continue
        number = same[0].call if same else fresh
        fresh += not same
        due.append({"call": number, "id": f"step_{number}", "tool": tool, "args": args,
                    "by": STEP})
    return due or None


def result_for_planner(record: ToolCallRecord) -> str:
    return for_planner({"result": record.result, "error": record.error})
