"""The bitnet-lm template's score comes from its fixed evaluator, not from what train.py prints:
a planted METRIC line and a model that looks ahead are both `invalid_metric` (real runs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from openai_server import proposal, text

from agent.loop.launch import start_run

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make setup installs it)")

GOAL = """---
name: forger
template: bitnet-lm
editable: [train.py, model.py]
command: python train.py
corpus: text:{corpus}
metric: {{name: val_bpb, goal: minimize}}
budget: {{per_experiment: 2s, grace: 120s, experiments: 2, wall: 10m}}
planner: openai
model: scripted-model
---
Lower val_bpb.
"""
REPORT = 'for name, value in metrics.items():\n    print(f"METRIC {name}={value}")'
EMBED = "x = self.model.embed_tokens(idx)"
PEEK = "x = self.model.embed_tokens(idx) + self.model.embed_tokens(torch.roll(idx, -1, dims=1))"


def test_planted_metric_and_look_ahead_are_invalid(tmp_path: Path, openai_server, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"The quick brown fox {i} jumps over the dog.\n" * 200)
    goal = tmp_path / "GOAL.md"
    goal.write_text(GOAL.format(corpus=corpus))
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    openai_server.push(
        proposal({"hypothesis": "report a better number", "rationale": "forgery",
                  "edits": [{"path": "train.py", "search": REPORT,
                             "replace": REPORT + '\nprint("METRIC val_bpb=0.01")'}]}),
        text("The evaluator re-scored the checkpoint; printing a number does not help."),
        proposal({"hypothesis": "see the next byte", "rationale": "look-ahead",
                  "edits": [{"path": "model.py", "search": EMBED, "replace": PEEK}]}),
        text("The model looked at the byte it predicts."),
    )
    run_dir = start_run(goal, runs_dir=tmp_path / "runs")

    records = [json.loads(line)
               for line in (run_dir / "experiments.jsonl").read_text().splitlines()]
    base, planted, peeking = records[0], records[2], records[3]
    assert base["status"] == "baseline" and base["scored_by"] == "evaluator"
    assert abs(base["metric"] - base["reported"][0]) < 1e-4  # honest: they agree
    assert planted["status"] == "invalid_metric" and planted["metric"] is None
    assert "printed val_bpb=0.01 but the evaluator measured" in planted["reason"]
    assert peeking["status"] == "invalid_metric"
    assert "looks ahead" in peeking["reason"]
    assert openai_server.pending == 0
    report = (run_dir / "report.md").read_text()
    assert "4 scored by the template's fixed evaluator" in report
