"""No input bricks a run: each bad input is refused with one line or recorded as one
experiment's failure, and `resume` completes afterwards (real runs, real processes).

Probes, each of which crashed the controller (and `resume` again, forever): non-finite or huge
numbers on control.jsonl, NaN durations in a goal, a 4,000-digit METRIC, a planner reply whose
hypothesis holds a NUL or only blank lines, a workspace error while making one experiment's
edit, and a deleted or corrupt checkpoints.sqlite.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from goal_repo import goal_text, make_goal, wait_for
from openai_server import proposal, text

from agent.loop.launch import resume_run, start_run
from agent.rundir import control
from sandbox.errors import WorkspaceError
from sandbox.proctree import group_members
from sandbox.workspace import Workspace

CLI = [sys.executable, "-m", "agent.cli"]
KNOBS = {"X": "{low: 0.0, high: 4.0}"}
TRAIN = """import time
X = 3.0
time.sleep(0.4)
print(f"METRIC score={(X - 1.0) ** 2 + 0.5}")
"""
# the unmodified code measures fine; any change prints a 4,000-digit "metric" (and a NaN)
HUGE_METRIC_TRAIN = """X = 3.0
if X != 3.0:
    print("METRIC score=" + "9" * 4000)
    print("METRIC loss=nan")
else:
    print(f"METRIC score={(X - 1.0) ** 2 + 0.5}")
