"""Review commands (`runs`, `history`, `show`, `report`) and git alone, on one finished run.

The run is real (scripted OpenAI-compatible server): two baselines, a kept change, a worse one
(discarded) and a crash, then the experiment budget of 3 ends it.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from goal_repo import make_goal, sr
from openai_server import ScriptedServer, proposal, text

from agent.review import (
    ReviewError,
    Run,
    diff_between,
    experiment_diff,
    parse_exp,
    text_plot,
)
from agent.runner import start_run

TRAIN = """X = 3.0
MODE = "ok"
if MODE == "crash":
    raise RuntimeError("boom: MODE crash")
print(f"METRIC score={(X - 1.0) ** 2 + 0.5}")
"""
GOAL = """---
name: reviewed
workspace: repo
editable: [train.py]
command: python train.py
metric: {name: score, goal: minimize}
budget: {per_experiment: 10s, experiments: 3, wall: 10m}
planner: openai
model: scripted-model
---
Make the score small. The score is (X - 1)^2 + 0.5.
"""
CLI = [sys.executable, "-m", "agent.cli"]
STATUSES = ["keep", "keep", "keep", "discard", "crashed"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("review")
    make_goal(tmp, TRAIN, GOAL)
    with ScriptedServer() as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_BASE_URL", server.base_url)
        mp.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
        server.push(
            proposal(sr("X = 3.0", "X = 2.0", "move X towards 1",
                        "because move X towards 1")),                        # exp 2: kept
            proposal(sr("X = 2.0", "X = 3.5", "overshoot X")),               # exp 3: discarded
            proposal(sr('MODE = "ok"', 'MODE = "crash"', "try crash mode")),  # exp 4: crashed
            text("It raised RuntimeError in crash mode; do not use it."),     # its diagnosis
        )
        path = start_run(tmp / "GOAL.md", runs_dir=tmp / "runs")
    assert [r["status"] for r in Run.load(path).records()] == STATUSES
    return path


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    assert (done.returncode == 0) == ok, done.stderr
    return done


def test_history_lists_every_experiment(run_dir):
    out = cli("history", run_dir.name, "--runs-dir", str(run_dir.parent)).stdout
    rows = {int(m[1]): m[0] for m in re.finditer(r"^│ (\d{3}) │.*$", out, re.MULTILINE)}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    for record in Run.load(run_dir).records():
        row = rows[record["exp"]]
        metric = record["metric"]
        assert f" {record['status']} " in row
        assert (f"{metric:.4f}" if metric is not None else " - ") in row
        assert " ".join(record["hypothesis"].split())[:20] in row
    assert "log --notes=magnet" in out
    last = cli("history", str(run_dir), "--last", "2").stdout  # a run directory works too
    assert "│ 003 │" in last and "│ 004 │" in last and "│ 002 │" not in last


def test_show_prints_what_the_record_holds(run_dir):
    out = cli("show", run_dir.name, "2", "--runs-dir", str(run_dir.parent)).stdout
    for part in ("exp 002  keep  score=1.5000", "hypothesis: move X towards 1",
                 "rationale: because move X towards 1", "-X = 3.0", "+X = 2.0",
                 "METRIC score=1.5", "planner openai"):
        assert part in out, out
    crashed = cli("show", str(run_dir), "004").stdout
    assert "crashed" in crashed and '+MODE = "crash"' in crashed
    assert "RuntimeError: boom: MODE crash" in crashed  # the log tail


def test_bad_names_get_one_line_with_the_fix(run_dir):
    missing = cli("show", str(run_dir), "42", ok=False).stderr.strip()
    assert missing == "magnet-agent: error: no experiment 42; this run has 000-004"
    assert "name one as 7 or 007" in cli("show", str(run_dir), "seven", ok=False).stderr
    no_run = cli("history", "nope", "--runs-dir", str(run_dir.parent), ok=False).stderr
    assert f"no run 'nope' under {run_dir.parent}; runs here: {run_dir.name}" in no_run
    assert parse_exp("7") == parse_exp("007") == parse_exp("exp007") == 7


def test_runs_lists_finished_and_interrupted_runs(run_dir, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    finished = runs / run_dir.name
    finished.symlink_to(run_dir)
    stale = runs / "reviewed-19990101-000000"  # started, then killed: nothing runs it
    stale.mkdir()
    (stale / "run.json").write_text("{}")
    (stale / "goal.md").write_text(GOAL)
    os.utime(stale / "run.json", (0, 0))
    out = cli("runs", "--runs-dir", str(runs)).stdout
    lines = out.splitlines()
    row = next(line for line in lines if run_dir.name in line)
    assert re.search(r"reviewed\s+│ finished\s+│\s+3 │ score \(min\)\s+│\s+4\.5000 │\s+1\.5000",
                     row), row
    assert re.search(r"interrupted\s+│\s+0 │", next(line for line in lines if stale.name in line))
    assert out.index(stale.name) < out.index(run_dir.name)  # oldest first


def test_report_regenerates_report_and_plot(run_dir):
    original = (run_dir / "report.md").read_text()
    (run_dir / "report.md").write_text("\n".join(original.splitlines()[:6]))  # a cut-off one
    (run_dir / "progress.png").unlink()
    out = cli("report", run_dir.name, "--runs-dir", str(run_dir.parent)).stdout
    assert "report.md" in out
    report = (run_dir / "report.md").read_text()
    assert report == original  # the same records make the same report
    assert "Baseline 4.5000 → best 1.5000" in report
    assert "Stopped: experiment budget of 3 reached." in report  # the reason survives
    assert (run_dir / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Run.load(run_dir).state() == "finished"


def test_git_alone_tells_the_whole_story(run_dir):
    """Each experiment's commit carries its record as a note: status and metric, with git."""
    ws = run_dir / "workspace"

    def notes(*revs: str) -> dict[int, dict]:
        out = subprocess.run(["git", "-C", str(ws), "log", "--notes=magnet", "--format=%N",
                              *revs], capture_output=True, text=True, check=True).stdout
        found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return {note["exp"]: note for note in found}

    every = notes("--glob=refs/magnet/exp")
    for record in Run.load(run_dir).records():
        note = every[record["exp"]]
        assert (note["status"], note["metric"]) == (record["status"], record["metric"])
        assert note["hypothesis"] == record["hypothesis"]
    assert sorted(notes()) == [0, 1, 2]  # the branch itself holds the kept experiments
    plain = subprocess.run(["git", "-C", str(ws), "log", "--notes=magnet"],
                           capture_output=True, text=True, check=True).stdout
    assert "Notes (magnet):" in plain and '"status": "keep"' in plain
    assert "exp 002: move X towards 1" in plain


