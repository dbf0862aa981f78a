"""The run's budget (the goal's, with a person's overrides) and its public status.json."""

from __future__ import annotations

import os
from typing import Any

from agent.loop.runtime import Runtime
from agent.loop.state import RunState
from agent.rundir import control, ranking
from agent.rundir.held_out import held_out


def budget(rt: Runtime, state: RunState) -> dict[str, Any]:
    """The budget in force: the goal's, with the overrides sent through control.jsonl."""
    goal_budget = rt.spec.budget
    return {"experiments": state.get("budget_experiments") or goal_budget.experiments,
            "wall": state.get("budget_wall") or goal_budget.wall,
            "per_experiment": goal_budget.per_experiment, "tokens": goal_budget.tokens}


def exhausted(rt: Runtime, state: RunState) -> str | None:
    """Why the run must stop now (a budget is spent), else None."""
    limits = budget(rt, state)
    if state["experiments"] >= limits["experiments"]:
        return f"experiment budget of {limits['experiments']} reached"
    if rt.wall_used() + limits["per_experiment"] > limits["wall"]:
        return f"wall budget of {limits['wall']:g}s reached"
    if limits["tokens"] is not None and state["tokens"] >= limits["tokens"]:
        return f"token budget of {limits['tokens']} reached"
    return None


def write(rt: Runtime, state: RunState, name: str, *, failed: bool = False) -> None:
    """status.json for watchers (the REPL, `status`): what the run is doing now."""
    proposal = state.get("proposal") or {}
    records = rt.records.read()
    goal = rt.spec.metric.goal
    control.write_status(rt.run_dir, {
        "run_id": rt.run_dir.name, "state": name, "pid": os.getpid(),
        "exp": state.get("exp") if name != "planning" else None,
        "hypothesis": proposal.get("hypothesis") if name != "planning" else None,
        "experiments": state["experiments"], "budget": budget(rt, state),
        "approve": state["approve"], "paused": state["paused"],
        "baseline_metric": ranking.baseline(records),
        "best_metric": ranking.best(records, goal),
        "verdict": ranking.verdict(records, goal), "tokens": state["tokens"],
        "held_out": held_out(records, goal).as_dict(),  # for people: planners never read it
        "wall_seconds": round(rt.wall_used(), 1),
        "stop_reason": state.get("stop_reason"), "failed": failed,
    })


def refresh_wall(rt: Runtime) -> None:
    """Bring status.json's wall time up to now while the run waits for a person."""
    current = control.read_status(rt.run_dir)
    if current is not None:
        control.write_status(rt.run_dir, {**current, "wall_seconds": round(rt.wall_used(), 1)})
