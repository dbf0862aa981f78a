"""`magnet-agent export` for real: a checkpoint to a Hugging Face directory and a GGUF file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitnet.checkpoint import save_checkpoint
from bitnet.model import BitNetConfig, BitNetLM

CLI = str(Path(sys.executable).with_name("magnet-agent"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = BitNetConfig(vocab_size=256, hidden_size=256, intermediate_size=512,
                          num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, tie_word_embeddings=True)
    return save_checkpoint(BitNetLM(config), tmp_path_factory.mktemp("ckpt") / "exp-000")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def test_export_hf_and_gguf_beside_a_plain_checkpoint(checkpoint):
    import transformers

    done = cli("export", str(checkpoint), "--format", "hf")
    assert done.returncode == 0, done.stderr
    out = checkpoint.parent / "exp-000-hf"
    assert "bytes/param" in done.stdout and str(out) in done.stdout
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "BitNetForCausalLM"
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.uint8  # packed, not fp32

    done = cli("export", str(checkpoint), "--format", "gguf", "--out",
               str(checkpoint.parent / "m.gguf"))
    assert done.returncode == 0, done.stderr
    assert "TQ2_0" in done.stdout and "verified by reading it back" in done.stdout
    # relu2: one line, before the table, says llama.cpp cannot compute it and why
    notice = "llama.cpp cannot compute this model (its bitnet graph gates the FFN with SiLU, " \
             "this model with relu2)"
    assert notice in done.stdout and done.stdout.index(notice) < done.stdout.index("TQ2_0")
    assert (checkpoint.parent / "m.gguf").stat().st_size > 0


def test_a_corrupt_checkpoint_is_one_line(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((checkpoint / "config.json").read_text())
    weights = (checkpoint / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated
    for fmt in ("hf", "gguf"):
        done = cli("export", str(broken), "--format", fmt)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "model.safetensors" in done.stderr
    assert not (tmp_path / "broken-hf").exists() and not (tmp_path / "broken.gguf").exists()


def test_generate_streams_and_reports_json(checkpoint):
    from bitnet.generate import generate

    args = ["generate", str(checkpoint), "--prompt", "def f(x):", "--max-new-tokens", "24",
            "--temperature", "0"]
    first = cli(*args, "--json")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["new_tokens"] == 24 and result["prompt_tokens"] == len(b"def f(x):")
    assert result["tokens_per_s"] > 0
    # the same tokens as the library gives (which tests/bitnet checks against the trained model)
    assert generate(checkpoint, "def f(x):", max_new_tokens=24).text == result["text"]
    streamed = cli(*args)
    assert streamed.returncode == 0
    # greedy: deterministic, so the streamed run writes the same tokens again
    assert streamed.stdout == "def f(x):" + result["text"]
    assert "tokens/s]" in streamed.stderr


def test_generate_refuses_bad_settings_in_one_line(checkpoint):
    done = cli("generate", str(checkpoint), "--prompt", "x", "--top-p", "0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--top-p" in done.stderr


def test_generate_with_llamacpp_refuses_a_relu2_model_in_one_line(checkpoint):
    """Without llama-cpp-python (CI) the line says how to install it; with it, why llama.cpp
    cannot compute this relu2 model. Either way nothing is generated."""
    from bitnet.llamacpp import available

    done = cli("generate", str(checkpoint), "--prompt", "x", "--engine", "llama.cpp")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert ("gates the FFN with SiLU" if available() else "make llama-cpp") in done.stderr
