"""evaluate_bpb scores a fixed byte count, each byte once, whatever the context length."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from bitnet.evaluate import EVAL_BYTES, evaluate_bpb


class UnigramModel(nn.Module):
    """Predicts the same byte distribution at every position: its loss ignores the context."""

    def __init__(self, probs: np.ndarray) -> None:
        super().__init__()
        self.log_probs = torch.tensor(np.log(probs), dtype=torch.float64)

    def forward(self, input_ids, targets=None):
        return self.log_probs.expand(*input_ids.shape, 256), None


def test_each_byte_scored_once_for_any_context_length():
    rng = np.random.default_rng(0)
    val = rng.integers(0, 256, size=5000, dtype=np.uint8)
    probs = rng.random(256) + 0.1
    probs /= probs.sum()
    expected = -np.log2(probs[val[1:]]).mean()  # every byte after the first, exactly once
    for seq_len in (7, 128, 4999):
        bpb, scored = evaluate_bpb(UnigramModel(probs), val, seq_len, batch_size=3)
        assert scored == len(val) - 1
        assert bpb == pytest.approx(expected, rel=1e-6)  # float32 cross-entropy


def test_uniform_guessing_is_eight_bits_and_byte_count_is_capped():
    val = np.zeros(EVAL_BYTES + 1000, dtype=np.uint8)
    bpb, scored = evaluate_bpb(UnigramModel(np.full(256, 1 / 256)), val, 64)
    assert scored == EVAL_BYTES
    assert bpb == pytest.approx(math.log2(256))


def test_restores_training_mode():
    model = UnigramModel(np.full(256, 1 / 256)).train()
    evaluate_bpb(model, np.arange(100, dtype=np.uint8), 16)
    assert model.training
