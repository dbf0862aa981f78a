"""A run killed by SIGKILL mid-experiment resumes: no gap, no duplicate, the cut-off one re-run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from goal_repo import make_goal, wait_for

TRAIN = """import time
X = 3.0
time.sleep(1.5)
print(f"METRIC score={(X - 1.0) ** 2 + 0.5}")
"""
GOAL = """---
name: resumable
workspace: repo
editable: [train.py]
command: python train.py
metric: {name: score, goal: minimize}
budget: {per_experiment: 20s, experiments: 4, wall: 10m}
planner: search
knobs:
  X: {low: 0.0, high: 4.0}
---
Make the score small.
"""
CLI = [sys.executable, "-m", "agent.cli"]


@pytest.fixture
def goal(tmp_path: Path) -> Path:
    return make_goal(tmp_path, TRAIN, GOAL)


def test_sigkill_mid_experiment_then_resume(tmp_path, goal):
    runs = tmp_path / "runs"
    controller = subprocess.Popen([*CLI, "run", str(goal), "--runs-dir", str(runs)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = None

    def third_experiment_running() -> bool:
        nonlocal log
        found = list(runs.glob("*/logs/exp-003.log"))
        log = found[0] if found else None
        return log is not None and log.stat().st_size == 0  # started, not finished

    wait_for(third_experiment_running, timeout=120, what="exp 003 running")
    run_dir = log.parents[1]

    def running_pid() -> int | None:
        current = json.loads((run_dir / "sandbox.json").read_text())["current"]
        return current and current.get("pid")

    wait_for(running_pid, timeout=30)
    training_pid = running_pid()
    controller.send_signal(signal.SIGKILL)
    controller.wait(timeout=10)

    resumed = subprocess.run([*CLI, "resume", run_dir.name, "--runs-dir", str(runs)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with pytest.raises(ProcessLookupError):
        os.kill(training_pid, 0)  # the orphaned training run did not outlive the recovery

    lines = (run_dir / "experiments.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    exps = [r["exp"] for r in records]
    assert exps == list(range(len(exps)))  # no gap, no duplicate
    by_exp = {r["exp"]: r for r in records}
    assert by_exp[3]["status"] == "interrupted"
    assert by_exp[4]["hypothesis"] == by_exp[3]["hypothesis"]  # the cut-off one was re-run
    assert by_exp[4]["status"] in ("keep", "discard")
    # the interrupted record describes the code it was running, as its re-run does
    assert by_exp[3]["knobs"] == by_exp[4]["knobs"] and by_exp[3]["knobs"]["X"] != 3.0
    assert by_exp[3]["diff_hash"] == by_exp[4]["diff_hash"] is not None
    proposals = [r for r in records if r["status"] not in ("baseline", "interrupted")]
    assert len(proposals) == 4  # the experiment budget, the re-run counted once
    assert "Stopped: experiment budget of 4 reached" in (run_dir / "report.md").read_text()

    tsv = (run_dir / "results.tsv").read_text().splitlines()
    assert len(tsv) == len(records) + 1
    notes = subprocess.run(["git", "-C", str(run_dir / "workspace.git"), "log", "--notes=magnet",
                            "--format=%s %N", "refs/magnet/exp/003", "-1"],
                           capture_output=True, text=True, check=True).stdout
    assert '"status": "interrupted"' in notes

    again = subprocess.run([*CLI, "resume", run_dir.name, "--runs-dir", str(runs)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already finished" in again.stdout
    assert len((run_dir / "experiments.jsonl").read_text().splitlines()) == len(records)
