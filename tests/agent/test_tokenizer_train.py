"""Experiments with a trained tokenizer, for real: the controller reads the template's TOKENIZER
as written, trains that tokenizer before the run's clock, lets the confined run read it (never
the held-out bytes), scores with its own copy, and records its fingerprint; `magnet-agent train
--tokenizer bpe:N` end to end; and a claim on a run that switched to a BPE replays bit for bit.

The corpus is tests/bitnet/tokenizer_corpus.py's (~300 KB, shared with test_tokenizer.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from goal_texts import KEPT_GOAL, PEEK_GOAL
from openai_server import ScriptedServer, proposal

from agent.claims.claim import build_claim
from agent.claims.replay import replay_claim
from agent.claims.replay_cache import ReplayCache
from agent.goal.spec import load_goal
from agent.loop.launch import start_run
from agent.scoring.run_tokenizer import declared_tokenizer
from agent.scoring.scorer import TRAIN_DATA_ENV, Scorer, run_env
from bitnet.data import load_corpus
from bitnet.tokenizer import TOKENIZER_ENV, load_tokenizer, read_meta, tokenizer_dir
from bitnet.training_data import TrainingDataError, training_split
from ledger.rules import DEFAULT_STAKE, HONEST
from sandbox.confine import confinement
from sandbox.templates import template_dir
from sandbox.workspace import Workspace

sys.path.insert(0, str(Path(__file__).parents[1] / "bitnet"))  # the shared corpus
from tokenizer_corpus import HELD_OUT_WORD, VOCAB, write_corpus  # noqa: E402

CLI = str(Path(sys.executable).with_name("magnet-agent"))
SPEC = f"bpe:{VOCAB}"
TEMPLATE_LINE = 'TOKENIZER = "bytes"'
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (make setup installs it)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("tokenizer-corpus") / "corpus")


def test_the_controller_reads_tokenizer_as_written(tmp_path):
    script = tmp_path / "train.py"
    for source, declared in (
            ("N_LAYER = 4\n", "bytes"),  # no constant: the byte tokenizer
            ('TOKENIZER = "bytes"\n', "bytes"), ("TOKENIZER = 'bpe:4096'\n", "bpe:4096"),
            ("TOKENIZER: str = 'bpe:512'  # typed\n", "bpe:512"), ("TOKENIZER = 1024\n",
                                                                   "bpe:1024"),
            # not one plain literal: no folder; the template then stops on it in one line
            ('N = 4096\nTOKENIZER = f"bpe:{N}"\n', None), ("TOKENIZER = 'bpe:12'\n", None),
            ("TOKENIZER = 'bytes'\nTOKENIZER = 'bpe:512'\n", None), ("TOKENIZER = (\n", None),
            ("TOKENIZER = 'sentencepiece'\n", None)):
        script.write_text(source)
        assert declared_tokenizer(tmp_path) == declared, source
    assert declared_tokenizer(tmp_path / "nowhere") is None
    # the template's own line, the one `train --tokenizer` sets
    assert (template_dir("bitnet-lm") / "train.py").read_text().count(TEMPLATE_LINE) == 1
    assert declared_tokenizer(template_dir("bitnet-lm")) == "bytes"


def run_template(workspace: Path, tokenizer: str, env: dict[str, str]) -> str:
    """The template's train.py with TOKENIZER set, run by hand (unconfined): its stderr."""
    (workspace / "train.py").write_text((template_dir("bitnet-lm") / "train.py").read_text()
                                        .replace(TEMPLATE_LINE, f"TOKENIZER = {tokenizer!r}"))
    shutil.copy(template_dir("bitnet-lm") / "model.py", workspace / "model.py")
    done = subprocess.run([sys.executable, "train.py"], cwd=workspace, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})
    assert done.returncode != 0
    return done.stderr


