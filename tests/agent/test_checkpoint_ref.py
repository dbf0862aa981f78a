"""`RUN`, `RUN:EXP` and a directory name checkpoints, on a real (tiny) run."""

from __future__ import annotations

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
    assert best is not None
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
