"""A run killed by SIGKILL mid-experiment resumes: no gap, no duplicate, the cut-off one re-run;
one killed while it waits for a person resumes waiting."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from goal_repo import make_goal, wait_for

from agent.rundir import control

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
budget: {per_experiment: 20s, experiments: 2, wall: 10m}
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
    # the experiment budget (2: exp 2 and the cut-off exp 3), the re-run counted once: had the
    # interrupted one counted, there would be no exp 4
    assert len(proposals) == 2
    assert "Stopped: experiment budget of 2 reached" in (run_dir / "report.md").read_text()

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


def test_killed_while_waiting_for_a_person_then_resume(tmp_path):
    """Paused, or with a proposal waiting for approval, a run killed and resumed waits again (the
    wait is a checkpointed interrupt); what the person sends the new process lets it go on."""
    goal = make_goal(tmp_path, TRAIN.replace("time.sleep(1.5)\n", ""), GOAL)
    runs = tmp_path / "runs"

    def launch(*args: str) -> subprocess.Popen:
        return subprocess.Popen([*CLI, *args, "--runs-dir", str(runs)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def waits(process: subprocess.Popen, state: str) -> bool:
        status = control.read_status(run_dir) or {}
        return status.get("pid") == process.pid and status.get("state") == state

    def exps() -> list[int]:
        path = run_dir / "experiments.jsonl"
        return [json.loads(line)["exp"] for line in path.read_text().splitlines()]

    first = launch("run", str(goal))
    run_dir = wait_for(lambda: next(runs.glob("*/run.json"), None), what="run.json").parent
    control.send(run_dir, {"cmd": "pause"})
    wait_for(lambda: waits(first, "paused"), timeout=120, what="paused")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)

    second = launch("resume", run_dir.name)
    wait_for(lambda: waits(second, "paused"), timeout=60, what="paused again")
    time.sleep(1)
    assert waits(second, "paused") and exps() == [0, 1]  # nothing started while paused
    control.send(run_dir, {"cmd": "approve", "on": True})
    control.send(run_dir, {"cmd": "resume"})
    asked = wait_for(lambda: control.read_approval(run_dir), timeout=60, what="approval asked")
    wait_for(lambda: waits(second, "waiting_approval"), what="waiting for approval")
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=10)

    third = launch("resume", run_dir.name)
    # the cut-off experiment is recorded as interrupted; its proposal asks again, renumbered
    again = wait_for(lambda: (request := control.read_approval(run_dir))
                     and request["exp"] != asked["exp"] and request, timeout=60,
                     what="approval asked again")
    assert again["exp"] == asked["exp"] + 1 and again["hypothesis"] == asked["hypothesis"]
    wait_for(lambda: waits(third, "waiting_approval"), what="waiting for approval again")
    time.sleep(1)
    assert waits(third, "waiting_approval") and exps() == [0, 1, asked["exp"]]
    control.send(run_dir, {"cmd": "answer", "exp": again["exp"], "decision": "yes"})
    control.send(run_dir, {"cmd": "approve", "on": False})
    assert third.wait(timeout=120) == 0, third.stderr.read().decode()[-2000:]

    records = [json.loads(line) for line in
               (run_dir / "experiments.jsonl").read_text().splitlines()]
    assert exps() == list(range(len(records)))  # no gap, no duplicate
    by_exp = {r["exp"]: r for r in records}
    assert by_exp[asked["exp"]]["status"] == "interrupted"
    assert by_exp[again["exp"]]["status"] in ("keep", "discard")
    assert by_exp[again["exp"]]["hypothesis"] == asked["hypothesis"]
    assert control.read_approval(run_dir) is None
    assert control.read_status(run_dir)["state"] == "finished"
