"""llama.cpp computes our SiLU, tied models: bits per byte within 1% of our evaluator's on the
same windows, and the same greedy tokens. Skipped where llama-cpp-python is not installed (CI);
`make llama-cpp` builds it.

Two small models trained here on Python source: one whose rows are all 256 long (TQ2_0 weights,
Q8_K activation blocks = our per-token rows) and one of the template's default widths (96, 384:
F16 weights, so llama.cpp multiplies fp16 activations where we quantise them to int8). And a
256-wide one over a bpe:512 tokenizer trained on the same source: llama.cpp fed our evaluator's
token ids of each byte window.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")

from bitnet.checkpoint import save_checkpoint  # noqa: E402
from bitnet.evaluate import evaluate_bpb  # noqa: E402
from bitnet.export_gguf import export_gguf  # noqa: E402
from bitnet.generate import generate  # noqa: E402
from bitnet.infer import InferenceModel, load_for_inference  # noqa: E402
from bitnet.llamacpp import LlamaCppError, LlamaCppModel, from_checkpoint, llamacpp_bpb  # noqa: E402
from bitnet.model import BitNetConfig, BitNetLM  # noqa: E402
from bitnet.tokenizer import TextTokenizer, train_merges  # noqa: E402

SEQ_LEN = 64
EVAL_BYTES = 2**13
SHAPES = {  # name: (hidden, intermediate, layers, expected ternary GGUF type)
    "tq2": (256, 256, 1, "TQ2_0"),
    "f16": (96, 384, 2, "F16"),
}
PROMPTS = ["def ", "import ", "class ", "    return "]
NEW = 48
CLI = str(Path(sys.executable).with_name("magnet-agent"))


def _source(*modules: str) -> np.ndarray:
    text = "\n".join(inspect.getsource(__import__(m, fromlist=["_"])) for m in modules)
    return np.frombuffer(text.encode(), dtype=np.uint8)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Training bytes and held-out validation bytes: stdlib source, the same on every run."""
    return _source("json.decoder", "json.encoder", "textwrap"), _source("shlex")


def _train(hidden: int, intermediate: int, layers: int, train: np.ndarray,
           steps: int = 60, vocab_size: int = 256) -> BitNetLM:
    """60 steps: ~3.3-3.6 bits per byte on the validation bytes (8 is uniform), 12-15 s.
    `train`: byte values, or token ids of a `vocab_size` tokenizer."""
    torch.manual_seed(0)
    config = BitNetConfig(vocab_size=vocab_size, hidden_size=hidden,
                          intermediate_size=intermediate, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=SEQ_LEN, tie_word_embeddings=True,
                          hidden_act="silu")
    model = BitNetLM(config)
    data = torch.from_numpy(train.astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - SEQ_LEN - 1, (16,), generator=gen)
        batch = torch.stack([data[s : s + SEQ_LEN + 1] for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module", params=list(SHAPES))
def exported(request, data, tmp_path_factory) -> tuple[str, BitNetLM, Path, Path]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    *shape, _ = SHAPES[request.param]
    model = _train(*shape, data[0])
    torch.set_num_threads(before)
    tmp = tmp_path_factory.mktemp(request.param)
    checkpoint = save_checkpoint(model, tmp / "checkpoint")
    rows = export_gguf(checkpoint, tmp / "model.gguf")
    types = {qtype for name, qtype, _ in rows if name.startswith("blk.") and "norm" not in name
             and name.endswith(".weight")}
    assert types == {SHAPES[request.param][-1]}
    return request.param, model, checkpoint, tmp / "model.gguf"


def test_bits_per_byte_within_one_percent_of_our_evaluator(exported, data):
    name, model, _, gguf_path = exported
    ours, n_bytes = evaluate_bpb(model, data[1], SEQ_LEN, eval_bytes=EVAL_BYTES)
    theirs, their_bytes = llamacpp_bpb(gguf_path, data[1], SEQ_LEN, eval_bytes=EVAL_BYTES)
    assert their_bytes == n_bytes == EVAL_BYTES
    assert ours < 4.0  # trained: a meaningful comparison, not two near-uniform models
    diff_pct = 100 * (theirs - ours) / ours
    print(f"{name}: bits per byte ours {ours:.4f}, llama.cpp {theirs:.4f} ({diff_pct:+.3f}%)")
    assert abs(diff_pct) < 1.0


def test_greedy_tokens_match_ours(exported):
    """At temperature 0 llama.cpp decodes the tokens we do (the TQ2_0 model: every one; the F16
    model computes unquantised activations, so a near tie may go the other way: most)."""
    name, model, _, gguf_path = exported
    ours_model = InferenceModel.from_model(model)
    engine = LlamaCppModel(gguf_path, SEQ_LEN)
    matched = 0
    for prompt in PROMPTS:
        ours = generate(ours_model, prompt, max_new_tokens=NEW).token_ids
        theirs = generate(engine, prompt, max_new_tokens=NEW).token_ids
        matched += next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b),
                        NEW)
    engine.close()
    print(f"{name}: greedy tokens equal before the first difference: {matched}/{NEW * 4}")
    assert matched == NEW * len(PROMPTS) if name == "tq2" else matched >= NEW * len(PROMPTS) // 2