def test_a_tokenizer_the_run_cannot_have_stops_it_in_one_line(tmp_path):
    stderr = run_template(tmp_path, "bpe:12", {})
    assert stderr.strip().splitlines()[-1] == (
        "TOKENIZER: tokenizer 'bpe:12' has 12 entries; give bpe:N with N from 512 to 65,536")
    # the template's data step, in process (the run above showed the template reports its
    # errors): a BPE without its folder
    with pytest.raises(TrainingDataError) as refused:
        training_split(SPEC, str(tmp_path), None, "unnamed")
    assert str(refused.value).startswith(f"MAGNET_TOKENIZER is not set for TOKENIZER = "
                                         f"'{SPEC}': write TOKENIZER as a plain string")


PEEK = """import os, pathlib
TOKENIZER = "{spec}"
folder = pathlib.Path(os.environ["{env}"])
train = pathlib.Path(os.environ["{train}"])
seen = 0
for path in [*train.parent.glob("*.bin"), *folder.parent.parent.glob("*.bin")]:
    try:
        seen += b"{word}" in path.read_bytes()
    except OSError:
        continue
print(f"METRIC tokens_bytes={{len((folder / 'train.tokens.bin').read_bytes())}}")
print(f"METRIC secrets_seen={{seen}}")
"""


