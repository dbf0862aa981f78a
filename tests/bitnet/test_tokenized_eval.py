"""Scoring a model with a trained tokenizer: still bits per byte of the same validation bytes
(bitnet.evaluate's rule), in process and through the trusted scorer's logits servers, with the
wire widened to the checkpoint's vocabulary and the look-ahead check over shared token prefixes.
"""

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import trained_bpe, trained_like
from safetensors.torch import load_file
from torch import nn

from bitnet import logits_server
from bitnet.checkpoint import config_from_hf, save_checkpoint
from bitnet.evaluate import (
    batch_nats,
    batch_windows,
    eval_batches,
    evaluate_bpb,
    pad_ids,
    scored_bytes,
    window_ids,
)
from bitnet.model import BitNetConfig
from bitnet.score import CAUSAL_ATOL, CausalityError, ScoreError, score_checkpoint
from bitnet.tokenizer import TextTokenizer, byte_tokenizer

ROOT = Path(__file__).parents[2]
TEMPLATE_MODEL = ROOT / "bitnet" / "templates" / "bitnet-lm" / "model.py"
SEQ_LEN = 32
EVAL = 2000  # bytes scored: 64 full windows and a tail window of 17
VOCAB = 1024
TIMEOUT = 120.0
EMBED = "x = self.model.embed_tokens(idx)"


@pytest.fixture(scope="module")
def bpe() -> TextTokenizer:
    """A 1,024-entry BPE trained on this folder's tests: other text than `val`."""
    return trained_bpe(VOCAB)


@pytest.fixture(scope="module")
def val() -> np.ndarray:
    """Real text (the bitnet sources, as tests/bitnet/test_score.py scores), with some bytes
    that are no UTF-8 and NULs, which stay single-byte tokens."""
    data = b"".join(p.read_bytes() for p in sorted((ROOT / "bitnet").glob("*.py")))
    data = np.frombuffer(data, dtype=np.uint8).copy()
    data[::97] = 0xFF
    data[5::101] = 0
    return data


def config(vocab: int) -> BitNetConfig:
    return BitNetConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                        max_position_embeddings=SEQ_LEN)


@pytest.fixture(scope="module")
def bpe_checkpoint(tmp_path_factory, bpe) -> Path:
    model = trained_like(config(VOCAB))
    return save_checkpoint(model, tmp_path_factory.mktemp("bpe") / "ckpt", tokenizer=bpe)


class UnigramModel(nn.Module):
    """The same distribution over `vocab` tokens at every position: its loss ignores context,
    padding included, so the expected sum is exact."""

    def __init__(self, probs: np.ndarray) -> None:
        super().__init__()
        self.log_probs = torch.tensor(np.log(probs), dtype=torch.float64)

    def forward(self, input_ids, targets=None):
        return self.log_probs.expand(*input_ids.shape, len(self.log_probs)), None


def test_a_byte_model_scores_the_same_through_the_token_path(val):
    """The byte tokenizer's token windows are the byte windows, unpadded, and the masked loss
    is the unmasked one bit for bit: a byte model's score does not depend on which path."""
    model = trained_like(config(256))
    tokenizer = byte_tokenizer()
    for batch in eval_batches(val, SEQ_LEN, EVAL):
        ids, lengths = pad_ids([window_ids(window, tokenizer) for window in batch])
        assert np.array_equal(ids, batch) and (lengths == batch.shape[1]).all()
        windows = torch.from_numpy(batch.astype(np.int64))
        with torch.no_grad():
            logits, _ = model(windows)
        assert batch_nats(logits, windows, lengths) == batch_nats(logits, windows)
    bytes_way = evaluate_bpb(model, val, SEQ_LEN, eval_bytes=EVAL)
    assert evaluate_bpb(model, val, SEQ_LEN, eval_bytes=EVAL, tokenizer=tokenizer) == bytes_way


