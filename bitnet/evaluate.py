"""Validation bits-per-byte over a fixed byte count, so every experiment is scored alike.

This module is outside the editable training script on purpose: an experiment may change the
model or the optimiser, never how it is graded. `eval_batches` is the one tiling of the
validation bytes and `batch_nats` the one loss; `evaluate_bpb` (in-process: the merge table,
DiLoCo workers) and `bitnet.score` (the controller's scorer, from the checkpoint) both use them,
with the same batches, so the two agree. The template's train.py evaluates nothing: it never
sees the validation bytes.

Tiling, with L = seq_len: window i is bytes [iL, (i+1)L) of the validation set. It is the
model's whole input, and its own bytes 1..L-1 are the targets (position t predicts byte t+1 of
the same window; the last position's logits are unused). A window's first byte is never a
target and windows do not overlap, so no request ever holds a byte that another request is
scored on: a model that remembers earlier requests learns no target early.
Windows are taken until EVAL_BYTES bytes are scored (L-1 per window, the last window shorter
when L-1 does not divide EVAL_BYTES), so the evaluation reads the first
EVAL_BYTES + ceil(EVAL_BYTES / (L-1)) validation bytes and scores exactly EVAL_BYTES of them:
every byte j of that prefix with j % L != 0. A smaller validation set is used whole (a last
lone byte, which would be a window with no target, is left out).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EVAL_BYTES = 2**18  # bytes scored per evaluation (or all a smaller validation set allows)
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
    n_full, tail = divmod(span, seq_len)
    data = np.asarray(val[:span], dtype=np.uint8)
    full = data[: n_full * seq_len].reshape(n_full, seq_len)
    batches = [full[start : start + batch_size] for start in range(0, n_full, batch_size)]
    if tail >= 2:
        batches.append(data[n_full * seq_len :][None])
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
