"""Validation bits-per-byte over a fixed byte count, so every experiment is scored alike.

This module is outside the editable training script on purpose: an experiment may change the
model or the optimiser, never how it is graded. `eval_batches` is the one tiling of the
validation bytes and `batch_nats` the one loss; `evaluate_bpb` (in-process: the merge table,
DiLoCo workers) and `bitnet.score` (the controller's scorer, from the checkpoint) both use them,
with the same batches, so the two agree. The template's train.py evaluates nothing: it never
sees the validation bytes.

Tiling, with L = seq_len: a window is L consecutive bytes at a multiple of L in the validation
set. It is the model's whole input, and its own bytes 1..L-1 are the targets (position t
predicts byte t+1 of the same window; the last position's logits are unused). A window's first
byte is never a target and windows do not overlap, so no request ever holds a byte that another
request is scored on: a model that remembers earlier requests learns no target early.
n = ceil(EVAL_BYTES / (L-1)) windows score exactly EVAL_BYTES bytes (the last window shorter
when L-1 does not divide EVAL_BYTES). When the validation set holds more than that, the windows
are spread evenly over all of it (window i at slot floor(i * slots / n)), so every file weighs
in, not only the first few: 2^16 bytes so spread scored two trained template models within 0.4%
of 2^20 bytes spread over all of portable-code's 1.09 MB validation split, where the first 2^16
bytes were 10% off (and the first 2^18, scored before, 8%); and it takes a quarter of the time.
A validation set too small for that is read from its start (and used whole when smaller still;
a last lone byte, which would be a window with no target, is left out).

Tokenized models (a vocabulary over 256: a trained byte-level BPE, bitnet.tokenizer) are scored
on exactly the same byte windows and the same bytes, so their number is still bits per byte of
the fixed validation bytes and compares with a byte model's: a window's first byte is context,
fed as its single-byte token (every tokenizer's ids 0..255 are the bytes), and its bytes 1..L-1
are encoded by the tokenizer and are the targets. The loss is the tokens' summed NLL, divided by
the same byte count. The token ids are checked to decode back to exactly those bytes (so the sum
is a code length of them whatever tokenizer.json a checkpoint carries). A window's tokens are at
most L (each token is a byte or more); shorter ones are padded (PAD_ID) to their batch's
longest, and padded positions are never targets. The byte tokenizer takes the byte path
unchanged, so a byte model scores the same number bit for bit either way. A reply holds V logits
a position, so a tokenized model's batches hold fewer windows (`batch_windows`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from bitnet.tokenizer import TextTokenizer

EVAL_BYTES = 2**16  # bytes scored per evaluation (or all a smaller validation set allows)
BATCH_WINDOWS = 32  # windows per forward pass; both scorers batch alike so their sums agree
BYTE_VOCAB = 256  # a model over bytes: token id == byte value
# logits a tokenized model's batch may return at most, bounding its windows by seq_len tokens
# each: 64 MiB of float32 (a byte model's 32 windows of 256 bytes return 8 MiB). Tokens are ~3
# bytes, so a typical reply is a third of it: 36.5 MiB at most for bpe:4096, context 128, on
# portable-prose (bench/tokenized_scoring.py)
REPLY_LOGITS = 1 << 24
PAD_ID = 0  # fills a tokenized window up to its batch's longest; never a target

# a batch as the model gets it: ids [windows, positions] and, for tokenized windows, each
# window's length (None: every window fills the batch, as byte windows do)
Request = tuple[np.ndarray, "np.ndarray | None"]


def is_bytes(tokenizer: TextTokenizer | None) -> bool:
    """Whether `tokenizer` is the byte tokenizer (ids 0..255 are the bytes, and there are no
    others), so windows are the model's input as they are."""
    return tokenizer is None or tokenizer.is_bytes