def test_diffs_come_from_the_experiment_commits(run_dir):
    run = Run.load(run_dir)
    assert "-X = 2.0\n+X = 3.5" in experiment_diff(run, 3)  # against its own base, exp 2
    between = diff_between(run, 2, 4)
    assert "-X = 2.0" not in between and '+MODE = "crash"' in between
    with pytest.raises(ReviewError, match="no experiment 9; this run has 000-004"):
        diff_between(run, 2, 9)


def test_text_plot_places_kept_discarded_and_failed(run_dir):
    run = Run.load(run_dir)
    lines = text_plot(run.records(), run.metric, run.goal, width=40).plain.splitlines()
    grid = [line.split("│", 1)[1] for line in lines[1:-3]]  # rows, top (worst) first
    axis = lines[-3]
    assert "×" in grid[0]                # exp 3, 6.75: the highest value, on the top row
    assert grid[-1].count("●") == 1      # exp 2, 1.5: the best, on the bottom row
    assert grid[-1].rstrip().endswith("─")  # and the best-so-far line stays there
    assert sum(row.count("●") for row in grid) == 3  # two baselines and exp 2
    assert axis.rstrip().endswith("!")   # exp 4 crashed: no metric, marked on the axis
    assert lines[-2].split() == ["000", "004"]
