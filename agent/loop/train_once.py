"""`magnet-agent train`: one run of a template's training script, exactly as an experiment runs.

It makes a run directory `runs/train-YYYYmmdd-HHMMSS/` like a research run's: a one-experiment
goal (`goal.md`, whose command names the corpus), `run.json`, a sandbox workspace from the
template, and experiment 000 run by the sandbox (its environment: secrets scrubbed, threads
pinned; its limits; `logs/exp-000.log`, the checkpoint in `outputs/exp-000/`) and recorded as a
baseline. So `runs`, `history`, `show` and `report` read it like any run, and a person sees what
a single experiment does and what the baseline ranking.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.goal.spec import Budget, Goal, load_goal
from agent.rundir import control, experiment_record, ranking
from agent.rundir.init_checkpoint import copy_init, find_init
from agent.rundir.names import GOAL_COPY, RUN_FILE
from agent.rundir.records import RunRecords
from agent.rundir.runs import RunError, new_run_id, runs_root
from agent.scoring.progress import STEP_LINE
from agent.scoring.scorer import Scorer
from sandbox.confine import confinement
from sandbox.edits import SearchReplace
from sandbox.errors import EditError
from sandbox.metrics import parse_metric_line
from sandbox.templates import template_dir
from sandbox.workspace import Workspace

NAME = "train"  # run ids are train-YYYYmmdd-HHMMSS unless --name says otherwise
METRIC = "val_bpb"
PRESET_LINE = "PRESET = None"  # the template's constant --preset sets (bitnet.presets)
TOKENIZER_LINE = 'TOKENIZER = "bytes"'  # the template's constant --tokenizer sets


def train(template: str, corpus: str, budget: float, seed: int, runs_dir: str | None,
          *, unconfined: bool = False, init: str | None = None, name: str = NAME,
          preset: str | None = None, tokenizer: str | None = None) -> int:
    """Run it; 0 when it reported val_bpb. `init` (RUN, RUN:EXP or a checkpoint directory):
    start from that checkpoint, i.e. train a specialist of it. `preset` (a bitnet.presets name):
    set the template's PRESET constant to it, an edit the run's first commit carries; likewise
    `tokenizer` ("bytes" or "bpe:N") its TOKENIZER, trained first when it must be. Raises
    RunError, GoalError or SandboxError (one line each) when the run cannot start."""
    console = Console()
    confined = confinement(unconfined=unconfined)  # no bubblewrap: one line with the fix
    init_path = find_init(init, runs_dir) if init is not None else None
    editable = sorted(p.name for p in template_dir(template).glob("*.py"))  # TemplateError
    run_dir = runs_root(runs_dir).resolve() / new_run_id(name)
    if run_dir.exists():
        raise RunError(f"{run_dir} already exists; wait a second and start again")
    run_dir.mkdir(parents=True)
    goal = write_goal(run_dir, template, corpus, budget, seed, editable, init_path, name)
    if init_path is not None:
        copy_init(init_path, run_dir)
    spec = goal.spec
    start = f" from {init}" if init is not None else ""
    size = f" at preset {preset}" if preset is not None else ""
    size += f" with tokenizer {tokenizer}" if tokenizer not in (None, "bytes") else ""
    hypothesis = f"baseline: {template}{size} on {corpus} for {budget:g}s{start}, seed {seed}"
    status: dict[str, Any] = {"pid": os.getpid(), "exp": 0, "hypothesis": hypothesis,
                              "experiments": 0, "budget": spec.budget.model_dump()}
    console.print(f"[bold]training[/] {template} on {corpus}{start} for {budget:g}s → {run_dir}",
                  soft_wrap=True)
    with Workspace.create(run_dir, template=spec.template, editable=spec.editable,
                          knobs=spec.knobs, goal=spec.metric.goal) as ws:
        (run_dir / RUN_FILE).write_text(json.dumps(
            {"command": NAME, "goal_path": str(run_dir / GOAL_COPY), "template": template,
             "corpus": corpus, "budget": budget, "seed": seed, "unconfined": unconfined,
             "init": str(init_path) if init_path else None},
            indent=2))
        control.write_status(run_dir, {**status, "state": "running"})
        scorer = Scorer(goal, ws, confined)
        scorer.prepare()
        ws.begin(0, hypothesis)
        if preset is not None:
            set_preset(ws, template, preset)
        if tokenizer not in (None, "bytes"):  # "bytes" is the template's own
            set_tokenizer(ws, template, tokenizer, corpus, console)
        try:
            result = _run(scorer, console)
        except KeyboardInterrupt:
            control.write_status(run_dir, {**status, "state": "finished",
                                           "stop_reason": control.STOPPED_BY_A_PERSON})
            raise
        name = spec.metric.name
        metric = result["metrics"].get(name) if result["status"] == "ok" else None
        record = {**experiment_record.draft(ws, spec.editable, goal.knobs,
                                            {"hypothesis": hypothesis}, planner="none",
                                            metric_name=name),
                  **experiment_record.outcome([result], name, metric, result["reason"])}
        if result["status"] == "ok":
            ws.keep(0, record, best=True, status=ranking.BASELINE)
            record["status"] = ranking.BASELINE
        else:
            ws.discard(0, record, status=result["status"])
            record["status"] = result["status"]
        record.update(exp=0, commit=ws.history[-1]["commit"])
    RunRecords(run_dir).append(record)
    log = ws.log_path(0)
    failed = result["status"] != "ok"
    why = (f"the training run {result['status']} ({result['reason']}); see {log}" if failed
           else "a single training run (magnet-agent train)")
    control.write_status(run_dir, {**status, "state": "finished", "stop_reason": why,
                                   "failed": failed})
    if failed:
        console.print("\n".join(result["log_tail"].splitlines()[-15:]), markup=False,
                      highlight=False)
        console.print(f"[red]training {result['status']}: {result['reason']}; full log: {log}[/]")
        return 1
    table = Table(title=f"{template} on {corpus}, {budget:g}s budget "
                        f"({result['confinement']}, scored by the {result['scored_by']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result["metrics"].items():
        table.add_row(name, str(value))
    console.print(table)
    console.print(f"checkpoint: {ws.output_dir(0)}  log: {log}\n"
                  f"review: magnet-agent show {run_dir.name} 0", soft_wrap=True)
    return 0


def set_preset(ws: Workspace, template: str, name: str) -> None:
    """`PRESET = None` -> `PRESET = 'NAME'` in the workspace's train.py (the template applies
    the named shape itself); RunError when the template has no such constant."""
    _set_constant(ws, template, PRESET_LINE, f"PRESET = {name!r}", "--preset")


def set_tokenizer(ws: Workspace, template: str, spec: str, corpus: str,
                  console: Console) -> None:
    """`TOKENIZER = "bytes"` -> `TOKENIZER = "SPEC"` in the workspace's train.py, then that
    tokenizer trained on the corpus if it is not yet (with progress, before the run's clock);
    RunError when the template has no such constant."""
    from agent.scoring.run_tokenizer import describe, ensure_shown

    _set_constant(ws, template, TOKENIZER_LINE, f"TOKENIZER = {spec!r}", "--tokenizer")
    folder = ensure_shown(corpus, spec, console)
    if folder is not None:
        console.print(describe(folder), soft_wrap=True, highlight=False)


def _set_constant(ws: Workspace, template: str, line: str, new: str, option: str) -> None:
    """Replace the template's `line` in the workspace's train.py, an edit the run's first
    commit carries; RunError naming `option` when the template has no such line."""
    try:
        ws.apply([SearchReplace("train.py", line, new)])
    except EditError:
        raise RunError(f"template {template} has no `{line}` line in train.py to set {option} "
                       f"with: drop {option}, or add that constant") from None


def write_goal(run_dir: Path, template: str, corpus: str, budget: float, seed: int,
               editable: list[str], init: Path | None = None, name: str = NAME) -> Goal:
    """`goal.md` for this one run (a goal file a research run could start from), checked."""
    grace = Budget().grace
    front = {
        "name": name, "template": template, "editable": editable,
        "command": "python train.py", "corpus": corpus,
        "metric": {"name": METRIC, "goal": "minimize"},
        "budget": {"per_experiment": budget, "experiments": 1, "wall": budget + grace},
        "seed": seed,
    }
    if init is not None:
        front["init"] = str(init)
    start = f", starting from the checkpoint `{init}`" if init is not None else ""
    brief = (f"One training run of the `{template}` template on `{corpus}` for {budget:g} s "
             f"(seed {seed}){start}, made by `magnet-agent train`: the baseline that "
             "experiments on this template start from.\n")
    path = run_dir / GOAL_COPY
    path.write_text(f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n{brief}",
                    encoding="utf-8")
    return load_goal(path)


def _run(scorer: Scorer, console: Console) -> dict[str, Any]:
    """The experiment's run through the sandbox, scored, with a live progress bar."""
    spec = scorer.goal.spec
    budget = spec.budget.per_experiment
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("preparing", total=budget, status="")
        started: list[float] = []

        def on_line(line: str) -> None:
            if match := STEP_LINE.match(line):
                started[:] = started or [progress.get_time()]
                progress.update(task, description="training",
                                completed=min(budget, progress.get_time() - started[0]),
                                status=f"step {match[1]}  loss {match[2]}")
            elif line and not parse_metric_line(line):
                progress.console.print(line, style="dim", markup=False, highlight=False)

        return scorer.run(seed=spec.seed, repeat=0, on_line=on_line,
                          mem_limit=scorer.mem_limit)
