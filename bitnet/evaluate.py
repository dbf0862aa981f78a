"""Validation bits-per-byte over a fixed byte count, so every experiment is scored alike.

This module is outside the editable training script on purpose: an experiment may change the
model or the optimiser, never how it is graded.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EVAL_BYTES = 2**18  # bytes predicted per evaluation (or the whole validation set if smaller)


@torch.no_grad()
def evaluate_bpb(
    model: nn.Module, val: np.ndarray, seq_len: int, batch_size: int = 32
) -> tuple[float, int]:
    """Mean next-byte loss in bits over the first EVAL_BYTES validation bytes.

    Windows of `seq_len` tile the prefix without overlap, so each byte is predicted exactly once
    whatever the context length. Returns (val_bpb, bytes_scored).
    """
    n_bytes = min(EVAL_BYTES, len(val) - 1)
    if n_bytes < 1:
        raise ValueError("validation set has fewer than 2 bytes: use a larger corpus")
    tokens = torch.from_numpy(np.asarray(val[: n_bytes + 1], dtype=np.int64))
    was_training = model.training
    model.eval()
    total_nats = 0.0
    n_full = n_bytes // seq_len
    inputs = tokens[: n_full * seq_len].view(n_full, seq_len)
    targets = tokens[1 : n_full * seq_len + 1].view(n_full, seq_len)
    for start in range(0, n_full, batch_size):
        batch = slice(start, start + batch_size)
        total_nats += _sum_loss(model, inputs[batch], targets[batch])
    tail_start = n_full * seq_len
    if n_bytes > tail_start:  # the bytes left over, shorter than one window
        tail_inputs = tokens[tail_start:n_bytes][None]
        total_nats += _sum_loss(model, tail_inputs, tokens[tail_start + 1 : n_bytes + 1][None])
    model.train(was_training)
    return total_nats / n_bytes / math.log(2), n_bytes


def _sum_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    logits, _ = model(inputs)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum"
    ).item()
