"""`magnet-agent train`: one run of a template's training script, with a live progress bar.

It runs the script exactly as an experiment would (same MAGNET_* contract) in a fresh directory
under runs/, so a person can see what a single experiment does and what the baseline scores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.rundir import runs_root
from sandbox.metrics import parse_metric_line
from sandbox.templates import copy_template

STEP_LINE = re.compile(r"^step\s+(\d+) \| loss ([\d.]+)")


def train(template: str, corpus: str, budget: float, seed: int, runs_dir: str | None) -> int:
    console = Console()
    run_dir = runs_root(runs_dir) / f"train-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    copy_template(template, run_dir / "workspace")
    env = {
        **os.environ,
        "MAGNET_TIME_BUDGET": str(budget),
        "MAGNET_SEED": str(seed),
        "MAGNET_OUTPUT_DIR": str((run_dir / "output").resolve()),
        "MAGNET_CORPUS": corpus,
        "PYTHONUNBUFFERED": "1",
    }
    console.print(f"[bold]training[/] {template} on {corpus} for {budget:g}s → {run_dir}")
    metrics: dict[str, float] = {}
    log_path = run_dir / "train.log"
    with log_path.open("w") as log, Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("preparing", total=budget, status="")
        proc = subprocess.Popen(
            [sys.executable, "train.py"], cwd=run_dir / "workspace", env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        started = None
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            line = line.rstrip()
            if metric := parse_metric_line(line):
                metrics[metric[0]] = metric[1]
            elif match := STEP_LINE.match(line):
                started = started or time.monotonic()
                progress.update(task, description="training",
                                completed=min(budget, time.monotonic() - started),
                                status=f"step {match[1]}  loss {match[2]}")
            elif line:
                progress.console.print(f"[dim]{line}[/]")
        code = proc.wait()
    if code != 0 or "val_bpb" not in metrics:
        tail = log_path.read_text().splitlines()[-15:]
        console.print("\n".join(tail), markup=False, highlight=False)
        console.print(f"[red]training failed (exit {code}); full log: {log_path}[/]")
        return code or 1
    table = Table(title=f"{template} on {corpus}, {budget:g}s budget")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, str(value))
    console.print(table)
    console.print(f"checkpoint: {run_dir / 'output'}  log: {log_path}")
    shutil.rmtree(run_dir / "workspace" / "__pycache__", ignore_errors=True)
    return 0
