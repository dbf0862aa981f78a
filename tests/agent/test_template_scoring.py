"""The bitnet-lm template's score comes from its fixed evaluator, not from what train.py prints:
a planted METRIC line is ignored, a model that looks ahead is `invalid_metric`, and the test
split's score is recorded but never reaches the planner (real runs, a real planner's requests)."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
from openai_server import proposal, text

from agent.loop.launch import start_run
from agent.rundir.experiment_record import TEST_KEY
from sandbox.templates import template_dir

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make setup installs it)")

GOAL = """---
name: forger
template: bitnet-lm
editable: [train.py, model.py]
command: python train.py
corpus: text:{corpus}
metric: {{name: val_bpb, goal: minimize}}
budget: {{per_experiment: 2s, grace: 120s, experiments: 3, wall: 10m}}
planner: openai
model: scripted-model
env: [MAGNET_STEPS]
---
Lower val_bpb.
"""
# train.py's report loop, as the template spells it: the planted line goes right after it
_TRAIN = (template_dir("bitnet-lm") / "train.py").read_text().splitlines()
_LOOP = _TRAIN.index("for name, value in metrics.items():")
REPORT = "\n".join(_TRAIN[_LOOP:_LOOP + 2])
EMBED = "x = self.model.embed_tokens(idx)"
PEEK = "x = self.model.embed_tokens(idx) + self.model.embed_tokens(torch.roll(idx, -1, dims=1))"


def test_planted_metric_is_ignored_look_ahead_is_invalid_test_is_hidden(tmp_path: Path,
                                                                       openai_server, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"The quick brown fox {i} jumps over the dog.\n" * 50)
    goal = tmp_path / "GOAL.md"
    goal.write_text(GOAL.format(corpus=corpus))
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MAGNET_STEPS", "2")  # two steps: scored, and judged, as any run
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    openai_server.push(
        proposal({"hypothesis": "report a better number", "rationale": "forgery",
                  "edits": [{"path": "train.py", "search": REPORT,
                             "replace": REPORT + '\nprint("METRIC val_bpb=0.01")'}]}),
        proposal({"hypothesis": "see the next byte", "rationale": "look-ahead",
                  "edits": [{"path": "model.py", "search": EMBED, "replace": PEEK}]}),
        text("The model looked at the byte it predicts."),
        proposal({"hypothesis": "barely learn", "rationale": "clearly worse",
                  "edits": [{"path": "train.py", "search": "LEARNING_RATE = 4e-3",
                             "replace": "LEARNING_RATE = 1e-7"}]}),
    )
    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    records = [json.loads(line)
               for line in (run_dir / "experiments.jsonl").read_text().splitlines()]
    base, planted, peeking, worse = records[0], records[2], records[3], records[4]
    assert base["status"] == "baseline" and base["scored_by"] == "evaluator"
    assert base["reported"] == [None]  # the template prints no val_bpb: the score is scored
    # the planted line is ignored: the score is the evaluator's, from the checkpoint (a byte
    # model this briefly trained is nowhere near 0.01 bits per byte), and judged as such
    assert planted["status"] in ("keep", "discard") and set(planted["reported"]) == {0.01}
    assert all(v > 1 for v in planted["runs"]) and planted["runs"][0] == planted["metrics"][
        "val_bpb"]
    assert peeking["status"] == "invalid_metric"
    assert "looks ahead" in peeking["reason"]
    assert openai_server.pending == 0
    # both baselines are scored on the test split, beside their metrics, never inside them
    tests = [r[TEST_KEY] for r in records[:2]]
    assert all(isinstance(t, float) and 0 < t < 20 for t in tests), tests
    assert all(TEST_KEY not in r["metrics"] for r in records)
    # a run the keep rule discards at once is not scored on the test split (it cannot be kept)
    assert worse["status"] == "discard" and worse["judgement"]["rule"] in ("worse", "within noise")
    assert worse[TEST_KEY] is None
    # the planner's every request (three proposals after the baselines, a reflection) holds
    # the validation scores it judges by and neither the test scores nor their key
    prompts = json.dumps(openai_server.requests)
    assert len(openai_server.requests) == 4 and f"{base['metric']:.6g}" in prompts
    assert TEST_KEY not in prompts and "test_bpb" not in prompts
    vals = [r["metric"] for r in records if r.get("metric") is not None]
    vals.append(statistics.fmean(vals[:2]))  # the baseline mean
    for test in (r[TEST_KEY] for r in records if r.get(TEST_KEY) is not None):
        # each rendering a prompt could use, unless a validation score reads the same
        shown = {repr(test)} | {format(test, f) for f in (".6g", ".5g", ".4f", ".6f")
                                if all(format(test, f) != format(v, f) for v in vals)}
        assert not [x for x in shown if x in prompts], (test, prompts)
    report = (run_dir / "report.md").read_text()
    assert "5 scored by the template's fixed evaluator" in report
