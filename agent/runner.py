"""Start or resume a research run: run directory, workspace, planner, view, graph."""

from __future__ import annotations

import json
import shutil
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from agent.control import read_status
from agent.goal import Goal, GoalError, load_goal
from agent.graph import build_graph, checkpointer
from agent.nodes import Nodes, Runtime
from agent.planners import make_planner, resolve_planner_name
from agent.planners.base import ExperimentSummary
from agent.records import RunRecords
from agent.rundir import GOAL_COPY, RUN_FILE, RunError, find_run, runs_root
from agent.state import initial_state
from agent.view import RunView
from sandbox.workspace import Workspace

RECURSION_LIMIT = 1_000_000  # budgets end the loop, not LangGraph's step cap


def start_run(goal_path: str | Path, *, runs_dir: str | Path | None = None,
              planner: str | None = None, model: str | None = None,
              experiments: int | None = None, console: Console | None = None) -> Path:
    goal = load_goal(goal_path)
    options = {"goal_path": str(Path(goal_path).resolve()),
               "planner": resolve_planner_name(planner or goal.spec.planner),
               "model": model, "experiments": experiments}
    run_id = f"{goal.spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = runs_root(runs_dir).resolve() / run_id
    if run_dir.exists():
        raise RunError(f"{run_dir} already exists; wait a second and start again")
    run_dir.mkdir(parents=True)
    shutil.copyfile(goal_path, run_dir / GOAL_COPY)
    spec = goal.spec
    Workspace.create(
        run_dir,
        template=spec.template,
        repo=goal.source_dir if spec.workspace is not None else None,
        editable=spec.editable,
        knobs=spec.knobs,
        goal=spec.metric.goal,
    ).close()
    (run_dir / RUN_FILE).write_text(json.dumps(options, indent=2))
    _execute(run_dir, fresh=True, console=console)
    return run_dir


def resume_run(run: str, *, runs_dir: str | Path | None = None,
               console: Console | None = None) -> Path:
    run_dir = find_run(run, runs_dir)
    _execute(run_dir, fresh=False, console=console)
    return run_dir


def _load_goal(run_dir: Path, options: dict[str, Any]) -> Goal:
    """The goal as it was started: the copy, with a relative `workspace:` read from the
    original file's folder."""
    try:
        return load_goal(run_dir / GOAL_COPY, base_dir=Path(options["goal_path"]).parent)
    except GoalError as err:
        raise RunError(f"cannot resume: {err}") from None


def _execute(run_dir: Path, *, fresh: bool, console: Console | None) -> None:
    options = json.loads((run_dir / RUN_FILE).read_text())
    if options.get("command") == "train":
        raise RunError(f"{run_dir.name} is a single training run (magnet-agent train); there is "
                       "nothing to resume: start another with `magnet-agent train`")
    goal = _load_goal(run_dir, options)
    if options.get("experiments"):
        budget = goal.spec.budget.model_copy(update={"experiments": options["experiments"]})
        goal = goal.model_copy(update={"spec": goal.spec.model_copy(update={"budget": budget})})
    records = RunRecords(run_dir)
    saver = checkpointer(run_dir)
    config = {"configurable": {"thread_id": run_dir.name}, "recursion_limit": RECURSION_LIMIT}
    workspace = Workspace.open(run_dir)  # recovers an experiment a crash left unfinished
    try:
        if workspace.recovered is not None and workspace.recovered.status == "interrupted":
            rec = workspace.recovered
            records.append({**_draft_of(saver, config, rec.exp), "exp": rec.exp,
                            "hypothesis": rec.hypothesis, "status": "interrupted",
                            "commit": rec.commit, "metric": None,
                            "reason": f"the run stopped during {rec.step}; it is re-run"})
        history = [ExperimentSummary(exp=r["exp"], hypothesis=r["hypothesis"],
                                     status=r["status"], metric=r.get("metric"),
                                     knobs=r.get("knobs") or {}) for r in records.read()]
        planner = make_planner(options["planner"], goal, model=options.get("model"),
                               history=history)
        spec = goal.spec
        with RunView(run_dir.name, spec.metric.name, spec.metric.goal, planner.name,
                     console=console) as view:
            view.preload(records.read())
            graph = build_graph(Nodes(Runtime(
                goal=goal, run_dir=run_dir, workspace=workspace, planner=planner,
                records=records, view=view,
                memory_limit_bytes=(spec.memory_limit_mb or 0) * 2**20 or None,
                session_base=_wall_used(saver, run_dir.name),
            ))).compile(checkpointer=saver)
            if not fresh and not graph.get_state(config).next and graph.get_state(config).values:
                view.message(f"{run_dir.name} already finished; nothing to resume")
                return
            with _sigterm_as_interrupt():
                graph.invoke(initial_state(run_dir.name) if fresh else None, config,
                             durability="sync")
    finally:
        workspace.close()


def run_failure(run_dir: Path) -> str | None:
    """Why a finished run failed (no experiment completed, or the planner failed), else None:
    `magnet-agent run` then exits non-zero with this as its last line."""
    status = read_status(run_dir) or {}
    if status.get("state") != "finished" or not status.get("failed"):
        return None
    return f"the run failed: {status.get('stop_reason') or 'unknown reason'}"


def _draft_of(saver: Any, config: dict[str, Any], exp: int) -> dict[str, Any]:
    """The record an interrupted experiment had drafted before it ran (its code facts), if the
    last checkpoint holds it."""
    latest = saver.get_tuple(config)
    values = latest.checkpoint["channel_values"] if latest is not None else {}
    return dict(values.get("draft") or {}) if values.get("exp") == exp else {}


def _wall_used(saver: Any, run_id: str) -> float:
    latest = saver.get_tuple({"configurable": {"thread_id": run_id}})
    if latest is None:
        return 0.0
    return float(latest.checkpoint["channel_values"].get("wall_seconds") or 0.0)


class _sigterm_as_interrupt:
    """SIGTERM stops a run like Ctrl-C: the training process group is killed on the way out."""

    def __enter__(self) -> None:
        self.previous = signal.signal(signal.SIGTERM, self._raise)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