def test_generate_engine_llamacpp_from_the_command_line(exported):
    """`generate --engine llama.cpp` exports the checkpoint and decodes it in llama.cpp, with
    the library's sampling: the same text as the library on llama.cpp, seeded sampling too."""
    name, _, checkpoint, _ = exported
    if name != "tq2":
        pytest.skip("one shape is enough for the command")
    args = ["generate", str(checkpoint), "--prompt", "def ", "--max-new-tokens", "24",
            "--engine", "llama.cpp", "--json", "--temperature", "0.8", "--seed", "3"]
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    library = generate(from_checkpoint(checkpoint), "def ", max_new_tokens=24, temperature=0.8,
                       seed=3)
    assert result["text"] == library.text and result["new_tokens"] == 24


BPE_VOCAB = 512


@pytest.fixture(scope="module")
def bpe_exported(data, tmp_path_factory) -> tuple[TextTokenizer, BitNetLM, Path, Path]:
    """The 256-wide shape (TQ2_0) over a bpe:512 trained on the training bytes (~2.5 bytes a
    token), 30 steps: ~3.0 bits per byte (uniform over 512 ids is ~3.6), ~4 s."""
    tokenizer = TextTokenizer(f"bpe:{BPE_VOCAB}", train_merges(data[0], BPE_VOCAB))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = _train(256, 256, 1, tokenizer.encode(data[0].tobytes()), steps=30,
                   vocab_size=BPE_VOCAB)
    torch.set_num_threads(before)
    tmp = tmp_path_factory.mktemp("bpe")
    checkpoint = save_checkpoint(model, tmp / "checkpoint", tokenizer=tokenizer)
    export_gguf(checkpoint, tmp / "model.gguf")
    return tokenizer, model, checkpoint, tmp / "model.gguf"


def test_bpe_bits_per_byte_within_one_percent_of_our_evaluator(bpe_exported, data):
    """llama.cpp fed each window's token ids as our evaluator encodes them, loss summed alike."""
    tokenizer, model, _, gguf_path = bpe_exported
    ours, n_bytes = evaluate_bpb(model, data[1], SEQ_LEN, eval_bytes=EVAL_BYTES,
                                 tokenizer=tokenizer)
    theirs, their_bytes = llamacpp_bpb(gguf_path, data[1], SEQ_LEN, eval_bytes=EVAL_BYTES,
                                       tokenizer=tokenizer)
    assert their_bytes == n_bytes == EVAL_BYTES
    assert ours < 3.3  # trained: below the ~3.6 of uniform guessing among 512 ids
    diff_pct = 100 * (theirs - ours) / ours
    print(f"bpe:{BPE_VOCAB}: bits per byte ours {ours:.4f}, llama.cpp {theirs:.4f} "
          f"({diff_pct:+.3f}%)")
    assert abs(diff_pct) < 1.0
    # byte ids for a BPE model: one line saying what to pass, not a number
    with pytest.raises(LlamaCppError, match="512 token ids, the tokenizer 256"):
        llamacpp_bpb(gguf_path, data[1], SEQ_LEN, eval_bytes=EVAL_BYTES)
    with pytest.raises(LlamaCppError, match="pass the checkpoint's tokenizer"):
        LlamaCppModel(gguf_path, SEQ_LEN)


def test_bpe_greedy_generation_from_the_command_line(bpe_exported):
    """`generate --engine llama.cpp` on a BPE checkpoint at temperature 0: the prompt encoded
    and the new ids decoded with the checkpoint's tokenizer, multi-byte tokens among them, and
    the text our engine decodes greedily."""
    tokenizer, _, checkpoint, _ = bpe_exported
    prompt = "    return"  # no trailing space: GPT-2's split puts a space before the word
    args = ["generate", str(checkpoint), "--prompt", prompt, "--max-new-tokens", "24",
            "--engine", "llama.cpp", "--json", "--temperature", "0"]
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    engine = from_checkpoint(checkpoint)
    assert engine.tokenizer.spec == tokenizer.spec
    library = generate(engine, prompt, max_new_tokens=24, temperature=0)
    engine.close()
    ours = generate(load_for_inference(checkpoint), prompt, max_new_tokens=24, temperature=0)
    assert result["new_tokens"] == 24
    assert result["prompt_tokens"] == len(tokenizer.encode(prompt)) < len(prompt)
    assert result["text"] == library.text == ours.text
    assert max(library.token_ids) >= 256  # merged tokens among them, decoded to their bytes
