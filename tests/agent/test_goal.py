"""Goal files: the shipped goals load; every mistake is one line naming the key and the fix."""

from pathlib import Path

import pytest

from agent.goal.spec import GoalError, load_goal, parse_duration

ROOT = Path(__file__).parents[2]
GOOD = """---
name: tiny
template: bitnet-lm
editable: [train.py]
command: python train.py
metric: {name: val_bpb, goal: minimize}
budget: {per_experiment: 30s, experiments: 5, wall: 10m}
knobs:
  LEARNING_RATE: {low: 1e-3, high: 1e-2, log: true}
---
Lower val_bpb.
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "GOAL.md"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["pycode-bitnet", "pyprose-bitnet"])
def test_shipped_goals_load(name):
    goal = load_goal(ROOT / "goals" / f"{name}.md")
    assert goal.spec.name == name
    assert goal.spec.metric.name == "val_bpb"
    assert goal.knobs["LEARNING_RATE"].log
    assert "bits-per-byte" in goal.brief


def test_good_goal_parses_durations_and_knobs(tmp_path):
    goal = load_goal(write(tmp_path, GOOD))
    assert goal.spec.budget.per_experiment == 30 and goal.spec.budget.wall == 600
    assert goal.source_dir.name == "bitnet-lm"
    assert goal.brief == "Lower val_bpb."


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("name: tiny", "name: tiny\ncolour: red"), "unknown key `colour`"),
        (("metric: {name: val_bpb, goal: minimize}", "metric: {name: val_bpb, goal: lower}"),
         "`metric.goal`"),
        (("per_experiment: 30s", "per_experiment: 30x"), "is not a duration; write e.g. 60s"),
        (("wall: 10m", "wall: 10s"), "exceeds wall"),
        (("experiments: 5", "experiments: 0"), "`budget.experiments`"),
        (("editable: [train.py]", "editable: [nope.py]"), "nope.py does not exist"),
        (("editable: [train.py]", "editable: [../x.py]"), "must be a path inside"),
        (("template: bitnet-lm", "template: gpt-9"), "unknown template 'gpt-9'"),
        (("template: bitnet-lm", "workspace: /nonexistent"), "is not a git repository"),
        (("template: bitnet-lm\n", ""), "give exactly one of"),
        (("command: python train.py\n", ""), "`command` is missing"),
        (("LEARNING_RATE: {low: 1e-3", "NOT_A_KNOB: {low: 1e-3"), "NOT_A_KNOB is not a top-level"),
        (("{low: 1e-3, high: 1e-2, log: true}", "{low: 1e-2, high: 1e-3}"),
         "needs low <= high"),
        # every number is finite and in range: NaN would disable a limit, a huge one overflow
        (("per_experiment: 30s", "per_experiment: .nan"), "above zero and at most 30 days"),
        (("wall: 10m", "wall: .inf"), "`budget.wall`"),
        (("wall: 10m", "wall: 1000h"), "at most 30 days"),
        (("experiments: 5", "experiments: " + "9" * 400), "less than or equal to 1000000"),
        (("experiments: 5", "experiments: " + "9" * 5000), "cannot be read"),
        (("experiments: 5", "experiments: 5, tokens: .inf"), "`budget.tokens`"),
        (("name: tiny", "name: tiny\nmin_delta: .nan"), "`min_delta`: Input should be a finite"),
        (("name: tiny", "name: tiny\nmemory_limit_mb: 1e999"), "`memory_limit_mb`"),
        (("name: tiny", "name: tiny\nseed: -1"), "`seed`"),
        (("{low: 1e-3, high: 1e-2, log: true}", "{low: .nan, high: 1e-3}"),
         "`low` must be a finite number"),
        (("{low: 1e-3, high: 1e-2, log: true}", "{low: 1, high: " + "9" * 400 + "}"),
         "`high` must be a finite number, not an integer too large"),
        (("metric: {name", "metric: {name: [oops"), "not valid YAML"),
        (("Lower val_bpb.", ""), "research brief after the front matter is empty"),
        # a specialist keeps its base's shapes
        (("knobs:\n", "init: base-run\nknobs:\n  N_LAYER: {choices: [2, 4]}\n"),
         "knob N_LAYER changes the model's shape, which `init:` takes from the base"),
        (("name: tiny", "name: tiny\ninit: ''"), "`init`"),
        # what the confined experiment may read, write and start
        (("name: tiny", "name: tiny\nreadable: [no-such-data]"),
         "readable: no-such-data does not exist; list files or directories that exist"),
        (("name: tiny", "name: tiny\nreadable: [/]"), "would show a whole home directory"),
        (("name: tiny", "name: tiny\noutput_limit_mb: 0"), "`output_limit_mb`"),
        (("name: tiny", "name: tiny\nmax_processes: 2"), "`max_processes`"),
    ],
)
def test_mistakes_are_one_clear_line(tmp_path, change, expected):
    old, new = change
    assert old in GOOD
    with pytest.raises(GoalError) as info:
        load_goal(write(tmp_path, GOOD.replace(old, new, 1)))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and message.startswith(str(tmp_path)) and len(message) < 400


def test_missing_file_and_missing_front_matter(tmp_path):
    with pytest.raises(GoalError, match="no such goal file"):
        load_goal(tmp_path / "absent.md")
    with pytest.raises(GoalError, match="no YAML front matter"):
        load_goal(write(tmp_path, "just text\n"))


def test_durations():
    assert parse_duration("90") == 90 and parse_duration("2m") == 120
    assert parse_duration("1.5h") == 5400 and parse_duration(45) == 45
    with pytest.raises(ValueError):
        parse_duration("0s")


def test_the_goal_knows_every_merge_method_and_no_other():
    """`merge.method` spells out merge.methods.METHODS (importing it would load torch to read a
    goal): the two lists must agree."""
    from typing import get_args

    from agent.goal.spec import MergeSettings
    from merge.methods import METHODS

    assert get_args(MergeSettings.model_fields["method"].annotation) == METHODS


def test_limits_and_readable_paths(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    goal = load_goal(write(tmp_path, GOOD))
    assert goal.spec.output_limit_mb == 1024 and goal.spec.max_processes == 256
    assert goal.spec.readable == []
    goal = load_goal(write(tmp_path, GOOD.replace(
        "name: tiny", "name: tiny\nreadable: [data]\noutput_limit_mb: 20\nmax_processes: 16")))
    assert goal.spec.readable == [data]  # read from the goal's folder, made absolute
    assert goal.spec.output_limit_mb == 20 and goal.spec.max_processes == 16


def test_a_run_whose_repository_is_gone_reads_its_goal_from_its_own_work_tree(tmp_path):
    """`workspace: PATH` is read when a run starts; resuming or reviewing the run later must
    not need it (moved or deleted since): the run's own work tree stands in, and nothing else
    does (a new run still needs the repository)."""
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text("LEARNING_RATE = 0.004\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    goal = write(tmp_path, GOOD.replace("template: bitnet-lm", f"workspace: {repo}"))
    assert load_goal(goal).source_dir == repo.resolve()
    run_tree = tmp_path / "run" / "workspace"
    shutil.copytree(repo, run_tree, ignore=shutil.ignore_patterns(".git"))
    shutil.rmtree(repo)
    with pytest.raises(GoalError, match="is not a git repository"):
        load_goal(goal)
    assert load_goal(goal, moved_to=run_tree).source_dir == run_tree.resolve()
