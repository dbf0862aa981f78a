"""`RUN`, `RUN:EXP` and a directory name checkpoints, on a real (tiny) run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from goal_repo import MODES_TRAIN, goal_text, make_goal

from agent.loop.launch import start_run
from agent.rundir.checkpoint_ref import resolve_checkpoint
from agent.rundir.runs import RunError
from sandbox.reader import RunReader


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    goal = make_goal(root, MODES_TRAIN, goal_text("ref", planner="search", experiments=2,
                                                  knobs={"X": "{low: 0.0, high: 2.0}"},
                                                  model=None))
    return start_run(goal, runs_dir=root / "runs", unconfined=True)


def test_run_means_its_best_and_run_exp_any_experiment(run_dir):
    runs = run_dir.parent
    best = RunReader(run_dir).best()
    assert best is not None and best["exp"] > 1  # something was kept: the tag is on it
    assert resolve_checkpoint(run_dir.name, runs) == run_dir / "outputs" / f"exp-{best['exp']:03d}"
    assert resolve_checkpoint(f"{run_dir.name}:0", runs) == run_dir / "outputs" / "exp-000"
    # the second baseline is measured as a repeat run: its checkpoint is exp-001-run2
    assert resolve_checkpoint(f"{run_dir}:001", runs) == run_dir / "outputs" / "exp-001-run2"
    plain = run_dir / "outputs" / "exp-000"
    assert resolve_checkpoint(str(plain)) == plain


@pytest.mark.parametrize("ref, message", [
    ("{run}:99", "experiment 099 of {name} left no checkpoint"),
    ("{run}:seven", "'seven' is not an experiment number"),
    ("no-such-run", "no run 'no-such-run'"),
])
def test_bad_references_are_one_line(run_dir, ref, message):
    with pytest.raises(RunError) as err:
        resolve_checkpoint(ref.format(run=run_dir.name), run_dir.parent)
    assert message.format(name=run_dir.name) in str(err.value)
    assert "\n" not in str(err.value)


def fake_run(root: Path, goal: str, records: list[dict]) -> Path:
    """A run directory holding only what `RUN` is resolved from: its goal, its records, and a
    checkpoint for every experiment."""
    run_dir = root / "runs" / "fake-20260101-000000"
    (run_dir / "outputs").mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    text = goal_text("fake", planner="search", knobs={"X": "{low: 0.0, high: 2.0}"})
    (run_dir / "goal.md").write_text(text.replace("goal: minimize", f"goal: {goal}"))
    (run_dir / "experiments.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records))
    for r in records:
        (run_dir / "outputs" / f"exp-{r['exp']:03d}").mkdir()
    return run_dir


def test_run_with_nothing_kept_means_its_baseline(tmp_path):
    run_dir = fake_run(tmp_path, "minimize", [
        {"exp": 0, "status": "baseline", "metric": 2.0},
        {"exp": 1, "status": "baseline", "metric": 2.1},
        {"exp": 2, "status": "discard", "metric": 1.0},  # better, but not kept
        {"exp": 3, "status": "crashed", "metric": None},
    ])
    assert resolve_checkpoint(run_dir.name, tmp_path / "runs") == run_dir / "outputs" / "exp-000"


def test_run_with_a_kept_best_means_it_in_the_goals_direction(tmp_path):
    run_dir = fake_run(tmp_path, "maximize", [
        {"exp": 0, "status": "baseline", "metric": 2.0},
        {"exp": 1, "status": "baseline", "metric": 2.1},
        {"exp": 2, "status": "keep", "metric": 3.0},
        {"exp": 3, "status": "keep", "metric": 5.0},  # the best: the goal maximizes
        {"exp": 4, "status": "discard", "metric": 4.0},
    ])
    assert resolve_checkpoint(str(run_dir)) == run_dir / "outputs" / "exp-003"


def test_run_before_its_baseline_names_no_checkpoint(tmp_path):
    run_dir = fake_run(tmp_path, "minimize", [{"exp": 0, "status": "crashed", "metric": None}])
    with pytest.raises(RunError, match="has no best experiment yet; name one as fake-"):
        resolve_checkpoint(str(run_dir))
