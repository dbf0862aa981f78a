"""Planners that cannot choose tools (`search`, `local`) run the goal's tool settings as
explicit steps: a ledger claim after every kept improvement, and the merge at the end.

A real `search` run on a user's own git repository, with `record_contribution` enabled, leaves
one claim per kept improvement in a real SQLite ledger; the installed CLI audits the ledger and
another key replays a claim and finds it honest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from goal_repo import MODES_TRAIN, make_goal

from agent.loop.launch import start_run
from agent.rundir.tool_records import STEP, ToolRecords
from ledger.keys import generate_key

CLI = str(Path(sys.executable).with_name("magnet-agent"))
GOAL = """---
name: steps
workspace: repo
editable: [train.py]
command: python train.py
metric: {{name: score, goal: minimize}}
budget: {{per_experiment: 2s, grace: 5s, experiments: 4, wall: 10m}}
planner: search
seed: 3
tools: [record_contribution]
ledger: {{path: {ledger}, key: {key}}}
knobs:
  X: {{low: 0.0, high: 4.0}}
---
Make the score small. The score is (X - 1)^2 + 0.5.
"""


def magnet(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, check=check)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_search_run_claims_every_kept_improvement(tmp_path: Path) -> None:
    ledger, key = tmp_path / "ledger.sqlite", tmp_path / "me.key"
    generate_key(key)
    goal = make_goal(tmp_path, MODES_TRAIN, GOAL.format(ledger=ledger, key=key))
    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    records = [json.loads(line) for line in (run_dir / "experiments.jsonl").read_text()
               .splitlines()]
    kept = [r["exp"] for r in records if r["status"] == "keep"]
    assert kept, "the search found no improvement: the test needs one"
    calls = ToolRecords(run_dir).read()
    # one claim per kept improvement, each right after it, by the goal's step
    assert [(c.tool, c.args, c.by, c.status) for c in calls] == [
        ("record_contribution", {"exp": exp}, STEP, "ok") for exp in kept]
    for call in calls:
        assert call.exp == call.args["exp"] + 1  # it preceded the next experiment

    shown = json.loads(magnet("ledger", "show", "--ledger", str(ledger), "--json").stdout)
    claims = [e["entry"]["body"] for e in shown if e["entry"]["kind"] == "claim"]
    assert [c["exp"] for c in claims] == kept
    assert all(c["run"] == run_dir.name for c in claims)
    assert magnet("ledger", "audit", "--ledger", str(ledger)).returncode == 0

    verifier = tmp_path / "verifier.key"
    generate_key(verifier)
    key.rename(tmp_path / "elsewhere.key")  # a verifier's machine lacks the goal's key file
    first = str(shown[0]["entry"]["seq"])
    verdict = magnet("ledger", "verify", first, "--ledger", str(ledger), "--key", str(verifier),
                     "--json", check=False)
    assert verdict.returncode == 0, verdict.stderr + verdict.stdout
    assert json.loads(verdict.stdout)["verdict"] == "honest"


def test_a_goal_that_enables_a_tool_without_its_settings_is_one_line(tmp_path: Path) -> None:
    goal = make_goal(tmp_path, MODES_TRAIN, GOAL.format(ledger="x", key="k").replace(
        "ledger: {path: x, key: k}\n", ""))
    done = magnet("run", str(goal), "--runs-dir", str(tmp_path / "runs"), check=False)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"magnet-agent: error: {goal}: tool record_contribution needs `ledger: {{key: KEYFILE}}` "
        "(make one with `magnet-agent ledger keygen KEYFILE`)"]
    assert not (tmp_path / "runs").exists()


def test_an_unknown_tool_and_a_missing_key_file_are_one_line(tmp_path: Path) -> None:
    text = GOAL.format(ledger=tmp_path / "l.sqlite", key=tmp_path / "absent.key")
    goal = make_goal(tmp_path, MODES_TRAIN, text)
    done = magnet("run", str(goal), check=False)
    absent = tmp_path / "absent.key"
    assert done.stderr.strip().splitlines() == [
        f"magnet-agent: error: {goal}: ledger.key: cannot read key file {absent}: No such file "
        f"or directory; create one with `magnet-agent ledger keygen {absent}`"]
    goal.write_text(text.replace("tools: [record_contribution]", "tools: [read_file, teleport]"))
    done = magnet("run", str(goal), check=False)
    assert done.stderr.strip().splitlines() == [
        f"magnet-agent: error: {goal}: unknown tool 'teleport' in `tools`; known tools: "
        "record_contribution, verify_contribution, merge_specialists, generate_data, "
        "read_file, read_log"]
