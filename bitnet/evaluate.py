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
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EVAL_BYTES = 2**16  # bytes scored per evaluation (or all a smaller validation set allows)
BATCH_WINDOWS = 32  # windows per forward pass; both scorers batch alike so their sums agree


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


def batch_nats(logits: torch.Tensor, windows: torch.Tensor) -> float:
    """Summed next-byte loss in nats: position t of each window predicts its byte t+1."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        windows[:, 1:].reshape(-1).long(),
        reduction="sum",
    ).item()


@torch.no_grad()
def evaluate_bpb(
    model: nn.Module,
    val: np.ndarray,
    seq_len: int,
    batch_size: int = BATCH_WINDOWS,
    eval_bytes: int = EVAL_BYTES,
) -> tuple[float, int]:
    """Mean next-byte loss in bits over the bytes `eval_batches` scores: (val_bpb, bytes_scored)."""
    was_training = model.training
    model.eval()
    batches = eval_batches(val, seq_len, eval_bytes, batch_size)
    total_nats = 0.0
    for batch in batches:
        windows = torch.from_numpy(batch.astype(np.int64))
        logits, _ = model(windows)
        total_nats += batch_nats(logits, windows)
    model.train(was_training)
    n_bytes = scored_bytes(batches)
    return total_nats / n_bytes / math.log(2), n_bytes
