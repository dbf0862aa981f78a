"""Finding runs on disk, reading the goal they were started with, and naming their experiments
and tool calls. Light on purpose (no LangGraph, no planners): review commands and the REPL start
fast."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from agent.goal.spec import (
    Goal,
    GoalError,
    GoalSpec,
    describe_validation_error,
    load_goal,
    split_front_matter,
)
from agent.rundir.names import GOAL_COPY, RUN_FILE
from sandbox.layout import WORKSPACE_DIR

RUN_ID = re.compile(r"(.+)-\d{8}-\d{6}")  # NAME-YYYYmmdd-HHMMSS


class RunError(ValueError):
    """A run that cannot be found, started or shown; one line naming the problem and the fix."""


def new_run_id(name: str) -> str:
    """The id of a run of `name` started now: NAME-YYYYmmdd-HHMMSS (RUN_ID)."""
    return f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def runs_root(runs_dir: str | Path | None = None) -> Path:
    return Path(runs_dir or os.environ.get("MAGNET_RUNS_DIR") or "runs")


def list_runs(runs_dir: str | Path | None = None) -> list[Path]:
    """Every run under the runs directory, oldest first."""
    root = runs_root(runs_dir)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / RUN_FILE).is_file()]
    return sorted(runs, key=lambda p: ((p / RUN_FILE).stat().st_mtime, p.name))


def find_run(run: str | None, runs_dir: str | Path | None = None) -> Path:
    """A run directory from its id (under runs/) or its path; the newest run when None; the
    newest run of a name (`base` for `base-20261127-101500`: a goal's name, or `train --name`)
    so a goal can name a run that does not exist yet when it is written."""
    if run is None:
        runs = list_runs(runs_dir)
        if not runs:
            raise RunError(f"no runs under {runs_root(runs_dir)}; start one with "
                           "`magnet-agent repl GOAL.md` or pass --runs-dir")
        return runs[-1].resolve()
    for candidate in (Path(run), runs_root(runs_dir) / run):
        if (candidate / RUN_FILE).is_file():
            return candidate.resolve()
    named = [p for p in list_runs(runs_dir)
             if (match := RUN_ID.fullmatch(p.name)) and match[1] == run]
    if named:
        return named[-1].resolve()
    known = [p.name for p in list_runs(runs_dir)]
    hint = f"; runs here: {', '.join(known[-5:])}" if known else ""
    raise RunError(f"no run {run!r} under {runs_root(runs_dir)}{hint}")


def load_run_goal(run_dir: Path) -> Goal:
    """The goal a run was started with: its copy, with a relative `workspace:` or `ledger.key`
    read from the original goal file's folder, as the run itself reads them (a `workspace:`
    repository deleted or moved since: the run's own work tree stands in for it)."""
    options = json.loads((run_dir / RUN_FILE).read_text())
    return load_goal(run_dir / GOAL_COPY, base_dir=Path(options["goal_path"]).parent,
                     moved_to=run_dir / WORKSPACE_DIR)


def run_goal_spec(run_dir: Path) -> GoalSpec:
    """The front matter of the goal a run was started with (its copy), validated as every goal
    is (agent.goal.spec), without what `load_run_goal` also checks on disk (the workspace the run
    was made from, which may have moved since): enough for its name and metric. RunError (one
    line) when it cannot be read."""
    path = run_dir / GOAL_COPY
    try:
        return GoalSpec.model_validate(split_front_matter(path, path.read_text("utf-8"))[0])
    except ValidationError as err:
        raise RunError(f"cannot read the run's goal: {path}: "
                       f"{describe_validation_error(err)}") from None
    except (OSError, UnicodeDecodeError, GoalError) as err:
        raise RunError(f"cannot read the run's goal: {err}") from None


def parse_exp(text: str) -> int:
    """`7`, `007` or `exp007` -> 7."""
    match = re.fullmatch(r"(?:exp[-_ ]?)?(\d{1,6})", text.strip().lower())
    if not match:
        raise RunError(f"{text!r} is not an experiment number; name one as 7 or 007")
    return int(match[1])


def parse_tool_call(text: str) -> int | None:
    """`tool:3` or `tool3` -> 3; None when `text` names no tool call."""
    match = re.fullmatch(r"tool[:#-]?(\d{1,6})", text.strip().lower())
    return int(match[1]) if match else None
