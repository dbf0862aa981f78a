"""Finding runs on disk. Light on purpose (no LangGraph, no planners): review commands and the
REPL start fast."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

from agent.goal.spec import Goal, load_goal
from agent.rundir.names import GOAL_COPY, RUN_FILE

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
    read from the original goal file's folder, as the run itself reads them."""
    options = json.loads((run_dir / RUN_FILE).read_text())
    return load_goal(run_dir / GOAL_COPY, base_dir=Path(options["goal_path"]).parent)