@needs_bwrap
def test_a_run_reads_its_tokenizer_and_not_the_held_out_bytes(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(tmp_path / "cache"))
    goal_path = tmp_path / "GOAL.md"
    goal_path.write_text(PEEK_GOAL.format(corpus=corpus))
    goal = load_goal(goal_path)
    built = load_corpus(f"text:{corpus}")
    assert HELD_OUT_WORD.encode() in bytes(built.val)
    with Workspace.create(tmp_path / "run", template="bitnet-lm",
                          editable=["train.py", "model.py"]) as ws:
        scorer = Scorer(goal, ws, confinement())
        scorer.prepare()
        ws.begin(0, "read the tokenizer, and the held-out bytes")
        (ws.path / "train.py").write_text(PEEK.format(spec=SPEC, env=TOKENIZER_ENV,
                                                      train=TRAIN_DATA_ENV, word=HELD_OUT_WORD))
        lines: list[str] = []
        tokenizer = scorer.tokenizer(lines.append)  # what Scorer.run does before the run
        assert tokenizer is not None and tokenizer.spec == SPEC
        assert lines[0].startswith(f"training tokenizer {SPEC} on text:")  # trained now, once
        assert tokenizer.folder == tokenizer_dir(built, SPEC)
        said = len(lines)
        assert scorer.tokenizer(lines.append).folder == tokenizer.folder
        assert len(lines) == said  # found the second time: nothing more to say
        result = ws.run("python train.py", time_budget=20, seed=0,
                        env={**run_env(goal, ws.run_dir), **tokenizer.env()},
                        confinement=scorer.confinement, metric="secrets_seen")
    assert result.status == "ok", result.reason
    assert result.metrics["tokens_bytes"] == 2 * read_meta(tokenizer.folder)["train_tokens"]
    assert result.metrics["secrets_seen"] == 0


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory):
    """`magnet-agent train --tokenizer bpe:512` on the corpus, a fresh cache: (run dir, stdout,
    cache)."""
    root = tmp_path_factory.mktemp("train-bpe")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MAGNET_")},
           "MAGNET_CACHE_DIR": str(root / "cache")}
    done = subprocess.run([CLI, "train", "--corpus", f"text:{corpus}", "--tokenizer", SPEC,
                           "--budget", "2", "--runs-dir", str(root / "runs")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = (root / "runs").iterdir()
    return run_dir, done.stdout, root / "cache"


@needs_bwrap
def test_train_with_a_tokenizer_trains_it_first_and_records_it(trained_run, corpus):
    run_dir, stdout, cache = trained_run
    assert f"tokenizer {SPEC} on text:{corpus}: {VOCAB} entries" in " ".join(stdout.split())
    (record,) = [json.loads(line) for line in (run_dir / "experiments.jsonl").read_text()
                 .splitlines()]
    assert record["status"] == "baseline" and math.isfinite(record["metric"])
    folder = tokenizer_dir(load_corpus(f"text:{corpus}", cache), SPEC)
    stored = load_tokenizer(folder)
    assert record["replay"]["tokenizer"] == {"spec": SPEC, "sha256": stored.fingerprint,
                                             "tokenizers": read_meta(folder)["tokenizers"]}
    checkpoint = run_dir / "outputs" / "exp-000"
    assert load_tokenizer(checkpoint).fingerprint == stored.fingerprint  # it carries it
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["magnet"]["tokenizer"] == SPEC
    diff = subprocess.run(["git", f"--git-dir={run_dir / 'workspace.git'}", "show",
                           record["commit"], "--", "train.py"], capture_output=True, text=True)
    assert f"+TOKENIZER = '{SPEC}'" in diff.stdout  # the run's code says which tokenizer
    log = (run_dir / "logs" / "exp-000.log").read_text()
    assert f"training tokens of {SPEC} ({VOCAB} entries, {stored.fingerprint[:12]})" in log


@pytest.fixture(scope="module")
def switched_run(corpus, tmp_path_factory, on_one_cpu):
    """A research run (scripted planner, real training and evaluator, 4 steps a run) whose
    experiment 2 switches the template from bytes to bpe:512, and is kept."""
    root = tmp_path_factory.mktemp("switched")
    goal = root / "GOAL.md"
    goal.write_text(KEPT_GOAL.format(corpus=corpus))
    switch = {"hypothesis": f"a {SPEC} tokenizer", "rationale": "scripted", "edits": [
        {"path": "train.py", "search": TEMPLATE_LINE, "replace": f'TOKENIZER = "{SPEC}"'}]}
    with ScriptedServer() as server, pytest.MonkeyPatch.context() as mp:
        for name, value in {"MAGNET_CACHE_DIR": str(root / "cache"), "MAGNET_STEPS": "4",
                            "OPENAI_BASE_URL": server.base_url,
                            "OPENAI_API_KEY": "sk-test-not-a-secret"}.items():
            mp.setenv(name, value)
        server.push(proposal(switch))
        run_dir = start_run(goal, runs_dir=root / "runs")
        yield run_dir, root


@needs_bwrap
def test_a_claim_trained_with_a_tokenizer_replays_bit_for_bit(switched_run, monkeypatch):
    run_dir, root = switched_run
    monkeypatch.setenv("MAGNET_CACHE_DIR", str(root / "cache"))
    records = [json.loads(x) for x in (run_dir / "experiments.jsonl").read_text().splitlines()]
    assert records[2]["status"] == "keep", records[2]
    assert [r["replay"]["tokenizer"]["spec"] for r in records] == ["bytes", "bytes", SPEC]
    claim = build_claim(run_dir, 2, stake=DEFAULT_STAKE)
    assert claim.body["replay"]["tokenizer"] == records[2]["replay"]["tokenizer"]
    assert {r["replay"]["tokenizer"]["spec"] for r in claim.body["before_runs"]} == {"bytes"}
    cache = ReplayCache(root / "replays")
    verdict = replay_claim(claim.body, claim.artifacts, confinement(), cache=cache,
                           work_dir=root)
    assert verdict.verdict == HONEST, verdict.reason
    assert verdict.replayed == claim.body["metric"]["after"]  # bit for bit
    assert verdict.checkpoint_identical
    assert verdict.before_replayed == claim.body["metric"]["before"]
    # a verifier whose tokenizer trains to other merges refuses, before anything runs
    forged = {**claim.body, "replay": {**claim.body["replay"], "tokenizer": {
        **claim.body["replay"]["tokenizer"], "sha256": "0" * 64}}}
    from agent.claims.replay import ReplayRefused

    with pytest.raises(ReplayRefused, match=r"tokenizer bpe:512 trained here has fingerprint "
                                            r".*pip install tokenizers=="):
        replay_claim(forged, claim.artifacts, confinement(), cache=cache, work_dir=root)
