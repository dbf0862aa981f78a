"""Start or resume a research run: run directory, workspace, planner, view, graph."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

from rich.console import Console

from agent.goal.spec import Goal, GoalError, load_goal
from agent.loop.planner_context import record_facts
from agent.loop.runtime import Runtime
from agent.loop.state import RunState, initial_state, rebuilt_state
from agent.loop.view import RunView
from agent.planners import make_planner, resolve_planner_name
from agent.rundir.control import read_status
from agent.rundir.init_checkpoint import copy_init, find_init
from agent.rundir.names import CHECKPOINTS, GOAL_COPY, RUN_FILE
from agent.rundir.records import RunRecords
from agent.rundir.runs import RunError, find_run, load_run_goal, new_run_id, runs_root
from agent.scoring.scorer import Scorer
from sandbox.confine import confinement
from sandbox.metrics import is_finite
from sandbox.workspace import Workspace

RECURSION_LIMIT = 1_000_000  # budgets end the loop, not LangGraph's step cap


def start_run(goal_path: str | Path, *, runs_dir: str | Path | None = None,
              planner: str | None = None, model: str | None = None,
              experiments: int | None = None, unconfined: bool = False,
              console: Console | None = None) -> Path:
    goal = load_goal(goal_path)
    confinement(unconfined=unconfined)  # no bubblewrap: one line with the fix, before any run
    init = find_init(goal.spec.init, runs_dir) if goal.spec.init is not None else None
    check_tool_settings(goal, runs_dir)
    options = {"goal_path": str(Path(goal_path).resolve()),
               "planner": resolve_planner_name(planner or goal.spec.planner),
               "model": model, "experiments": experiments, "unconfined": unconfined}
    run_id = new_run_id(goal.spec.name)
    run_dir = runs_root(runs_dir).resolve() / run_id
    if run_dir.exists():
        raise RunError(f"{run_dir} already exists; wait a second and start again")
    run_dir.mkdir(parents=True)
    shutil.copyfile(goal_path, run_dir / GOAL_COPY)
    if init is not None:
        copy_init(init, run_dir)
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


def check_tool_settings(goal: Goal, runs_dir: str | Path | None) -> None:
    """What the goal's tools will need, checked before the run starts (RunError, one line): a
    key the ledger can load (mode 0600), a specialist to merge with that exists."""
    from agent.rundir.checkpoint_ref import resolve_checkpoint
    from ledger.canonical import LedgerError
    from ledger.keys import load_key

    if goal.spec.ledger is not None:
        try:
            load_key(goal.spec.ledger.key)
        except LedgerError as err:  # missing, not a key, or others may read it
            raise RunError(f"{goal.path}: ledger.key: {err}") from None
    if goal.spec.merge is not None:
        try:
            resolve_checkpoint(goal.spec.merge.with_, runs_dir)
        except RunError as err:
            raise RunError(f"{goal.path}: merge.with: {err}") from None


def resume_run(run: str, *, runs_dir: str | Path | None = None,
               console: Console | None = None) -> Path:
    run_dir = find_run(run, runs_dir)
    _execute(run_dir, fresh=False, console=console)
    return run_dir


def _load_goal(run_dir: Path, options: dict[str, Any]) -> Goal:
    """The goal as it was started: the copy, with a relative `workspace:` read from the
    original file's folder."""
    try:
        return load_run_goal(run_dir)
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
    config = {"configurable": {"thread_id": run_dir.name}, "recursion_limit": RECURSION_LIMIT}
    workspace = Workspace.open(run_dir)  # recovers an experiment a crash left unfinished
    scorer: Scorer | None = None
    try:
        spec = goal.spec
        scorer = Scorer(goal, workspace, confinement(unconfined=bool(options.get("unconfined")),
                                                     network=spec.network))
        scorer.prepare()
        if fresh:  # a new run: its fork servers import torch (seconds) while this process
            # imports LangGraph's stack (a second of one core), not one after the other
            scorer.head_start(mem_limit=scorer.mem_limit)
        from agent.loop.graph import build_graph
        from agent.loop.nodes import Nodes

        saver, latest, lost = _open_checkpoints(run_dir, config)  # once the run is ours
        if not fresh and latest is None:
            _restore_records(workspace, records)
        if workspace.recovered is not None and workspace.recovered.status == "interrupted":
            rec = workspace.recovered
            records.append({**_draft_of(saver, config, rec.exp), "exp": rec.exp,
                            "hypothesis": rec.hypothesis, "status": "interrupted",
                            "commit": rec.commit, "metric": None,
                            "reason": f"the run stopped during {rec.step}; it is re-run"})
        start = (initial_state(run_dir.name) if fresh else
                 None if latest is not None else _rebuilt(run_dir, records))
        history = record_facts(records.read(), goal.spec.metric.goal)["history"]
        planner = make_planner(options["planner"], goal, model=options.get("model"),
                               history=history)
        with RunView(run_dir.name, spec.metric.name, spec.metric.goal, planner.name,
                     console=console) as view:
            view.preload(records.read())
            if lost:
                view.message(lost)
            runtime = Runtime(
                goal=goal, run_dir=run_dir, workspace=workspace, planner=planner,
                records=records, view=view, scorer=scorer,
                memory_limit_bytes=scorer.mem_limit,
                unconfined=bool(options.get("unconfined")),
                session_base=_wall_used(latest, start),
            )
            graph = build_graph(Nodes(runtime)).compile(checkpointer=saver)
            if not fresh and _finished(run_dir, graph, config, latest):
                view.message(f"{run_dir.name} already finished; nothing to resume")
                return
            if start is not None and not fresh:
                view.message(f"no checkpoint in {CHECKPOINTS}: the run goes on from a state "
                             "rebuilt from its journal and records")
            if not fresh:  # a resumed run that has work left
                scorer.head_start(mem_limit=runtime.memory_limit_bytes)  # warm starts, fork servers
            with _sigterm_as_interrupt():
                _drive(graph, start, config, runtime)
    finally:
        if scorer is not None:
            scorer.close()
        workspace.close()


