"""Warm starts are for a template's runs: a warm process imports what the template's train.py
imports, so a repository's command, which imports its own stack, starts cold. The planner warms
up while the last baseline is scored."""

from __future__ import annotations

import json

from goal_repo import goal_text, make_goal

from agent.loop.launch import start_run
from agent.planners.search import SearchPlanner

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


def test_the_planner_warms_up_once_after_the_last_baseline_trained(tmp_path, monkeypatch):
    """Planner.warm_up is called once, when the second baseline's training is over and before
    it is recorded (the local planner then loads its model beside the scoring), with a context
    whose history holds the first baseline."""
    goal = make_goal(tmp_path, SEES_PRELOAD, goal_text(
        "warm-up", planner="search", experiments=1, knobs={"X": "{low: 0.0, high: 2.0}"},
        model=None))
    runs = tmp_path / "runs"
    seen = []

    def spy(self, context):
        (run_dir,) = runs.iterdir()
        records = (run_dir / "experiments.jsonl").read_text().splitlines()
        seen.append(([h.status for h in context.history], len(records),
                     sorted(p.name for p in (run_dir / "logs").iterdir())))

    monkeypatch.setattr(SearchPlanner, "warm_up", spy)
    run_dir = start_run(goal, runs_dir=runs, unconfined=True)
    assert seen == [(["baseline"], 1, ["exp-000.log", "exp-001-run2.log"])]
    assert len((run_dir / "experiments.jsonl").read_text().splitlines()) == 3
