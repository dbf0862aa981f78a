"""Warm starts are for a template's runs: a warm process imports what the template's train.py
imports, so a repository's command, which imports its own stack, starts cold."""

from __future__ import annotations

import json

from goal_repo import goal_text, make_goal

from agent.loop.launch import start_run

# its score says whether torch was imported before the script ran (a warm process preloads it)
SEES_PRELOAD = """import sys
X = 3.0
print(f"METRIC score={1.0 if 'torch' in sys.modules else 0.0}")
"""


def test_a_repository_command_starts_cold_even_with_warm_starts_on(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGNET_WARM_START", "1")
    goal = make_goal(tmp_path, SEES_PRELOAD, goal_text(
        "cold", planner="search", experiments=1, knobs={"X": "{low: 0.0, high: 2.0}"},
        model=None))
    run_dir = start_run(goal, runs_dir=tmp_path / "runs", unconfined=True)
    lines = (run_dir / "experiments.jsonl").read_text().splitlines()
    runs = [value for line in lines for value in json.loads(line)["runs"]]
    assert len(runs) >= 3 and set(runs) == {0.0}  # two baseline runs and an experiment, all cold
