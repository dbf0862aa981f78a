"""The evaluation tiling: windows [iL, (i+1)L) that score their own bytes 1..L-1, so a byte is
scored once, no request holds another request's target, and EVAL_BYTES bytes are scored."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from bitnet.evaluate import EVAL_BYTES, batch_nats, eval_batches, evaluate_bpb, scored_bytes


class UnigramModel(nn.Module):
    """Predicts the same byte distribution at every position: its loss ignores the context."""

    def __init__(self, probs: np.ndarray) -> None:
        super().__init__()
        self.log_probs = torch.tensor(np.log(probs), dtype=torch.float64)
        self.requests: list[torch.Tensor] = []

    def forward(self, input_ids, targets=None):
        self.requests.append(input_ids.clone())
        return self.log_probs.expand(*input_ids.shape, 256), None


def test_ten_bytes_in_windows_of_four():
    """Windows 0-3, 4-7 and the tail 8-9; targets are bytes 1,2,3 5,6,7 9 (not 0, 4, 8)."""
    val = np.arange(10, dtype=np.uint8)
    batches = eval_batches(val, 4, eval_bytes=100, batch_size=32)
    assert [b.tolist() for b in batches] == [[[0, 1, 2, 3], [4, 5, 6, 7]], [[8, 9]]]
    assert scored_bytes(batches) == 7
    # batches of 1: each full window alone, then the tail
    assert [b.tolist() for b in eval_batches(val, 4, 100, batch_size=1)] == [
        [[0, 1, 2, 3]], [[4, 5, 6, 7]], [[8, 9]]]
    # eval_bytes caps the count: 5 targets need ceil(5/3) = 2 windows, the second of 3 bytes
    assert [b.tolist() for b in eval_batches(val, 4, eval_bytes=5)] == [[[0, 1, 2, 3]], [[4, 5, 6]]]
    # 9 bytes: the lone last byte (8) would be a window without a target, so it is left out
    assert [b.tolist() for b in eval_batches(val[:9], 4, 100)] == [[[0, 1, 2, 3], [4, 5, 6, 7]]]

    probs = np.random.default_rng(1).random(256) + 0.1
    probs /= probs.sum()
    model = UnigramModel(probs)
    bpb, scored = evaluate_bpb(model, val, 4, eval_bytes=100)
    assert scored == 7
    assert bpb == pytest.approx(-np.log2(probs[[1, 2, 3, 5, 6, 7, 9]]).mean(), rel=1e-6)
    assert [r.tolist() for r in model.requests] == [[[0, 1, 2, 3], [4, 5, 6, 7]], [[8, 9]]]


def test_every_byte_but_each_windows_first_is_scored_for_any_context_length():
    rng = np.random.default_rng(0)
    val = rng.integers(0, 256, size=5000, dtype=np.uint8)
    probs = rng.random(256) + 0.1
    probs /= probs.sum()
    for seq_len in (7, 128, 4999, 5000):
        scored_mask = np.arange(len(val)) % seq_len != 0
        model = UnigramModel(probs)
        bpb, scored = evaluate_bpb(model, val, seq_len, batch_size=3)
        assert scored == scored_mask.sum()
        assert bpb == pytest.approx(-np.log2(probs[val[scored_mask]]).mean(), rel=1e-6)
        # the requests tile the bytes: each byte is in exactly one window, in order
        seen = torch.cat([r.reshape(-1) for r in model.requests]).numpy()
        assert np.array_equal(seen, val[: len(seen)]) and len(val) - len(seen) <= 1


def test_uniform_guessing_is_eight_bits_over_exactly_eval_bytes():
    seq_len = 64
    windows = math.ceil(EVAL_BYTES / (seq_len - 1))
    val = np.zeros(2 * EVAL_BYTES, dtype=np.uint8)
    batches = eval_batches(val, seq_len)
    assert sum(b.size for b in batches) == EVAL_BYTES + windows  # the bytes read
    assert len(batches[-1][0]) == EVAL_BYTES - (windows - 1) * (seq_len - 1) + 1  # the tail
    bpb, scored = evaluate_bpb(UnigramModel(np.full(256, 1 / 256)), val, seq_len)
    assert scored == EVAL_BYTES
    assert bpb == pytest.approx(math.log2(256))


def test_too_little_to_score_is_refused():
    with pytest.raises(ValueError, match="fewer than 2 bytes"):
        eval_batches(np.zeros(1, dtype=np.uint8), 16)
    with pytest.raises(ValueError, match="no target"):
        eval_batches(np.zeros(100, dtype=np.uint8), 1)


def test_restores_training_mode():
    model = UnigramModel(np.full(256, 1 / 256)).train()
    evaluate_bpb(model, np.arange(100, dtype=np.uint8), 16)
    assert model.training


def test_the_summed_loss_is_the_same_float_on_one_thread_or_two():
    """bitnet.score sums on one thread (its second would spin beside the servers): that must not
    move the score, which a replay on a machine with other cores compares."""
    generator = torch.Generator().manual_seed(0)
    before = torch.get_num_threads()
    try:
        for _ in range(5):
            logits = torch.randn(32, 128, 256, generator=generator) * 3
            windows = torch.randint(0, 256, (32, 128), generator=generator)
            sums = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                sums.append(batch_nats(logits, windows))
            assert sums[0] == sums[1]
    finally:
        torch.set_num_threads(before)
