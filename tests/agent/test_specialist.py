"""Specialists from a common base, for real: `train --init` and a research goal with `init:`
start from the base's weights, record the base in their checkpoints, and refuse what cannot
start from it with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import proposal, text

from agent.loop import train_once
from agent.loop.launch import start_run
from agent.rundir.runs import RunError
from bitnet.checkpoint import checkpoint_hash, checkpoint_lineage, load_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make setup installs it)")

CLI = str(Path(sys.executable).with_name("magnet-agent"))


def corpus(root: Path, name: str, line: str) -> Path:
    path = root / name
    path.mkdir()
    for i in range(12):
        (path / f"doc{i}.txt").write_text(f"{line} {i}.\n" * 200)
    return path


# the shortest budget: training stops at the first step boundary after it (one step), and a base
# and specialists a step from it are all these tests need
BUDGET = 0.1


def train(root: Path, *args: str) -> Path:
    """`magnet-agent train ARGS`, the command itself, in a subprocess."""
    env = {**os.environ, "MAGNET_CACHE_DIR": str(root / "cache")}
    runs = root / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    done = subprocess.run([CLI, "train", "--budget", str(BUDGET), "--runs-dir", str(runs), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = set(runs.iterdir()) - before
    return run_dir


def train_in_process(root: Path, corpus: Path) -> Path:
    """A base: what `magnet-agent train` runs (agent.loop.train_once: the same run and sandbox),
    without the 2.5 CPU-s of another interpreter's start-up; the specialist is the command's."""
    runs = root / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    with pytest.MonkeyPatch.context() as mp:  # module fixtures cannot monkeypatch
        mp.setenv("MAGNET_CACHE_DIR", str(root / "cache"))
        assert train_once.train("bitnet-lm", f"text:{corpus}", BUDGET, 1337, str(runs)) == 0
    (run_dir,) = set(runs.iterdir()) - before
    return run_dir


def relative_distance(a: Path, b: Path) -> float:
    """||a - b|| / ||b|| over all weights of two checkpoints."""
    sa, sb = load_checkpoint(a).state_dict(), load_checkpoint(b).state_dict()
    diff = sum(float((sa[k] - sb[k]).pow(2).sum()) for k in sb)
    return (diff / sum(float(t.pow(2).sum()) for t in sb.values())) ** 0.5


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("specialist")
    return root, train_in_process(root, corpus(root, "a", "The quick brown fox"))


@pytest.fixture(scope="module")
def specialist(base_run) -> Path:
    """`train --init BASE` on another topic; the research run below starts from it in turn."""
    root, base = base_run
    topic = corpus(root, "b", "A lazy dog sleeps in the sun")
    return train(root, "--init", str(base), "--corpus", f"text:{topic}", "--seed", "7")


def test_train_init_starts_from_the_base_and_records_it(base_run, specialist):
    _, base = base_run
    base_ckpt = base / "outputs" / "exp-000"
    assert checkpoint_lineage(base_ckpt) == []  # from random weights
    special = specialist

    # the run keeps its own copy of the base, and the checkpoint names it
    assert checkpoint_hash(special / "init") == checkpoint_hash(base_ckpt)
    lineage = checkpoint_lineage(special / "outputs" / "exp-000")
    assert lineage == [checkpoint_hash(base_ckpt)]
    goal = (special / "goal.md").read_text()
    assert f"init: {base_ckpt.resolve()}" in goal
    log = (special / "logs" / "exp-000.log").read_text()
    assert f"starting from {special / 'init'} (base {lineage[0][:12]})" in log
    # it starts from the base's weights: a step away from them, where another seed's
    # random start would be as far as the weights are large (relative distance ~1.4)
    assert relative_distance(special / "outputs" / "exp-000", base_ckpt) < 0.3
    assert json.loads((special / "run.json").read_text())["init"] == str(base_ckpt.resolve())


def test_train_init_refuses_what_is_not_a_checkpoint(base_run):
    root, _ = base_run
    env = {**os.environ, "MAGNET_CACHE_DIR": str(root / "cache")}
    done = subprocess.run([CLI, "train", "--init", "no-such-run", "--runs-dir",
                           str(root / "runs")], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("magnet-agent: error: init: no run 'no-such-run'")
    assert len(done.stderr.strip().splitlines()) == 1


GOAL = """---
name: special
template: bitnet-lm
editable: [train.py, model.py]
command: python train.py
corpus: text:{corpus}
init: {init}
metric: {{name: val_bpb, goal: minimize}}
budget: {{per_experiment: 2s, grace: 120s, experiments: 1, wall: 10m}}
planner: openai
model: scripted-model
env: [MAGNET_STEPS]
---
Tune the base on this topic.
"""
STEPS = "1"  # the research run's baselines start from the base: one step shows it
INIT_LINE = "        self.config = config  # bitnet.checkpoint writes config.json from it"


def test_research_run_from_a_base(base_run, specialist, tmp_path, openai_server, monkeypatch):
    """Its base is the specialist above, named RUN:EXP: a specialist of the specialist, whose
    checkpoints remember both (one run of a base less than a `train --init` of its own)."""
    root, first_base = base_run
    base = specialist
    topic = corpus(tmp_path, "topic", "Lorem ipsum dolor sit amet")
    goal = tmp_path / "GOAL.md"
    goal.write_text(GOAL.format(corpus=topic, init=f"{base.name}:0"))
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("MAGNET_STEPS", STEPS)  # the goal's `env:` passes it: fixed steps
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    openai_server.push(
        proposal({"hypothesis": "an extra scale parameter", "rationale": "new tensor",
                  "edits": [{"path": "model.py", "search": INIT_LINE,
                             "replace": INIT_LINE + "\n        self.extra = nn.Parameter("
                                                    "torch.ones(1))"}]}),
        text("The base checkpoint has no such tensor."),
    )
    run_dir = start_run(goal, runs_dir=root / "runs")

    records = [json.loads(line)
               for line in (run_dir / "experiments.jsonl").read_text().splitlines()]
    base_hash = checkpoint_hash(base / "outputs" / "exp-000")
    assert records[0]["status"] == "baseline"
    baseline_ckpt = run_dir / "outputs" / "exp-000"
    assert checkpoint_lineage(baseline_ckpt) == [
        base_hash, checkpoint_hash(first_base / "outputs" / "exp-000")]
    assert load_checkpoint(baseline_ckpt).config == load_checkpoint(base / "outputs" /
                                                                    "exp-000").config
    # a model.py the base's weights do not fit fails in one line, and the run goes on
    edited = records[-1]
    assert edited["status"] == "crashed", edited
    log = (run_dir / "logs" / f"exp-{edited['exp']:03d}.log").read_text()
    (line,) = [x for x in log.splitlines() if x.startswith("MAGNET_INIT_CHECKPOINT")]
    assert line.startswith("MAGNET_INIT_CHECKPOINT cannot start this model: ")
    assert '"extra"' in line and "load it with the model code that saved it" in line
    assert "Traceback" not in log


def test_research_run_refuses_a_missing_base_before_it_starts(tmp_path):
    goal = tmp_path / "GOAL.md"
    goal.write_text(GOAL.format(corpus=tmp_path, init=tmp_path / "nothing"))
    with pytest.raises(RunError, match="^init: no run '.*nothing'"):
        start_run(goal, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
