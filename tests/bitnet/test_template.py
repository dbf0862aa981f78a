"""The bitnet-lm template's train.py, run for real as a subprocess under the MAGNET contract."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitnet.checkpoint import load_checkpoint

TRAIN = Path(__file__).parents[2] / "bitnet" / "templates" / "bitnet-lm" / "train.py"


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        line = f"The quick brown fox {i} jumps over the lazy dog.\n"
        (root / f"doc{i}.txt").write_text(line * 200)
    return root


def run_train(tmp_path: Path, corpus: Path, **env: str) -> tuple[dict, str]:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(TRAIN)],
        env={**os.environ, "MAGNET_CORPUS": f"text:{corpus}", "MAGNET_OUTPUT_DIR": str(out),
             "MAGNET_CACHE_DIR": str(tmp_path / "cache"), **env},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = {}
    for line in result.stdout.splitlines():
        if line.startswith("METRIC "):
            name, value = line[len("METRIC "):].split("=")
            metrics[name] = float(value)
    return metrics, result.stdout


def test_fixed_steps_are_deterministic_and_write_a_loadable_checkpoint(tmp_path, text_corpus):
    first, _ = run_train(tmp_path / "a", text_corpus, MAGNET_STEPS="4", MAGNET_SEED="7")
    second, _ = run_train(tmp_path / "b", text_corpus, MAGNET_STEPS="4", MAGNET_SEED="7")
    other_seed, _ = run_train(tmp_path / "c", text_corpus, MAGNET_STEPS="4", MAGNET_SEED="8")
    assert first["steps"] == 4
    assert first["val_bpb"] == second["val_bpb"]
    assert first["val_bpb"] != other_seed["val_bpb"]
    assert {"val_bpb", "tokens_per_s", "params", "peak_memory_mb", "steps"} <= set(first)
    assert 0 < first["val_bpb"] < 8.5

    out = tmp_path / "a" / "out"
    assert json.loads((out / "metrics.json").read_text())["val_bpb"] == first["val_bpb"]
    model = load_checkpoint(out)
    assert model.num_parameters() == first["params"]


def test_time_budget_stops_training(tmp_path, text_corpus):
    metrics, stdout = run_train(tmp_path, text_corpus, MAGNET_TIME_BUDGET="3")
    assert metrics["steps"] >= 1
    # stops at the first step boundary after the budget: overshoot is about one step
    mean_step = metrics["train_seconds"] / metrics["steps"]
    assert 3.0 <= metrics["train_seconds"] < 3.0 + 2 * mean_step + 0.5
