"""One experiment in the workspace, as the nodes drive it: begin, draft its record, run it,
conclude its outcome, and (after a crash) find what the workspace already settled.

An experiment's record is built once: `draft` reads it from the workspace as it will run (edits,
knob values, diff hash and size, parent commit), `outcome` adds what it gave, and `note` is the
two together: the git note, the experiments.jsonl line and what the planner learns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.loop.runtime import Runtime
from agent.loop.state import RunState
from agent.rundir import experiment_record


def begin(rt: Runtime, hypothesis: str) -> int:
    """Open the next experiment in the workspace and show it; its number."""
    exp = rt.workspace.next_exp
    rt.workspace.begin(exp, hypothesis)
    rt.view.experiment_started(exp, hypothesis, rt.spec.budget.per_experiment)
    return exp


def run_once(rt: Runtime, *, repeat: int = 0,
             test_if: Callable[[float], bool] | None = None,
             while_scoring: Callable[[], None] | None = None) -> dict[str, Any]:
    """One run of the experiment in flight; a repeat uses another seed and its own log.
    `test_if(val)` False: the scorer skips the held-out test split (default: scored).
    `while_scoring()`: called when training is over, before the scoring."""
    return rt.scorer.run(seed=rt.spec.seed + repeat, repeat=repeat, on_line=rt.view.line,
                         mem_limit=rt.memory_limit_bytes, test_if=test_if,
                         while_scoring=while_scoring)


def prepared(rt: Runtime, state: RunState) -> int:
    """The number of the experiment in flight, redoing its edits if it was cut off (the
    workspace recovered it as interrupted) under a new number, so the interrupted one keeps
    its own record."""
    exp, proposal = state["exp"], state["proposal"]
    assert exp is not None and proposal is not None
    current = rt.workspace.current
    if current is not None and current["exp"] == exp:
        return exp
    exp = begin(rt, proposal["hypothesis"])
    rt.workspace.apply(proposal["edits"])
    return exp


def draft(rt: Runtime, proposal: dict[str, Any], *, planner: str | None = None,
          ran: bool = True) -> dict[str, Any]:
    """The record of the experiment in flight as far as the workspace tells it, with the tool
    calls made while it was planned."""
    drafted = experiment_record.draft(
        rt.workspace, rt.spec.editable, rt.goal.knobs, proposal,
        planner=planner or rt.planner.name, metric_name=rt.spec.metric.name, ran=ran)
    exp = rt.workspace.current["exp"] if rt.workspace.current else None
    calls = [c.as_dict() for c in rt.tool_records.read() if c.exp == exp]
    return {**drafted, "tool_calls": calls} if calls else drafted


def outcome(rt: Runtime, results: list[dict[str, Any]], metric: float | None,
            reason: str) -> dict[str, Any]:
    return experiment_record.outcome(results, rt.spec.metric.name, metric, reason)


def note(state: RunState) -> dict[str, Any]:
    """The experiment's record as far as it goes before keep or revert: the git note."""
    return {**state["draft"], **(state.get("outcome") or {})}


def refused(rt: Runtime, update: dict[str, Any], drafted: dict[str, Any], status: str,
            what: str) -> dict[str, Any]:
    """An experiment that never runs: recorded with `status`, and its failure goes to reflect."""
    return {**update, "draft": drafted, "decision": status,
            "failure": {"what": what, "status": status}, "outcome": outcome(rt, [], None, what)}


def failed(rt: Runtime, results: list[dict[str, Any]], status: str,
           what: str) -> dict[str, Any]:
    """An experiment whose last run failed with `status`: its log tail goes to reflect."""
    return {"decision": status, "outcome": outcome(rt, results, None, what),
            "failure": {"what": what, "status": status,
                        "log_tail": results[-1].get("log_tail", "")}}


def settled(rt: Runtime, exp: int) -> dict[str, Any] | None:
    """After a crash: the workspace may have finished this experiment already (nothing to
    do) or recovered it as interrupted (it must run again)."""
    ws = rt.workspace
    if ws.current is not None and ws.current["exp"] == exp:
        return None
    entry = next((h for h in reversed(ws.history) if h["exp"] == exp), None)
    if entry is not None and entry["status"] == "interrupted":
        return {"decision": "rerun", "results": []}
    return {}


def commit_of(rt: Runtime, exp: int) -> str | None:
    return next((h["commit"] for h in reversed(rt.workspace.history) if h["exp"] == exp), None)


def append(rt: Runtime, record: dict[str, Any]) -> bool:
    """Write the record once (experiments.jsonl, results.tsv) and show it; True if written."""
    if not rt.records.append(record):
        return False
    rt.view.recorded(record)
    return True
