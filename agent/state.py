"""The research loop's typed state: what LangGraph checkpoints after every node.

Only plain JSON-able values live here; the workspace (git + journal) is the source of truth
for experiment numbers and what was kept, so a resumed run re-derives them from it.
"""

from __future__ import annotations

from typing import Any, TypedDict


class RunState(TypedDict, total=False):
    run_id: str
    baseline_metrics: list[float]  # the unmodified code, measured twice
    noise: float  # |difference| of the two baseline runs: the keep rule's margin
    best_metric: float | None
    exp: int | None  # the experiment in flight
    proposal: dict[str, Any] | None  # ProposalReply fields + usage of the experiment in flight
    diff_hash: str | None
    result: dict[str, Any] | None  # status, metrics, seconds, reason, log_tail of its run
    decision: str | None  # keep | discard | crashed | timeout | oom | no_metric | invalid_edit ...
    failure: str | None  # what went wrong last (for reflect), cleared once reflected on
    diagnosis: str | None  # reflect's reading of it, given to the next proposal
    tried: list[str]  # diff hashes of every experiment that ran
    experiments: int  # experiments started (baselines excluded): the experiment budget
    planner_failures: int  # consecutive replies that gave no valid proposal
    tokens: int  # LLM tokens used by the whole run
    wall_seconds: float  # run time used by earlier sessions (resume adds to it)
    stop_reason: str | None
    # steering from control.jsonl
    control_seen: int  # lines of control.jsonl already applied
    hints: list[str]  # from a person, waiting for the next proposal
    paused: bool
    approve: bool  # ask a person before each proposal runs
    stop_requested: bool
    budget_experiments: int | None  # overrides of the goal's budget
    budget_wall: float | None


def initial_state(run_id: str) -> RunState:
    return RunState(
        run_id=run_id, baseline_metrics=[], noise=0.0, best_metric=None, exp=None,
        proposal=None, diff_hash=None, result=None, decision=None, failure=None, diagnosis=None,
        tried=[], experiments=0, planner_failures=0, tokens=0, wall_seconds=0.0,
        stop_reason=None, control_seen=0, hints=[], paused=False, approve=False,
        stop_requested=False, budget_experiments=None, budget_wall=None,
    )