def _drive(graph: Any, start: RunState | None, config: dict[str, Any], rt: Runtime) -> None:
    """Run the graph to its end. Where it waits for a person (an interrupt, agent.loop.steering),
    block until control.jsonl brings a line, then resume it. A run that stopped while waiting
    resumes its waiting node at once: that node reads the run anew (an experiment the stop cut
    off is recorded by now, commands may have come) and waits again only if nothing changed."""
    from langgraph.types import Command

    from agent.loop import status, steering

    if start is None and graph.get_state(config).interrupts:
        graph.invoke(Command(resume=True), config, durability="sync")
    else:
        graph.invoke(start, config, durability="sync")
    while (snapshot := graph.get_state(config)).interrupts:
        steering.wait_for_command(rt.run_dir, snapshot.values["control_seen"],
                                  on_poll=lambda: status.refresh_wall(rt))
        graph.invoke(Command(resume=True), config, durability="sync")


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


def _wall_used(latest: Any, start: RunState | None) -> float:
    values = latest.checkpoint["channel_values"] if latest is not None else start or {}
    return float(values.get("wall_seconds") or 0.0)


def _open_checkpoints(run_dir: Path, config: dict[str, Any]) -> tuple[Any, Any, str]:
    """The checkpointer and the latest checkpoint (None: missing); a file that cannot be read
    is set aside, so the run goes on from a rebuilt state. The text says what was set aside."""
    from agent.loop.graph import check_checkpoints, checkpointer, set_aside

    saver = checkpointer(run_dir)
    try:
        check_checkpoints(saver)
        return saver, saver.get_tuple(config), ""
    except Exception as err:  # corrupt bytes fail in SQLite or in decoding a checkpoint
        saver.conn.close()
        moved = set_aside(run_dir)
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        return checkpointer(run_dir), None, f"{CHECKPOINTS} cannot be read ({why}); " \
                                            f"moved to {moved.name}"


def _restore_records(workspace: Workspace, records: RunRecords) -> None:
    """Record, from their git notes, the experiments the journal finished but the loop never
    recorded (it would have on resume, from its checkpoint)."""
    for entry in workspace.history:
        if not records.has(entry["exp"]):
            note = workspace.record(entry["exp"]) or {}
            records.append({"hypothesis": "", "metric": None, **note, "exp": entry["exp"],
                            "status": entry["status"], "commit": entry["commit"]})


def _rebuilt(run_dir: Path, records: RunRecords) -> RunState:
    """A state for a run without checkpoints, from its records and the time it has used."""
    recorded = records.read()
    status = read_status(run_dir) or {}
    wall = max(_finite(status.get("wall_seconds")),
               sum(_finite(r.get("seconds")) for r in recorded))
    return rebuilt_state(run_dir.name, recorded, wall)


def _finite(value: Any) -> float:
    return float(value) if is_finite(value) else 0.0


def _finished(run_dir: Path, graph: Any, config: dict[str, Any], latest: Any) -> bool:
    """Whether the run ended: its last checkpoint is the end, or without one, its status. A
    stop between a node's writes and the next checkpoint leaves no `next` but that node's task
    with its writes pending: not the end (resuming applies them and goes on)."""
    if latest is None:
        return (read_status(run_dir) or {}).get("state") == "finished"
    snapshot = graph.get_state(config)
    return bool(snapshot.values) and not snapshot.next and not snapshot.tasks


class _sigterm_as_interrupt:
    """SIGTERM stops a run like Ctrl-C: the training process group is killed on the way out."""

    def __enter__(self) -> None:
        self.previous = signal.signal(signal.SIGTERM, self._raise)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