"""


def records_of(run_dir: Path) -> list[dict]:
    lines = (run_dir / "experiments.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def cli(*args: str, timeout: float = 300, **options) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          **options)


def resume_completes(run_dir: Path, **options) -> None:
    again = cli("resume", run_dir.name, "--runs-dir", str(run_dir.parent), **options)
    assert again.returncode in (0, 1), again.stderr[-2000:]  # 1: a finished, failed run
    assert "Traceback" not in again.stderr and "already finished" in again.stdout


def one_run_dir(runs: Path) -> Path:
    return wait_for(lambda: next(iter(runs.glob("*/run.json")), None), what="run dir").parent


# --- numbers from outside -------------------------------------------------------------------


BAD_CONTROL_LINES = [
    '{"cmd": "budget", "what": "experiments", "value": Infinity}',
    '{"cmd": "budget", "what": "wall", "value": NaN}',
    '{"cmd": "budget", "what": "wall", "value": -Infinity}',
    '{"cmd": "budget", "what": "experiments", "value": ' + "9" * 4000 + "}",
    '{"cmd": "budget", "what": "experiments", "value": 2.5}',
    '{"cmd": "hint", "text": "use \\u0000 here"}',
    '{"cmd": "hint", "text": "\\n\\n"}',
    "[" * 100_000 + "]" * 100_000,
]


@pytest.mark.parametrize("line", BAD_CONTROL_LINES[:-1])
def test_a_bad_command_is_refused_in_one_line(line):
    with pytest.raises(control.ControlError) as info:
        control.validate(json.loads(line))
    assert "\n" not in str(info.value)


def test_bad_control_lines_are_skipped_and_later_ones_applied(tmp_path):
    goal = make_goal(tmp_path, TRAIN, goal_text("steered", planner="search", knobs=KNOBS,
                                                experiments=6, model=None))
    runs = tmp_path / "runs"
    controller = subprocess.Popen([*CLI, "run", str(goal), "--runs-dir", str(runs)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = one_run_dir(runs)
    wait_for(lambda: (run_dir / "logs" / "exp-000.log").exists(), what="the baseline running")
    good = json.dumps({"cmd": "budget", "what": "experiments", "value": 2})
    with (run_dir / control.CONTROL_FILE).open("a") as f:  # raw, as `echo >>` would
        f.write("\n".join([*BAD_CONTROL_LINES, good]) + "\n")
    _, stderr = controller.communicate(timeout=300)

    assert controller.returncode == 0, stderr[-2000:]
    assert "experiment budget of 2 reached" in (run_dir / "report.md").read_text()
    records = records_of(run_dir)
    assert len([r for r in records if r["status"] != "baseline"]) == 2
    assert all(not r.get("hints") for r in records)  # neither refused hint reached a prompt
    resume_completes(run_dir)


@pytest.mark.parametrize("budget", ["per_experiment: .nan, wall: 10m",
                                    "per_experiment: 2s, wall: .inf"])
def test_a_goal_with_a_non_finite_duration_is_one_line(tmp_path, budget):
    goal = make_goal(tmp_path, TRAIN, goal_text("nan", planner="search", knobs=KNOBS,
                                                model=None, budget=budget))
    goal.write_text(goal.read_text().replace(", wall: 10m}", "}"))  # the budget names it
    done = cli("run", str(goal), "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "budget." in last and "above zero and at most 30 days" in last
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_4000_digit_metric_is_that_experiments_failure(tmp_path):
    goal = make_goal(tmp_path, HUGE_METRIC_TRAIN,
                     goal_text("huge", planner="search", knobs=KNOBS, experiments=2, model=None))
    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    records = records_of(run_dir)
    assert [r["status"] for r in records] == ["baseline", "baseline", "no_metric", "no_metric"]
    assert all(r["metric"] is None for r in records[2:])
    assert all("value is not a number (or has more than 30 digits)" in r["reason"]
               for r in records[2:])
    assert records[2]["metrics"] == {"loss": None}  # strict JSON: NaN is written as null
    for line in (run_dir / "experiments.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in the records"))
    assert "experiment budget of 2 reached" in (run_dir / "report.md").read_text()
    for line in (run_dir / "results.tsv").read_text().splitlines()[1:]:
        assert len(line) < 200  # no 4,000 digits anywhere in the records
    resume_completes(run_dir)


# --- planner text ---------------------------------------------------------------------------


def test_a_hypothesis_with_a_nul_or_blank_lines_is_an_invalid_reply(tmp_path, openai_server,
                                                                     monkeypatch):
    env = {"OPENAI_BASE_URL": openai_server.base_url, "OPENAI_API_KEY": "sk-test-not-a-secret",
           "MAGNET_OPENAI_RETRY_DELAY": "0.01"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    goal = make_goal(tmp_path, TRAIN, goal_text("texts", planner="openai", knobs=KNOBS,
                                                experiments=1))
    knob = [{"knob": "X", "value": 2.0}]
    openai_server.push(
        proposal({"hypothesis": "move X\u0000 towards 1", "edits": knob}),  # invalid: repair
        proposal({"hypothesis": "\n\n\n", "edits": knob}),       # invalid again: one failure
        text("The hypothesis must be one line of plain text."),              # its diagnosis
        proposal({"hypothesis": "move X towards 1", "edits": knob}),         # exp 2 runs
    )
    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    records = records_of(run_dir)
    assert [r["status"] for r in records] == ["baseline", "baseline", "keep"]
    assert records[2]["hypothesis"] == "move X towards 1"
    repair = "\n".join(openai_server.user_messages(1))
    assert "hypothesis contains the control character" in repair
    assert "no valid proposal" in "\n".join(openai_server.user_messages(3))
    assert "hypothesis is blank" in "\n".join(openai_server.user_messages(3))
    assert openai_server.pending == 0
    resume_completes(run_dir, env={**os.environ, **env})


# --- one experiment's error -----------------------------------------------------------------


def test_a_workspace_error_making_one_edit_is_that_experiments_failure(tmp_path, monkeypatch):
    goal = make_goal(tmp_path, TRAIN, goal_text("broken", planner="search", knobs=KNOBS,
                                                experiments=2, model=None))
    apply = Workspace.apply
    calls = []

    def apply_once_broken(self, edits):
        calls.append(edits)
        if len(calls) == 1:
            raise WorkspaceError("the disk refused this edit; free some space")
        return apply(self, edits)

    monkeypatch.setattr(Workspace, "apply", apply_once_broken)
    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    records = records_of(run_dir)
    assert [r["status"] for r in records[:3]] == ["baseline", "baseline", "invalid_edit"]
    assert "could not be made: the disk refused this edit" in records[2]["reason"]
    assert records[3]["status"] in ("keep", "discard")  # the run went on
    assert "experiment budget of 2 reached" in (run_dir / "report.md").read_text()
    monkeypatch.undo()
    resume_run(run_dir.name, runs_dir=run_dir.parent)  # nothing left to do, no error


# --- checkpoints ----------------------------------------------------------------------------


def killed_mid_experiment(tmp_path: Path) -> Path:
    """A run (budget 4) killed by SIGKILL while exp 003 trains; its run directory."""
    goal = make_goal(tmp_path, TRAIN, goal_text("cut", planner="search", knobs=KNOBS,
                                                experiments=4, model=None,
                                                budget="per_experiment: 20s"))
    runs = tmp_path / "runs"
    controller = subprocess.Popen([*CLI, "run", str(goal), "--runs-dir", str(runs)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_dir = one_run_dir(runs)
        wait_for(lambda: (run_dir / "logs" / "exp-003.log").exists(), timeout=120,
                 what="exp 003 running")
    finally:
        controller.send_signal(signal.SIGKILL)
        controller.wait(timeout=10)
    return run_dir


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One killed run, left as the kill left it: each damage test resumes its own copy (a run
    directory may move), where each made and killed its own run (a controller's start-up and
    four experiments each time)."""
    run_dir = killed_mid_experiment(tmp_path_factory.mktemp("killed"))
    # the copies are taken once nothing of the killed run still writes into it
    current = json.loads((run_dir / "sandbox.json").read_text())["current"]
    if current and current.get("pid"):
        wait_for(lambda: not group_members(int(current["pid"])), what="the orphaned run gone")
    return run_dir


