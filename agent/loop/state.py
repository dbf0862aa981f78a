"""The research loop's typed state: what LangGraph checkpoints after every node.

Only plain JSON-able values live here. The records (experiments.jsonl) are the source of truth
for the baseline, the best and the noise (agent.rundir.ranking reads them), and the workspace (git +
journal) for experiment numbers and what was kept, so a resumed run re-derives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from agent.rundir import ranking
from agent.rundir.records import tokens_of


class RunState(TypedDict, total=False):
    run_id: str
    baselines: int  # baseline runs recorded (two: the unmodified code, measured twice)
    exp: int | None  # the experiment in flight
    proposal: dict[str, Any] | None  # ProposalReply fields + usage of the experiment in flight
    # The in-flight experiment's record as built from the workspace before it ran (code facts:
    # edits, knob values, diff hash and size, parent commit); keep/revert/record only add to it.
    draft: dict[str, Any] | None
    results: list[dict[str, Any]]  # its runs: one, or two after a confirmation
    outcome: dict[str, Any] | None  # what judge (or a refusal) concluded: metric, reason, ...
    decision: str | None  # keep | discard | confirm | crashed | timeout | invalid_edit ...
    failure: dict[str, Any] | None  # {what, log_tail} of the last failure, for reflect
    last_failure: dict[str, Any] | None  # reflect's Failure, handed to the next proposal
    tried: list[str]  # diff hashes of every experiment that ran
    experiments: int  # experiments started (baselines excluded): the experiment budget
    planner_failures: int  # consecutive replies that gave no valid proposal
    # tools: calls waiting to run ({call, id, tool, args, by}), and the planner's calls of the
    # experiment being planned with their results (what its context shows; the budget counts)
    tool_request: list[dict[str, Any]] | None
    tool_exchanges: list[dict[str, Any]]
    planner_down: bool  # the run stopped because the planner's endpoint failed
    tokens: int  # LLM tokens used by the whole run
    wall_seconds: float  # run time used by earlier sessions (resume adds to it)
    stop_reason: str | None
    # steering from control.jsonl
    control_seen: int  # lines of control.jsonl already applied
    hints: list[str]  # from a person, waiting for the next proposal
    paused: bool
    approve: bool  # ask a person before each proposal runs
    stop_requested: bool
    # what a node waits for from a person (agent.loop.steering: paused | approval), else None;
    # the node is visited again, and interrupts the graph until control.jsonl grows
    waiting: str | None
    budget_experiments: int | None  # overrides of the goal's budget
    budget_wall: float | None


def initial_state(run_id: str) -> RunState:
    return RunState(
        run_id=run_id, baselines=0, exp=None, proposal=None, draft=None, results=[],
        outcome=None, decision=None, failure=None, last_failure=None, tried=[], experiments=0,
        planner_failures=0, tool_request=None, tool_exchanges=[], planner_down=False, tokens=0,
        wall_seconds=0.0, stop_reason=None,
        control_seen=0, hints=[], paused=False, approve=False, stop_requested=False,
        waiting=None, budget_experiments=None, budget_wall=None,
    )


def rebuilt_state(run_id: str, records: Sequence[dict[str, Any]],
                  wall_seconds: float) -> RunState:
    """The state of a run whose checkpoints were lost, re-derived from its records.

    Lost with them: the experiment in flight (the workspace recorded it as interrupted; the
    planner proposes anew) and which control lines were applied (all are applied again, in
    order: settings end as they were, earlier hints are given once more).
    """
    proposals = [r for r in ranking.experiments(records)
                 if r.get("status") != "interrupted" and r.get("planner") != "none"]
    ran = [r["diff_hash"] for r in proposals if r.get("runs") and r.get("diff_hash")]
    tokens = sum(tokens_of(r) for r in records)
    return RunState(**{**initial_state(run_id), "baselines": len(ranking.baseline_values(records)),
                       "experiments": len(proposals), "tried": list(dict.fromkeys(ran)),
                       "tokens": tokens, "wall_seconds": wall_seconds})
