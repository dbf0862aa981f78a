"""Single-process DiLoCo (merge/diloco.py), its inner loop and the synchronous baseline."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bitnet.model import BitNetConfig
from merge.compress import payload_bytes
from merge.diloco import load_parameters, parameters_of, run_diloco
from merge.inner import InnerConfig, fresh_model, inner_optimizer, train_steps
from merge.sync_dp import run_sync_dp

TINY = BitNetConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
INNER = InnerConfig(batch_size=4, seq_len=32, warmup_steps=3)
CODE = np.frombuffer(b"".join(f"def f{i}(x):\n    return x * {i}\n".encode()
                              for i in range(200)), dtype=np.uint8)
PROSE = np.frombuffer(b"The quick brown fox jumps over the lazy dog; " * 120, dtype=np.uint8)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: CPU kernels then reduce in one order, so equal inputs give equal bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def local_weights(base, train, seed: int, steps: int) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(base)
    train_steps(model, inner_optimizer(model, INNER), train, torch.Generator().manual_seed(seed),
                steps, INNER)
    return parameters_of(model)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt().item()


def test_outer_lr_1_no_momentum_lands_on_the_mean_of_the_workers():
    base = fresh_model(TINY, 0)
    result = run_diloco(base, [CODE, PROSE], inner_steps=4, outer_steps=1, inner=INNER,
                        outer_lr=1.0, outer_momentum=0.0, data_seeds=[10, 11])
    w0, w1 = (local_weights(base, data, s, 4) for data, s in ((CODE, 10), (PROSE, 11)))
    mean = {k: (w0[k] + w1[k]) / 2 for k in w0}
    assert max_diff(parameters_of(result.model), mean) < 1e-6
    assert max_diff(w0, w1) > 1e-3  # the workers really differed
    assert max_diff(parameters_of(base), parameters_of(fresh_model(TINY, 0))) == 0  # untouched


def test_one_worker_keeps_its_adamw_state_across_outer_steps():
    """1 worker, lr 1, no momentum: 3 outer steps of 4 = 12 plain steps with one optimiser
    (a reset of AdamW's moments, or of the warmup count, at a sync would break this)."""
    base = fresh_model(TINY, 1)
    result = run_diloco(base, [CODE], inner_steps=4, outer_steps=3, inner=INNER, outer_lr=1.0,
                        outer_momentum=0.0, data_seeds=[5])
    assert max_diff(parameters_of(result.model), local_weights(base, CODE, 5, 12)) < 1e-5


def test_default_outer_optimiser_moves_past_the_mean_and_is_deterministic():
    base = fresh_model(TINY, 2)
    runs = [run_diloco(base, [CODE, PROSE], inner_steps=3, outer_steps=2, inner=INNER, seed=7)
            for _ in range(2)]
    assert max_diff(parameters_of(runs[0].model), parameters_of(runs[1].model)) == 0
    plain = run_diloco(base, [CODE, PROSE], inner_steps=3, outer_steps=2, inner=INNER, seed=7,
                       outer_lr=1.0, outer_momentum=0.0)
    assert max_diff(parameters_of(runs[0].model), parameters_of(plain.model)) > 1e-4
    other = run_diloco(base, [CODE, PROSE], inner_steps=3, outer_steps=2, inner=INNER, seed=8)
    assert max_diff(parameters_of(runs[0].model), parameters_of(other.model)) > 1e-4


def test_bytes_and_compression():
    base = fresh_model(TINY, 3)
    numel = sum(p.numel() for p in base.parameters())
    seen = []
    results = {kind: run_diloco(base, [CODE, PROSE], inner_steps=2, outer_steps=3, inner=INNER,
                                compress=kind, on_step=seen.append)
               for kind in ("none", "fp16", "int8")}
    for kind, result in results.items():
        assert result.bytes_per_worker_step == payload_bytes(numel, kind)
        assert result.bytes_communicated == 2 * 3 * payload_bytes(numel, kind)
    assert results["none"].bytes_communicated / results["int8"].bytes_communicated > 3.9
    assert [p.step for p in seen] == [1, 2, 3] * 3 and len(seen[0].losses) == 2
    exact, start = parameters_of(results["none"].model), parameters_of(base)
    moved = distance(exact, start)
    errors = {kind: distance(exact, parameters_of(results[kind].model))
              for kind in ("fp16", "int8")}
    assert 0 < errors["fp16"] < errors["int8"] < 0.05 * moved  # lossy, but the same run


def test_inner_steps_split_in_two_equal_one_call():
    base = fresh_model(TINY, 4)
    model = copy.deepcopy(base)
    optimizer, gen = inner_optimizer(model, INNER), torch.Generator().manual_seed(3)
    first = train_steps(model, optimizer, CODE, gen, 3, INNER)
    second = train_steps(model, optimizer, CODE, gen, 3, INNER, first_step=3)
    assert max_diff(parameters_of(model), local_weights(base, CODE, 3, 6)) == 0
    assert len(first) == len(second) == 3 and sum(second) < sum(first)


def test_sync_dp_one_worker_is_plain_training_and_counts_bytes():
    base = fresh_model(TINY, 5)
    numel = sum(p.numel() for p in base.parameters())
    one = run_sync_dp(base, [CODE], steps=5, inner=INNER, data_seeds=[9])
    assert max_diff(parameters_of(one.model), local_weights(base, CODE, 9, 5)) == 0
    two = run_sync_dp(base, [CODE, PROSE], steps=5, inner=INNER)
    assert two.bytes_communicated == 2 * 5 * 4 * numel
    assert two.losses[-1] < two.losses[0]
    # two workers on the same data and seed average two equal gradients: the same step
    same = run_sync_dp(base, [CODE, CODE], steps=5, inner=INNER, data_seeds=[9, 9])
    assert max_diff(parameters_of(same.model), parameters_of(one.model)) == 0


def test_same_compute_diloco_and_sync_dp_both_learn():
    base = fresh_model(TINY, 6)
    diloco = run_diloco(base, [CODE, PROSE], inner_steps=5, outer_steps=4, inner=INNER)
    sync = run_sync_dp(base, [CODE, PROSE], steps=20, inner=INNER)
    assert sync.bytes_communicated / diloco.bytes_communicated == pytest.approx(5)  # = H
    assert diloco.losses[-1][0] < diloco.losses[0][0] and sync.losses[-1] < sync.losses[0]


def test_bad_arguments():
    base = fresh_model(TINY, 0)
    with pytest.raises(ValueError, match="unknown compression"):
        run_diloco(base, [CODE], compress="zip")
    with pytest.raises(ValueError, match="2 data seeds for 1 workers"):
        run_diloco(base, [CODE], data_seeds=[1, 2])
    with pytest.raises(ValueError, match="at least 1"):
        run_diloco(base, [CODE], inner_steps=0)
    with pytest.raises(ValueError, match="positive"):
        InnerConfig(lr=0)
    model = copy.deepcopy(base)
    load_parameters(model, {k: v * 0 for k, v in parameters_of(base).items()})
    assert all(p.abs().sum() == 0 for p in model.parameters())