@pytest.mark.xdist_group("killed-run")  # one worker: the killed run is made once
@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_resume_without_readable_checkpoints_rebuilds_from_the_records(tmp_path, killed_run,
                                                                       damage):
    run_dir = tmp_path / "runs" / killed_run.name
    shutil.copytree(killed_run, run_dir, symlinks=True)
    checkpoints = run_dir / "checkpoints.sqlite"
    dropped = None
    for side in run_dir.glob("checkpoints.sqlite*"):  # with its write-ahead log, which SQLite
        side.unlink()                                  # would read in place of the garbage
    if damage == "garbage":
        garbage = os.urandom(3000)
        checkpoints.write_bytes(garbage)
        # and the loop died between finishing exp 002 and recording it: the journal and the
        # git note hold it, the records do not
        for name in ("experiments.jsonl", "results.tsv"):
            path = run_dir / name
            lines = path.read_text().splitlines(keepends=True)
            if name == "experiments.jsonl":
                dropped = json.loads(lines[-1])
            path.write_text("".join(lines[:-1]))

    resumed = cli("resume", run_dir.name, "--runs-dir", str(run_dir.parent))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    said = " ".join(resumed.stdout.split())  # the terminal view wraps lines
    assert "rebuilt from its journal and records" in said
    assert damage == "deleted" or "checkpoints.sqlite cannot be read" in said

    records = records_of(run_dir)
    assert [r["exp"] for r in records] == list(range(len(records)))  # no gap, no duplicate
    by_exp = {r["exp"]: r for r in records}
    assert by_exp[3]["status"] == "interrupted"
    proposals = [r for r in records if r["status"] not in ("baseline", "interrupted")]
    assert len(proposals) == 4  # the budget still holds: the experiments were re-counted
    assert "experiment budget of 4 reached" in (run_dir / "report.md").read_text()
    assert len((run_dir / "results.tsv").read_text().splitlines()) == len(records) + 1
    if damage == "garbage":
        kept_aside = list(run_dir.glob("checkpoints.sqlite.corrupt-*"))
        assert [p.read_bytes() for p in kept_aside if p.name.endswith(tuple("0123456789"))] \
            == [garbage]  # moved aside, never deleted
        restored = by_exp[dropped["exp"]]
        for key in ("hypothesis", "status", "metric", "diff_hash", "commit"):
            assert restored[key] == dropped[key]
    resume_completes(run_dir)