def test_tokens_are_scored_over_the_same_bytes(val, bpe):
    """Unigram over tokens: the bpb is the targets' summed -log2 p over the bytes each byte
    window scores; each window's first byte is its context token, the rest encoded."""
    probs = np.random.default_rng(0).random(VOCAB) + 0.05
    probs /= probs.sum()
    bpb, n_bytes = evaluate_bpb(UnigramModel(probs), val, SEQ_LEN, eval_bytes=EVAL, tokenizer=bpe)
    batches = eval_batches(val, SEQ_LEN, EVAL)
    targets = np.concatenate([bpe.encode(w[1:].tobytes()) for b in batches for w in b])
    assert n_bytes == scored_bytes(batches) == EVAL
    assert len(targets) < 0.7 * EVAL  # really tokens: fewer than the bytes they stand for
    assert bpb == pytest.approx(-np.log2(probs[targets]).sum() / EVAL, rel=1e-6)  # float32
    first = batches[0][0]
    assert window_ids(first, bpe)[0] == first[0]  # the context byte is its own token


def test_padding_changes_no_window_s_loss(bpe_checkpoint, val, bpe):
    """Batched, padded windows score what each window scores alone (a causal model: padding
    comes after the last real position)."""
    from bitnet.checkpoint import load_checkpoint

    model = load_checkpoint(bpe_checkpoint)
    bpb, n_bytes = evaluate_bpb(model, val, SEQ_LEN, eval_bytes=EVAL, tokenizer=bpe)
    alone = 0.0
    with torch.no_grad():
        for batch in eval_batches(val, SEQ_LEN, EVAL):
            for window in batch:
                ids = torch.from_numpy(window_ids(window, bpe).astype(np.int64))[None]
                logits, _ = model(ids)
                alone += batch_nats(logits, ids)
    assert bpb == pytest.approx(alone / n_bytes / np.log(2), rel=1e-5)
    assert abs(bpb - 8.0) > 0.5  # not uniform over bytes: a meaningful comparison


def test_batches_keep_a_reply_bounded():
    assert batch_windows(256, 256) == 32 == batch_windows(8192, 256)  # byte models: unchanged
    assert batch_windows(SEQ_LEN, VOCAB) == 32
    assert batch_windows(256, 4096) == 16 and batch_windows(256, 32000) == 2
    assert batch_windows(8192, 65536) == 1


def test_a_missing_or_lossy_tokenizer_is_refused(val, bpe):
    class Lossy(TextTokenizer):
        def encode(self, data, progress=None):
            return super().encode(data)[:-1]

    with pytest.raises(ValueError, match="the model has 1024 token ids, the tokenizer 256: pass"):
        evaluate_bpb(UnigramModel(np.full(VOCAB, 1 / VOCAB)), val, SEQ_LEN)  # no tokenizer given
    lossy = Lossy(bpe.spec, bpe.merges)
    with pytest.raises(ValueError, match="decode back to them: its tokenizer.json is damaged"):
        evaluate_bpb(UnigramModel(np.full(VOCAB, 1 / VOCAB)), val, SEQ_LEN, tokenizer=lossy)


# --- the trusted scorer, real servers --------------------------------------------------------


def model_code(root: Path, edit: str | None = None) -> Path:
    code = TEMPLATE_MODEL.read_text()
    if edit is not None:
        assert EMBED in code
        code = code.replace(EMBED, edit)
    root.mkdir()
    (root / "model.py").write_text(code)
    return root


def score(checkpoint: Path, code_dir: Path, val: np.ndarray, **kwargs):
    return score_checkpoint(val, checkpoint, logits_server.command(checkpoint, code_dir),
                            timeout=TIMEOUT, eval_bytes=EVAL, **kwargs)


def test_the_scorer_gives_a_bpe_model_its_in_process_bpb(tmp_path, bpe_checkpoint, val):
    code = model_code(tmp_path / "code")
    result = score(bpe_checkpoint, code, val)  # the tokenizer read from the checkpoint
    sys.path.insert(0, str(code))
    try:
        import model as template_model
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("model", None)
    hf = json.loads((bpe_checkpoint / "config.json").read_text())
    model = template_model.BitNetLM(config_from_hf(hf))
    state = load_file(str(bpe_checkpoint / "model.safetensors"))
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])  # saved once if tied
    model.load_state_dict(state)
    from bitnet.tokenizer import load_tokenizer

    expected, n_bytes = evaluate_bpb(model, val, SEQ_LEN, eval_bytes=EVAL,
                                     tokenizer=load_tokenizer(bpe_checkpoint))
    assert result.val_bpb == pytest.approx(expected, abs=1e-6)
    assert result.bytes_scored == n_bytes == EVAL
    # the check's altered windows are padded to other lengths than their scoring batches, so
    # float32 kernels of other shapes: within the margin, far below any look-ahead
    assert 0.0 <= result.causal_max_diff < CAUSAL_ATOL


