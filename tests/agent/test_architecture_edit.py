"""The bitnet-lm template's model lives in the workspace: an LLM planner changes the architecture
by editing model.py, and knob planners still change only train.py's constants."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from openai_server import proposal

from agent.goal.knob_values import read_knob_values, top_level_assignments
from agent.goal.spec import load_goal
from agent.loop.launch import start_run
from bitnet.checkpoint import config_from_hf, load_checkpoint
from bitnet.data import load_corpus
from bitnet.evaluate import evaluate_bpb
from sandbox.edits import KnobSet, apply_edits
from sandbox.metrics import parse_metric_lines
from sandbox.templates import template_dir

ROOT = Path(__file__).resolve().parents[2]
GOALS = [ROOT / "goals" / "pycode-bitnet.md", ROOT / "goals" / "pyprose-bitnet.md"]
GATE = "hidden = self.act_fn(self.gate_proj(x)) * self.up_proj(x)"  # FFN_ACT's activation
RELU = "hidden = F.relu(self.gate_proj(x)) * self.up_proj(x)"  # plain ReLU: FFN_ACT has none


@pytest.mark.parametrize("goal_path", GOALS, ids=lambda p: p.stem)
def test_knob_edits_still_land_in_train_py(tmp_path, goal_path):
    """The search and local planners send knob edits without a path: each must find its one
    file, train.py, so model.py may assign none of the knobs at top level."""
    goal = load_goal(goal_path)
    assert goal.spec.editable == ["train.py", "model.py"]
    model_names = top_level_assignments((goal.source_dir / "model.py").read_text())
    assert not set(model_names) & set(goal.knobs)
    workspace = tmp_path / "ws"
    shutil.copytree(goal.source_dir, workspace)
    current = read_knob_values({"train.py": (workspace / "train.py").read_text()}, goal.knobs)
    for name, spec in goal.knobs.items():
        value = next(v for v in spec.choices or (spec.low, spec.high) if v != current[name])
        edit = KnobSet(name, value)
        changed = apply_edits(workspace, [edit], goal.spec.editable, goal.spec.knobs)
        assert changed == ["train.py"], name
        assert f"{name} = {value!r}" in (workspace / "train.py").read_text()


GOAL = """---
name: arch
template: bitnet-lm
editable: [train.py, model.py]
command: python train.py
corpus: text:{corpus}
metric: {{name: val_bpb, goal: minimize}}
budget: {{per_experiment: 2s, grace: 120s, experiments: 1, wall: 10m}}
planner: openai
model: scripted-model
env: [MAGNET_STEPS]
knobs:
  LEARNING_RATE: {{low: 1e-3, high: 1.5e-2, log: true}}
---
Lower val_bpb; the architecture is in model.py.
"""


def test_an_architecture_edit_in_model_py_runs_and_is_recorded(tmp_path, openai_server,
                                                               monkeypatch):
    corpus, cache = tmp_path / "corpus", tmp_path / "cache"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"The quick brown fox {i} jumps over the dog.\n" * 50)
    goal = tmp_path / "GOAL.md"
    goal.write_text(GOAL.format(corpus=corpus))
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(cache))
    monkeypatch.setenv("MAGNET_STEPS", "2")  # the edit needs to run and be scored, not to learn
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    openai_server.push(proposal({
        "hypothesis": "plain ReLU instead of the configured activation in the gated FFN",
        "rationale": "a smoother gate may train faster in few steps",
        "edits": [{"path": "model.py", "search": GATE, "replace": RELU}],
    }))

    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    records = [json.loads(line)
               for line in (run_dir / "experiments.jsonl").read_text().splitlines()]
    baselines = [r for r in records if not r.get("edits")]
    assert len(baselines) == 2 and all(math.isfinite(r["metric"]) for r in baselines)
    arch = [r for r in records if r.get("edits")]
    assert len(arch) == 1, records
    record = arch[0]
    assert record["status"] in ("keep", "discard") and math.isfinite(record["metric"])
    assert [e["path"] for e in record["edits"]] == ["model.py"]
    assert openai_server.pending == 0
    # scored by the template's evaluator, from the checkpoint, with the edited model.py
    assert {r["scored_by"] for r in records} == {"evaluator"}

    ws = run_dir / "workspace.git"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ws), *args], capture_output=True, text=True,
                              check=True).stdout

    assert git("show", "--format=", "--name-only", record["commit"]).split() == ["model.py"]
    edited = git("show", f"{record['commit']}:model.py")
    assert RELU in edited and GATE not in edited
    kept = git("show", "HEAD:model.py")
    assert (RELU in kept) == (record["status"] == "keep")  # a discarded edit is reverted

    # The score came from the edited model: re-evaluating the experiment's checkpoint with the
    # committed model.py gives the evaluator's val_bpb; the original model.py does not.
    exp = record["exp"]
    log = (run_dir / "logs" / f"exp-{exp:03d}.log").read_text().splitlines()
    assert "val_bpb" not in parse_metric_lines(log)  # the run prints no score of its own
    scored = record["runs"][0]
    out = run_dir / "outputs" / f"exp-{exp:03d}"
    config = config_from_hf(json.loads((out / "config.json").read_text()))
    val = load_corpus(f"text:{corpus}", cache_dir=cache).val
    original = (template_dir("bitnet-lm") / "model.py").read_text()
    scores = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, source in (("edited", edited), ("original", original)):
            path = tmp_path / name / "model.py"
            path.parent.mkdir()
            path.write_text(source)
            spec = importlib.util.spec_from_file_location(f"model_{name}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            model = load_checkpoint(out, module.BitNetLM)  # strict; a tied head's one tensor
            scores[name] = round(evaluate_bpb(model, val, config.max_position_embeddings)[0], 6)
    finally:
        torch.set_num_threads(threads)
    # the evaluator's logits servers score with one thread too: equal up to float sums' order
    assert abs(scores["edited"] - scored) < 1e-4
    assert abs(scores["original"] - scored) > 1e-2
