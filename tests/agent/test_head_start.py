"""Scorer.head_start: the fork servers the first run and its scoring need begin when the loop
starts, and they are the ones that run and that scoring fork from, whatever the machine's load
did meanwhile (a real run: real bubblewrap, cgroups and fork servers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import sandbox.env
from agent.goal.spec import load_goal
from agent.scoring.scorer import Scorer
from sandbox import Workspace
from sandbox.confine import confinement
from sandbox.layout import OUTPUTS_DIR
from sandbox.limits import run_limits
from sandbox.warm import WarmStarter
from sandbox.zygote import usable

GOAL = """---
name: head
template: bitnet-lm
editable: [train.py, model.py]
command: python train.py
corpus: text:{corpus}
metric: {{name: val_bpb, goal: minimize}}
budget: {{per_experiment: 2s, grace: 60s, experiments: 1, wall: 10m}}
memory_limit_mb: 2000
env: [MAGNET_STEPS]
---
Lower val_bpb.
"""


def test_the_first_run_and_its_scoring_fork_from_the_head_start(tmp_path: Path, monkeypatch):
    limits = run_limits(memory=2**30, processes=64, fsize=None)
    forkable = shutil.which("bwrap") is not None and usable(confinement(), limits)
    limits.remove()
    if not forkable:
        pytest.skip("runs are forked only under bubblewrap with memory and pids cgroups")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"The quick brown fox {i} jumps over the dog.\n" * 200)
    (tmp_path / "GOAL.md").write_text(GOAL.format(corpus=corpus))
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MAGNET_STEPS", "2")
    goal = load_goal(tmp_path / "GOAL.md")
    spec = goal.spec
    mem_limit = spec.memory_limit_mb * 2**20
    with Workspace.create(tmp_path / "runs" / "head", template=spec.template,
                          editable=spec.editable, knobs=spec.knobs) as ws:
        ws.warm = WarmStarter(ws.run_dir / OUTPUTS_DIR)
        scorer = Scorer(goal, ws, confinement())
        try:
            scorer.prepare()
            monkeypatch.setattr(sandbox.env, "free_cpus", lambda: 1)  # a busy machine, then
            scorer.head_start(mem_limit=mem_limit)
            trainer, servers = ws.warm.zygote, list(scorer.servers.zygotes)
            assert trainer is not None and len(servers) == 2
            assert ws.warm.warm is not None  # the first run's process, to be forked
            monkeypatch.setattr(sandbox.env, "free_cpus", lambda: 2)  # an idle one
            ws.begin(0, "the template as it is")
            result = scorer.run(seed=1, repeat=0, mem_limit=mem_limit)
            assert result["status"] == "ok", result.get("reason")
            assert result["metrics"]["val_bpb"] > 0
            # nothing was started anew: the run and its servers were forked from these
            assert ws.warm.zygote is trainer and trainer.alive()
            assert scorer.servers.zygotes == servers and all(z.alive() for z in servers)
            assert ws.warm.ran_in is not None  # the run was a warm one
        finally:
            scorer.close()
