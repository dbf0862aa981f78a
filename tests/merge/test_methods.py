"""Merge methods against tensors worked out by hand, and the DiLoCo outer step against them."""

from __future__ import annotations

import pytest
import torch

from merge.methods import MergeError, dare, linear, merge, task_arithmetic, ties
from merge.outer import OuterStep

BASE = {"w": torch.tensor([0.0, 0.0, 0.0, 0.0]), "b": torch.tensor([1.0])}
A = {"w": torch.tensor([1.0, -2.0, 0.5, 0.0]), "b": torch.tensor([2.0])}
B = {"w": torch.tensor([3.0, 1.0, -0.1, 0.0]), "b": torch.tensor([0.0])}


def test_linear_is_the_weighted_mean():
    out = linear([A, B], weights=[1.0, 3.0])
    # (1*A + 3*B) / 4
    assert torch.allclose(out["w"], torch.tensor([2.5, 0.25, 0.05, 0.0]))
    assert torch.allclose(out["b"], torch.tensor([0.5]))


def test_task_arithmetic_adds_the_scaled_sum_of_task_vectors():
    out = task_arithmetic(BASE, [A, B], lam=2.0)
    # tau sum w = [4, -1, 0.4, 0]; b: taus 1 and -1 -> 0
    assert torch.allclose(out["w"], torch.tensor([8.0, -2.0, 0.8, 0.0]))
    assert torch.allclose(out["b"], torch.tensor([1.0]))
    weighted = task_arithmetic(BASE, [A, B], lam=0.5, weights=[1.0, 3.0])
    # (1*[1,-2,.5,0] + 3*[3,1,-.1,0]) / 2 = [5, 0.5, 0.1, 0]
    assert torch.allclose(weighted["w"], torch.tensor([5.0, 0.5, 0.1, 0.0]))


def test_ties_trims_elects_signs_and_averages_the_agreeing():
    base = {"w": torch.zeros(4)}
    a = {"w": torch.tensor([4.0, -3.0, 0.1, 2.0])}
    b = {"w": torch.tensor([2.0, 1.0, -5.0, -1.0])}
    c = {"w": torch.tensor([-1.0, 2.0, 0.2, 3.0])}
    out = ties(base, [a, b, c], density=0.5)
    # trimmed to the 2 largest |x| (at least 1): a [4,-3,0,0]  b [2,0,-5,0]  c [0,2,0,3]
    # elected sign of the sums [6,-1,-5,3]: + - - +
    # agreeing values: pos0 {4,2} -> 3; pos1 {-3} -> -3; pos2 {-5} -> -5; pos3 {3} -> 3
    assert torch.allclose(out["w"], torch.tensor([3.0, -3.0, -5.0, 3.0]))


def test_ties_with_weights_divides_by_the_agreeing_weights():
    base = {"w": torch.zeros(2)}
    a = {"w": torch.tensor([1.0, -1.0])}
    b = {"w": torch.tensor([3.0, 2.0])}
    out = ties(base, [a, b], density=1.0, weights=[1.0, 2.0], lam=0.5)
    # weighted [1,-1] and [6,4]; signs + +; pos0 (1+6)/3, pos1 4/2; times lam 0.5
    assert torch.allclose(out["w"], torch.tensor([7 / 6, 1.0]))


def test_dare_drops_at_the_rate_rescales_and_repeats_with_its_seed():
    base = {"w": torch.zeros(100_000)}
    a = {"w": torch.ones(100_000)}
    out = dare(base, [a], drop_rate=0.75, seed=3)
    kept = out["w"] != 0
    assert abs(kept.float().mean().item() - 0.25) < 0.01
    assert torch.allclose(out["w"][kept], torch.tensor(4.0))  # 1 / (1 - 0.75)
    assert torch.equal(out["w"], dare(base, [a], drop_rate=0.75, seed=3)["w"])
    assert not torch.equal(out["w"], dare(base, [a], drop_rate=0.75, seed=4)["w"])


def test_ties_keeps_at_least_one_value_per_tensor():
    out = ties({"w": torch.zeros(4)}, [{"w": torch.tensor([0.1, -3.0, 0.2, 0.0])}], density=0.1)
    assert torch.equal(out["w"], torch.tensor([0.0, -3.0, 0.0, 0.0]))


def test_dare_with_no_drop_is_task_arithmetic():
    out = dare(BASE, [A, B], drop_rate=0.0, lam=0.5)
    expected = task_arithmetic(BASE, [A, B], lam=0.5)
    assert all(torch.equal(out[k], expected[k]) for k in BASE)


def test_dare_sign_election_drops_the_disagreeing():
    base = {"w": torch.zeros(2)}
    a = {"w": torch.tensor([2.0, 1.0])}
    b = {"w": torch.tensor([-1.0, 1.0])}
    out = dare(base, [a, b], drop_rate=0.0, sign_election=True)
    assert torch.allclose(out["w"], torch.tensor([2.0, 2.0]))  # -1 loses the election; a sum


def test_outer_step_with_lr_1_and_no_momentum_is_the_uniform_task_arithmetic_merge():
    torch.manual_seed(0)
    base = {"x": torch.randn(5, 3), "y": torch.randn(7)}
    workers = [{k: v + torch.randn_like(v) for k, v in base.items()} for _ in range(3)]
    outer = OuterStep(base, lr=1.0, momentum=0.0)
    stepped = outer.step(workers)
    merged = task_arithmetic(base, workers, lam=1 / 3)
    for name in base:
        torch.testing.assert_close(stepped[name], merged[name], rtol=0, atol=1e-6)


def test_outer_step_applies_nesterov_momentum():
    base = {"x": torch.tensor([1.0])}
    outer = OuterStep(base, lr=0.7, momentum=0.9)
    # first step: grad g = 1 - 0 = 1, buffer b = 1, nesterov update g + 0.9 b = 1.9
    first = outer.step([{"x": torch.tensor([0.0])}])
    assert torch.allclose(first["x"], torch.tensor([1.0 - 0.7 * 1.9]))
    # second: g = x - 0, b = 0.9*1 + g, update g + 0.9 b
    x = first["x"].item()
    buffer = 0.9 + x
    second = outer.step([{"x": torch.tensor([0.0])}])
    assert torch.allclose(second["x"], torch.tensor([x - 0.7 * (x + 0.9 * buffer)]))


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(MergeError, match="different tensors"):
        linear([A, {"w": A["w"]}])
    with pytest.raises(MergeError, match="merge only models of one shape"):
        task_arithmetic(BASE, [{"w": torch.zeros(3), "b": torch.zeros(1)}])
    with pytest.raises(MergeError, match="density 0.0 is outside"):
        ties(BASE, [A], density=0.0)
    with pytest.raises(MergeError, match="drop_rate 1.0 is outside"):
        dare(BASE, [A], drop_rate=1.0)
    with pytest.raises(MergeError, match="unknown merge method 'soup'"):
        merge("soup", BASE, [A])
    with pytest.raises(MergeError, match="2 weights for 1 models"):
        linear([A], weights=[1, 2])