def test_a_bpe_model_that_looks_ahead_one_token_is_refused(tmp_path, bpe_checkpoint, val):
    edit = EMBED + " + self.model.embed_tokens(torch.roll(idx, -1, dims=1))"
    with pytest.raises(CausalityError, match=r"of a \d+-token window changed .* tokens from "
                                             r"position \d+ on changed .* it looks ahead"):
        score(bpe_checkpoint, model_code(tmp_path / "code", edit), val)


# --- the wire, with a small protocol-speaking server -----------------------------------------

FAKE_SERVER = textwrap.dedent("""
    import os, struct, sys
    vocab, record = int(sys.argv[1]), sys.argv[2]
    width = 1 if vocab <= 256 else 2
    while True:
        b, t = struct.unpack("<II", sys.stdin.buffer.read(8))
        if b == 0:
            break
        ids = sys.stdin.buffer.read(b * t * width)
        with open(f"{record}.{os.getpid()}", "ab") as f:
            f.write(struct.pack("<II", b, t) + ids)
        sys.stdout.buffer.write(bytes(b * t * vocab * 4))  # zero logits: uniform
        sys.stdout.buffer.flush()
""")


def fake_checkpoint(root: Path, vocab: int, tokenizer: TextTokenizer | None) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"vocab_size": vocab,
                                                  "max_position_embeddings": 16}))
    if tokenizer is not None:
        tokenizer.save(root)
    return root


def fake_score(tmp_path: Path, checkpoint: Path, vocab: int, val: np.ndarray, **kwargs):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    argv = [sys.executable, str(script), str(vocab), str(tmp_path / "requests")]
    return score_checkpoint(val, checkpoint, argv, timeout=30.0, eval_bytes=500, **kwargs)


def test_the_wire_carries_uint16_ids_and_vocab_logits(tmp_path, val, bpe):
    checkpoint = fake_checkpoint(tmp_path / "ckpt", VOCAB, bpe)
    result = fake_score(tmp_path, checkpoint, VOCAB, val)
    batches = eval_batches(val, 16, 500)
    n_tokens = sum(len(bpe.encode(w[1:].tobytes())) for b in batches for w in b)
    assert result.bytes_scored == 500
    assert result.val_bpb == pytest.approx(np.log2(VOCAB) * n_tokens / 500)  # uniform
    requests = []  # both servers', as they read them
    for path in tmp_path.glob("requests.*"):
        raw, at = path.read_bytes(), 0
        while at < len(raw):
            b, t = (int(n) for n in np.frombuffer(raw[at:at + 8], dtype="<u4"))
            requests.append(np.frombuffer(raw[at + 8:at + 8 + 2 * b * t], "<u2").reshape(b, t))
            at += 8 + 2 * b * t
    expected = [pad_ids([window_ids(w, bpe) for w in batch])[0] for batch in batches]
    assert all(any(np.array_equal(r, e) for r in requests) for e in expected)
    assert len(requests) > len(batches)  # and the causality checks


def test_the_vocabulary_is_validated_before_any_server_starts(tmp_path, val, bpe):
    never = ["/nonexistent/server"]  # starting it would be a different error
    cases = [(2048, bpe, r"(?=.*\b1024\b)(?=.*\b2048\b)"),  # both sizes named
             (VOCAB, None, r"vocab_size 1024 is not the tokenizer's 256 \(bytes\)"),
             (70000, bpe, r"vocab_size must be an integer from 256 to 65536, got 70000")]
    for i, (vocab, tokenizer, message) in enumerate(cases):
        checkpoint = fake_checkpoint(tmp_path / f"c{i}", vocab, tokenizer)
        with pytest.raises(ScoreError, match=message):
            score_checkpoint(val, checkpoint, never, timeout=30.0, eval_bytes=500)
    # a byte model's checkpoint is scored as bytes whatever tokenizer is handed in for it
    assert fake_score(tmp_path, fake_checkpoint(tmp_path / "bytes", 256, None), 256, val,
                      tokenizer=byte_tokenizer()).val_bpb == pytest.approx(8.0)
