"""Where the wall time of a research run goes: training against everything else.

Runs a real `magnet-agent run` of a goal (default: the main goal) for N experiments, times it
from the outside (the wall clock, from launching the command to its exit), and reads the run's
own records (experiments.jsonl: the one place each run's timings live) for the rest:

  training   the template's `train_seconds` metric (its training loop), summed over every run
             (baselines and confirmations included)
  startup    the training process's time outside its loop: spawn, imports, data, what it does
             after the loop (save, exit); each run's `run_seconds` minus its `train_seconds`
  scoring    the evaluator's re-scoring of each run (`score_seconds`)
  planning   the planner's proposals (`propose_seconds`)
  other      the rest: the controller's own start-up, the planner's model load, git, records

Ends with `RESULT utilisation_pct=… startup_s=… scoring_s=… planning_s=… other_s=…`, the last
four in seconds per experiment (records, baselines included). The goal: utilisation ≥ 90%.

usage: python bench/utilisation.py [--goal goals/portable-code-bitnet.md] [--experiments 10]
       [--planner auto] [--runs-dir DIR] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
MAIN_GOAL = ROOT / "goals" / "portable-code-bitnet.md"
PHASES = ("training", "startup", "scoring", "planning", "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goal", type=Path, default=MAIN_GOAL)
    parser.add_argument("--experiments", type=int, default=10)
    parser.add_argument("--planner", default=None, help="override the goal's planner")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="where the run goes (default: a new directory under /tmp, kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="magnet-utilisation-"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    goal = unbounded_wall(args.goal, runs_dir)
    command = [sys.executable, "-m", "agent.cli", "run", str(goal),
               "--experiments", str(args.experiments), "--runs-dir", str(runs_dir)]
    if args.planner:
        command += ["--planner", args.planner]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load = LoadSampler()
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, check=False)
    wall = time.monotonic() - start
    load.stop()
    if done.returncode != 0:
        sys.exit(f"the run failed (exit {done.returncode}); see {runs_dir}")
    records_files = sorted(runs_dir.glob("*/experiments.jsonl"))
    if len(records_files) != 1:
        sys.exit(f"expected one run in {runs_dir}, found {len(records_files)}")
    records = [json.loads(line) for line in records_files[0].read_text().splitlines() if line]
    figures = {**account(records, wall), "load_average": load.mean(), "cpus": os.cpu_count()}
    show(figures, records_files[0].parent, args.goal)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    per = figures["per_experiment"]
    print(f"RESULT utilisation_pct={figures['utilisation_pct']:.1f} "
          f"startup_s={per['startup']:.2f} scoring_s={per['scoring']:.2f} "
          f"planning_s={per['planning']:.2f} other_s={per['other']:.2f}")


def unbounded_wall(goal: Path, runs_dir: Path) -> Path:
    """A copy of the goal whose wall budget cannot end the run before its N experiments: on a
    busy machine the goal's own wall budget would (and the figures are per experiment)."""
    text = goal.read_text(encoding="utf-8")
    copy = runs_dir / goal.name
    copy.write_text(re.sub(r"wall:\s*[0-9.]+\s*[smh]?", "wall: 600m", text, count=1))
    return copy


class LoadSampler:
    """The machine's 1-minute load average every 10 s while the run goes: other work on the
    CPUs slows every phase, so the figures say how busy the machine was."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(10.0):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 2) if self.samples else None


def account(records: list[dict], wall: float) -> dict:
    """Seconds of each phase over the whole run, per experiment, and the utilisation."""
    total = dict.fromkeys(PHASES, 0.0)
    runs = 0
    for record in records:
        run_s = record.get("run_seconds") or []
        train_s = record.get("train_seconds") or [None] * len(run_s)
        score_s = record.get("score_seconds") or [None] * len(run_s)
        for run, train, score in zip(run_s, train_s, score_s, strict=True):
            runs += 1
            total["training"] += train or 0.0
            total["startup"] += run - (train or 0.0)
            total["scoring"] += score or 0.0
        total["planning"] += record.get("propose_seconds") or 0.0
    total["other"] = wall - sum(total.values())
    n = max(1, len(records))
    return {"wall_s": round(wall, 1), "experiments": len(records), "runs": runs,
            "utilisation_pct": round(100 * total["training"] / wall, 1),
            "total": {k: round(v, 1) for k, v in total.items()},
            "per_experiment": {k: round(v / n, 2) for k, v in total.items()}}


def show(figures: dict, run_dir: Path, goal: Path) -> None:
    table = Table(title=f"where the wall time went: {goal.name}, {figures['experiments']} "
                        f"experiments ({figures['runs']} runs), {figures['wall_s']:.0f} s")
    for column in ("phase", "seconds", "per experiment", "share of wall"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in PHASES:
        seconds = figures["total"][phase]
        table.add_row(phase, f"{seconds:.1f}", f"{figures['per_experiment'][phase]:.2f}",
                      f"{100 * seconds / figures['wall_s']:.1f}%")
    Console().print(table)
    print(f"run directory: {run_dir}; mean load average {figures.get('load_average')} on "
          f"{figures.get('cpus')} CPUs")


if __name__ == "__main__":
    main()