def batch_windows(seq_len: int, vocab_size: int) -> int:
    """Windows per batch: BATCH_WINDOWS for a byte model; for a larger vocabulary as many as keep
    a reply (seq_len positions at most, vocab_size logits each) within REPLY_LOGITS."""
    if vocab_size <= BYTE_VOCAB:
        return BATCH_WINDOWS
    return max(1, min(BATCH_WINDOWS, REPLY_LOGITS // (seq_len * vocab_size)))


def eval_batches(
    val: np.ndarray, seq_len: int, eval_bytes: int = EVAL_BYTES, batch_size: int = BATCH_WINDOWS
) -> list[np.ndarray]:
    """The evaluation's windows as uint8 arrays of shape (windows, length), in order.

    Full windows come `batch_size` at a time; the shorter tail window, if any, alone last.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len {seq_len} leaves no target in a window: use 2 or more")
    n_windows = math.ceil(eval_bytes / (seq_len - 1))
    span = min(eval_bytes + n_windows, len(val))
    slots = len(val) // seq_len
    if span < len(val) and slots >= n_windows:  # more than enough: spread over all of it
        starts = (np.arange(n_windows) * slots // n_windows) * seq_len
        windows = np.asarray(val, dtype=np.uint8)[starts[:, None] + np.arange(seq_len)]
        last = eval_bytes - (n_windows - 1) * (seq_len - 1) + 1  # bytes of the last window
        full = windows if last == seq_len else windows[:-1]
        tail = windows[-1:, :last] if last < seq_len else None
    else:
        n_full, rest = divmod(span, seq_len)
        data = np.asarray(val[:span], dtype=np.uint8)
        full = data[: n_full * seq_len].reshape(n_full, seq_len)
        tail = data[n_full * seq_len :][None] if rest >= 2 else None
    batches = [full[start : start + batch_size] for start in range(0, len(full), batch_size)]
    if tail is not None:
        batches.append(np.ascontiguousarray(tail))
    if not batches:
        raise ValueError("validation set has fewer than 2 bytes: use a larger corpus")
    return batches


def scored_bytes(batches: list[np.ndarray]) -> int:
    """How many bytes the windows score: all but each window's first."""
    return sum(batch.shape[0] * (batch.shape[1] - 1) for batch in batches)


def window_ids(window: np.ndarray, tokenizer: TextTokenizer) -> np.ndarray:
    """A byte window as a tokenized model's input (uint16): its first byte as that byte's
    token, then its other bytes encoded. ValueError if the ids do not stand for those bytes."""
    rest = window[1:].tobytes()
    ids = np.asarray(tokenizer.encode(rest))
    if len(ids) and int(ids.max()) >= tokenizer.vocab_size or tokenizer.decode(ids) != rest:
        raise ValueError(
            f"the tokenizer ({tokenizer.spec}) does not encode the evaluation bytes to ids that"
            " decode back to them: its tokenizer.json is damaged; retrain it"
        )
    return np.concatenate([window[:1].astype(np.uint16), ids.astype(np.uint16)])


def pad_ids(sequences: list[np.ndarray]) -> Request:
    """Token sequences as one [n, longest] uint16 array (PAD_ID after each) and their lengths."""
    lengths = np.array([len(seq) for seq in sequences], dtype=np.int64)
    ids = np.full((len(sequences), int(lengths.max())), PAD_ID, dtype=np.uint16)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    return ids, lengths


def encode_batch(batch: np.ndarray, tokenizer: TextTokenizer | None) -> Request:
    """A batch of byte windows as the model's input: itself for the byte tokenizer, else each
    window's `window_ids`, padded."""
    if is_bytes(tokenizer):
        return batch, None
    return pad_ids([window_ids(window, tokenizer) for window in batch])


def batch_nats(logits: torch.Tensor, windows: torch.Tensor,
               lengths: torch.Tensor | np.ndarray | None = None) -> float:
    """Summed next-token loss in nats: position t of each window predicts its token t+1 (for
    byte windows: its byte t+1). `lengths`: positions from a window's length on are padding."""
    targets = windows[:, 1:].long()
    if lengths is not None:  # -100: cross_entropy's default ignore_index
        positions = torch.arange(targets.shape[1])
        targets = targets.masked_fill(positions >= torch.as_tensor(lengths)[:, None] - 1, -100)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        reduction="sum",
    ).item()


@torch.no_grad()
def evaluate_bpb(
    model: nn.Module,
    val: np.ndarray,
    seq_len: int,
    batch_size: int | None = None,
    eval_bytes: int = EVAL_BYTES,
    tokenizer: TextTokenizer | None = None,
) -> tuple[float, int]:
    """Mean loss in bits per byte over the bytes `eval_batches` scores: (val_bpb, bytes_scored).

    `tokenizer`: the model's (None: bytes); `batch_size` defaults to `batch_windows`, as
    bitnet.score batches, so the two agree.
    """
    was_training = model.training
    model.eval()
    vocab = BYTE_VOCAB if tokenizer is None else tokenizer.vocab_size
    batch_size = batch_size or batch_windows(seq_len, vocab)
    batches = eval_batches(val, seq_len, eval_bytes, batch_size)
    total_nats = 0.0
    for batch in batches:
        ids, lengths = encode_batch(batch, tokenizer)
        windows = torch.from_numpy(ids.astype(np.int64))
        logits, _ = model(windows)
        if logits.shape[-1] != vocab:  # byte targets against a BPE model's logits, say
            raise ValueError(f"the model has {logits.shape[-1]} token ids, the tokenizer "
                             f"{vocab}: pass evaluate_bpb the tokenizer the model was trained with")
        total_nats += batch_nats(logits, windows, lengths)
    model.train(was_training)
    n_bytes = scored_bytes(batches)
    return total_nats / n_bytes / math.log(2), n_bytes
