"""What a template goal's runs see of their corpus: the training split alone. A hostile edit,
run for real under the scorer's confinement, tries to read the validation and test bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from goal_texts import PEEK_GOAL

from agent.goal.spec import load_goal
from agent.scoring.scorer import TRAIN_DATA_ENV, Scorer, run_env
from bitnet.data import load_corpus, split_of, train_dir
from sandbox.confine import confinement
from sandbox.workspace import Workspace

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make setup installs it)")

# what experiment code would do to train on held-out bytes: find them next to its training
# split, in the cache, or in the corpus's own files
PEEK = """import os, pathlib
train = pathlib.Path(os.environ["{env}"])
seen = 0
for path in [*train.parent.glob("*.bin"), *pathlib.Path("{corpus}").glob("*")]:
    try:
        data = path.read_bytes()
    except OSError:
        continue
    seen += (b"VALIDATION SECRET" in data) + (b"TEST SECRET" in data)
print(f"METRIC train_bytes={{len((train / 'train.bin').read_bytes())}}")
print(f"METRIC secrets_seen={{seen}}")
"""


def test_a_run_reads_its_training_split_and_not_the_held_out_bytes(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i:02d}.txt").write_text(f"plain training text {i}\n" * 20)
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(tmp_path / "cache"))  # readable: under /tmp
    built = load_corpus(f"text:{corpus}")
    assert built.n_val_files and built.n_test_files
    for name in (p.name for p in corpus.iterdir()):
        split = split_of(name)
        if split != "train":
            (corpus / name).write_text(f"{split.upper().replace('VAL', 'VALIDATION')} SECRET\n")
    built = load_corpus(f"text:{corpus}")
    assert b"VALIDATION SECRET" in bytes(built.val) and b"TEST SECRET" in bytes(built.test)
    goal_path = tmp_path / "GOAL.md"
    goal_path.write_text(PEEK_GOAL.format(corpus=corpus))
    goal = load_goal(goal_path)

    with Workspace.create(tmp_path / "run", template="bitnet-lm",
                          editable=["train.py", "model.py"]) as ws:
        scorer = Scorer(goal, ws, confinement())
        scorer.prepare()
        env = run_env(goal, ws.run_dir)
        assert Path(env[TRAIN_DATA_ENV]) == train_dir(built)
        ws.begin(0, "read the held-out bytes")
        (ws.path / "train.py").write_text(PEEK.format(env=TRAIN_DATA_ENV, corpus=corpus))
        result = ws.run("python train.py", time_budget=20, seed=0, env=env,
                        confinement=scorer.confinement, metric="secrets_seen")
    assert result.status == "ok", result.reason
    assert result.metrics["train_bytes"] == len(built.train)  # its own split, whole
    assert result.metrics["secrets_seen"] == 0
