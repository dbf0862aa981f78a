"""Starting a run from the REPL: `magnet-agent run GOAL` in the background, detached from this
terminal, so a REPL that dies (Ctrl-C, a closed terminal, SIGKILL) never takes the run with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from agent.review.run import Run
from agent.rundir.names import CONTROLLER_LOG, GOAL_COPY, RUN_FILE
from agent.rundir.runs import RunError, runs_root

START_TIMEOUT = 120.0  # seconds for a background run to create its run directory


def start_in_background(goal: Path, runs_dir: str | None,
                        run_args: list[str]) -> tuple[Path, subprocess.Popen]:
    """Start `magnet-agent run GOAL` detached from this terminal (its own session, output to
    the run's controller.log), and wait for its run directory."""
    from agent.goal.spec import GoalError, load_goal

    try:
        name = load_goal(goal).spec.name  # a broken goal fails here, in one line
    except GoalError as err:
        raise RunError(str(err)) from None
    root = runs_root(runs_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    log = root / f".controller-{os.getpid()}-{time.time_ns()}.log"
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", str(goal.resolve()),
             "--runs-dir", str(root), *run_args],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # Ctrl-C or a closed terminal here never reaches the run
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        made = [p for p in root.glob(f"{name}-*")
                if p not in before and (p / RUN_FILE).is_file() and (p / GOAL_COPY).is_file()]
        if made:
            os.replace(log, made[0] / CONTROLLER_LOG)  # the open file moves with it
            _wait_live(Run.load(made[0]), child)
            print(f"started {made[0].name} in the background (pid {child.pid}); its output "
                  f"goes to {made[0] / CONTROLLER_LOG}")
            return made[0], child
        if child.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines()
            log.unlink(missing_ok=True)
            raise RunError(f"the run did not start: {lines[-1] if lines else 'no output'}")
        time.sleep(0.1)
    raise RunError(f"the run (pid {child.pid}) made no run directory under {root} in "
                   f"{START_TIMEOUT:.0f}s; see {log}")


def _wait_live(run: Run, child: subprocess.Popen, timeout: float = 10.0) -> None:
    """Until the new run holds its workspace and so reads as live (not as interrupted)."""
    deadline = time.monotonic() + timeout
    while run.state() == "interrupted" and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
