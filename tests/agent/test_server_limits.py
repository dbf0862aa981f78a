"""The evaluator's logits servers run the workspace's model.py: they are held to the goal's
memory limit like the training run (a real run, a real hostile model, real bubblewrap). And
where runs are forked, the fork servers the first run and its scoring need are begun when the
loop starts (Scorer.head_start), and are the ones they fork from."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psutil
import pytest

import sandbox.env
from agent.goal.spec import Goal, load_goal
from agent.scoring.scorer import INVALID_METRIC, Scorer
from bitnet.logits_server import ALLOCATOR_ENV
from sandbox import Workspace
from sandbox.confine import confinement
from sandbox.layout import OUTPUTS_DIR
from sandbox.limits import cgroups_made_by, run_limits
from sandbox.runner import processes_with_env
from sandbox.warm import WarmStarter
from sandbox.zygote import usable

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make setup installs it)")

GOAL = """---
name: hog
template: bitnet-lm
editable: [train.py, model.py]
command: python train.py
corpus: text:{corpus}
metric: {{name: val_bpb, goal: minimize}}
budget: {{per_experiment: 2s, grace: 60s, experiments: 1, wall: 10m}}
memory_limit_mb: 900
env: [MAGNET_STEPS]
---
Lower val_bpb.
"""
# Honest while it trains; in the evaluator's server it holds 2 GiB (written: resident).
HOG = """
import sys as _sys
if _sys.argv and _sys.argv[0].endswith("logits_server.py"):
    _honest_init = BitNetLM.__init__

    def _hog_init(self, *args, **kwargs):
        _honest_init(self, *args, **kwargs)
        self.hoard = b"x" * (2 * 2**30)

    BitNetLM.__init__ = _hog_init
"""


def _goal(tmp_path: Path, monkeypatch) -> Goal:
    """GOAL on a small text corpus of its own, its runs 1 step long (what is checked here is
    the scoring and the processes around the run, not its training)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"The quick brown fox {i} jumps over the dog.\n" * 50)
    (tmp_path / "GOAL.md").write_text(GOAL.format(corpus=corpus))
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MAGNET_STEPS", "1")
    return load_goal(tmp_path / "GOAL.md")


def test_a_model_server_past_the_memory_limit_is_stopped(tmp_path: Path, monkeypatch):
    goal = _goal(tmp_path, monkeypatch)
    spec = goal.spec
    with Workspace.create(tmp_path / "runs" / "hog", template=spec.template,
                          editable=spec.editable, knobs=spec.knobs) as ws:
        scorer = Scorer(goal, ws, confinement())
        scorer.prepare()
        ws.begin(0, "hold memory while scored")
        model = ws.path / "model.py"
        model.write_text(model.read_text() + HOG)
        start = time.monotonic()
        result = scorer.run(seed=1, repeat=0, mem_limit=spec.memory_limit_mb * 2**20)
        seconds = time.monotonic() - start
        out_dir = ws.output_dir(0)
    assert result["status"] == INVALID_METRIC, (result["status"], result.get("reason"))
    assert "memory limit of 900 MiB" in result["reason"], result["reason"]
    assert seconds < 60  # stopped, not left to its timeout
    assert processes_with_env("MAGNET_OUTPUT_DIR", str(out_dir)) == []
    assert cgroups_made_by(os.getpid()) == set()


def test_the_first_run_and_its_scoring_fork_from_the_head_start(tmp_path: Path, monkeypatch):
    limits = run_limits(memory=2**30, processes=64, fsize=None)
    forkable = usable(confinement(), limits)
    limits.remove()
    if not forkable:
        pytest.skip("runs are forked only where memory and pids cgroups can be made")
    goal = _goal(tmp_path, monkeypatch)
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
            # the servers' allocator keeps freed memory for the next pass; the run's is glibc's
            for zygote in servers:
                assert ALLOCATOR_ENV.items() <= _python_environ(zygote.proc.pid).items()
            assert not ALLOCATOR_ENV.keys() & _python_environ(trainer.proc.pid).keys()
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


def _python_environ(pid: int) -> dict[str, str]:
    """The environment of the Python process under a confinement's process `pid` (bwrap)."""
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    python = next(p for p in tree if any("zygote_main" in part for part in p.cmdline()))
    return python.environ()
