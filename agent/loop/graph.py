"""The research loop as a LangGraph state machine, checkpointed to SQLite after every node.

A node that waits for a person (plan while paused, approve) routes back to itself and interrupts
the graph there; agent.loop.steering says how the run's driver resumes it.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from agent.loop.nodes import BASELINE_HYPOTHESES, Nodes
from agent.loop.state import RunState
from agent.rundir.names import CHECKPOINTS

SIDE_FILES = ("", "-wal", "-shm")  # the database and SQLite's write-ahead log beside it


def after_baseline(state: RunState) -> str:
    if state.get("stop_reason"):
        return "finish"
    return "baseline" if state["baselines"] < len(BASELINE_HYPOTHESES) else "plan"


def after_plan(state: RunState) -> str:
    if state.get("tool_request"):  # the planner's calls, or the goal's explicit steps
        return "tool"
    if state.get("stop_reason"):
        return "finish"
    if state.get("waiting"):  # paused: plan again once control.jsonl brings news
        return "plan"
    return "edit" if state.get("proposal") else "reflect"


def after_tool(state: RunState) -> str:
    return "finish" if state.get("stop_reason") else "plan"


def after_edit(state: RunState) -> str:
    return "revert" if state.get("decision") else "approve"


def after_approve(state: RunState) -> str:
    if state.get("waiting"):  # no answer yet: ask again once control.jsonl brings news
        return "approve"
    return "revert" if state.get("decision") else "run"


def after_judge(state: RunState) -> str:
    decision = state["decision"]
    return "run" if decision == "confirm" else "keep" if decision == "keep" else "revert"


def after_settle(state: RunState) -> str:
    return "run" if state.get("decision") == "rerun" else "record"


def after_record(state: RunState) -> str:
    return "reflect" if state.get("failure") else "plan"  # a rejection needs no reflection


def build_graph(nodes: Nodes) -> StateGraph:
    graph = StateGraph(RunState)
    for name in ("baseline", "plan", "tool", "edit", "approve", "run", "judge", "keep", "revert",
                 "record", "reflect", "finish"):
        graph.add_node(name, getattr(nodes, name))
    graph.add_edge(START, "baseline")
    graph.add_conditional_edges("baseline", after_baseline, ["baseline", "plan", "finish"])
    graph.add_conditional_edges("plan", after_plan, ["tool", "edit", "reflect", "finish", "plan"])
    graph.add_conditional_edges("tool", after_tool, ["plan", "finish"])
    graph.add_conditional_edges("edit", after_edit, ["approve", "revert"])
    graph.add_conditional_edges("approve", after_approve, ["run", "revert", "approve"])
    graph.add_edge("run", "judge")
    graph.add_conditional_edges("judge", after_judge, ["run", "keep", "revert"])
    graph.add_conditional_edges("keep", after_settle, ["run", "record"])
    graph.add_conditional_edges("revert", after_settle, ["run", "record"])
    graph.add_conditional_edges("record", after_record, ["reflect", "plan"])
    graph.add_edge("reflect", "plan")
    graph.add_edge("finish", END)
    return graph


def checkpointer(run_dir: Path) -> SqliteSaver:
    conn = sqlite3.connect(run_dir / CHECKPOINTS, check_same_thread=False)
    return SqliteSaver(conn)


def check_checkpoints(saver: SqliteSaver) -> None:
    """Raise sqlite3.DatabaseError unless SQLite finds the file sound (garbage, truncated)."""
    problem = saver.conn.execute("PRAGMA quick_check").fetchone()[0]
    if problem != "ok":
        raise sqlite3.DatabaseError(problem)


def set_aside(run_dir: Path) -> Path:
    """Move checkpoints that cannot be read (with their -wal and -shm) to
    `checkpoints.sqlite.corrupt-<time>`: kept for a post-mortem, never deleted."""
    stamp = f"{CHECKPOINTS}.corrupt-{datetime.now():%Y%m%d-%H%M%S}"
    target = run_dir / stamp
    n = 1
    while any(target.with_name(target.name + s).exists() for s in SIDE_FILES):
        n += 1
        target = run_dir / f"{stamp}-{n}"
    for suffix in SIDE_FILES:
        source = run_dir / (CHECKPOINTS + suffix)
        if source.exists():
            os.replace(source, target.with_name(target.name + suffix))
    return target
