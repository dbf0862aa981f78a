"""`magnet-agent merge` for real (the installed command, real checkpoints and corpora): it
refuses specialists of another base, writes a merged checkpoint that descends from the base, and
its table holds the val_bpb each model scores on each specialist's corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitnet.checkpoint import (
    checkpoint_corpus,
    checkpoint_lineage,
    descent,
    load_checkpoint,
    save_checkpoint,
)
from bitnet.data import load_corpus
from bitnet.evaluate import evaluate_bpb
from bitnet.model import BitNetConfig, BitNetLM

CLI = str(Path(sys.executable).with_name("magnet-agent"))
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=32)


def nudged(model: BitNetLM, seed: int) -> BitNetLM:
    """A copy of `model` with every weight moved a little (a stand-in for fine-tuning)."""
    generator = torch.Generator().manual_seed(seed)
    copy = BitNetLM(model.config)
    copy.load_state_dict({k: v + 0.01 * torch.randn(v.shape, generator=generator)
                          for k, v in model.state_dict().items()})
    return copy


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    root = tmp_path_factory.mktemp("merge")
    corpora = {}
    for name, line in (("a", "def add(x, y): return x + y"), ("b", "The cat sat on the mat")):
        folder = root / name
        folder.mkdir()
        for i in range(8):
            (folder / f"{i}.txt").write_text(f"{line} {i}\n" * 80)
        corpora[name] = f"text:{folder}"
    torch.manual_seed(0)
    base = save_checkpoint(BitNetLM(BitNetConfig(**TINY)), root / "base")
    base_model = load_checkpoint(base)
    paths = {"root": root, "base": base, **{f"corpus_{k}": v for k, v in corpora.items()}}
    for seed, (name, corpus) in enumerate(corpora.items(), start=1):
        paths[name] = save_checkpoint(nudged(base_model, seed), root / f"s_{name}",
                                      lineage=descent(base), corpus=corpus)
    torch.manual_seed(99)
    paths["stranger"] = save_checkpoint(BitNetLM(BitNetConfig(**TINY)), root / "stranger",
                                        corpus=corpora["a"])
    return paths


def merge(family, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAGNET_CACHE_DIR": str(family["root"] / "cache")}
    return subprocess.run([CLI, *merge_argv(family, *args)],
                          capture_output=True, text=True, env=env, timeout=300)


def merge_argv(family, *args: str) -> list[str]:
    return ["merge", "--base", str(family["base"]), *args,
            "--runs-dir", str(family["root"] / "runs")]


def refused(family, capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """A refusal, through the command's own main in this process (what the installed
    `magnet-agent` runs, minus a second interpreter importing torch): (status, stderr)."""
    from agent.cli.main import main

    monkeypatch.setenv("MAGNET_CACHE_DIR", str(family["root"] / "cache"))
    capsys.readouterr()
    code = main(merge_argv(family, *args))
    return code, capsys.readouterr().err


def test_merge_writes_the_checkpoint_and_the_table(family):
    out = family["root"] / "linear"
    done = merge(family, "--specialist", str(family["a"]), "--specialist", str(family["b"]),
                 "--method", "linear", "--weights", "1", "3", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary == json.loads((out / "merge.json").read_text())

    merged = load_checkpoint(out / "checkpoint")
    a, b = (load_checkpoint(family[k]).state_dict() for k in "ab")
    for name, tensor in merged.state_dict().items():
        torch.testing.assert_close(tensor, (a[name] + 3 * b[name]) / 4)
    assert checkpoint_lineage(out / "checkpoint") == descent(family["base"])
    assert [s["corpus"] for s in summary["specialists"]] == [family["corpus_a"],
                                                            family["corpus_b"]]
    assert checkpoint_corpus(family["a"]) == family["corpus_a"]

    # every cell is the evaluator's val_bpb of that model on that corpus
    table = summary["table"]
    assert table["models"] == ["base", "specialist 1", "specialist 2", "merged"]
    models = [load_checkpoint(family["base"]), load_checkpoint(family["a"]),
              load_checkpoint(family["b"]), merged]
    for row, model in zip(table["val_bpb"], models, strict=True):
        for value, corpus in zip(row, table["corpora"], strict=True):
            val = load_corpus(corpus, cache_dir=family["root"] / "cache").val
            assert value == pytest.approx(evaluate_bpb(model, val, 32)[0], abs=1e-5)
    markdown = (out / "merge.md").read_text()
    assert "# Merge: linear (weights=[1.0, 3.0])" in markdown
    assert "| merged |" in markdown and "![merge](merge.png)" in markdown
    assert (out / "merge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_refuses_a_specialist_of_another_base(family, capsys, monkeypatch):
    code, err = refused(family, capsys, monkeypatch, "--specialist", str(family["a"]),
                        "--specialist", str(family["stranger"]))
    assert code == 2
    assert f"{family['stranger']} was not trained from {family['base']}" in err
    assert "it records no base" in err and len(err.splitlines()) == 1
    assert not (family["root"] / "runs").exists()  # nothing written


@pytest.mark.parametrize(("args", "expected"), [
    (["--method", "linear", "--density", "0.3"], "linear: "),
    (["--method", "ties", "--density", "1.5"], "density 1.5 is outside (0, 1]"),
    (["--corpus", "pycode"], "1 --corpus for 2 specialists"),
])
def test_bad_options_are_one_line(family, capsys, monkeypatch, args, expected):
    code, err = refused(family, capsys, monkeypatch, "--specialist", str(family["a"]),
                        "--specialist", str(family["b"]), *args, "--out",
                        str(family["root"] / "bad"))
    assert code == 2 and expected in err, err
    assert len(err.splitlines()) == 1
    assert not (family["root"] / "bad").exists()


def test_ties_merge_by_default_into_the_runs_directory(family):
    done = merge(family, "--specialist", str(family["a"]), "--specialist", str(family["b"]))
    assert done.returncode == 0, done.stderr
    (out,) = (family["root"] / "runs").glob("merge-ties-*")
    assert "val_bpb: base, specialists and the ties merge" in done.stdout
    assert load_checkpoint(out / "checkpoint").config == load_checkpoint(family["base"]).config
