"""BitLinear: ternary weights, int8 activations, straight-through gradients, output scale."""

import torch
import torch.nn.functional as F
from torch import nn

from bitnet.quant import BitLinear, quantize_activation, quantize_weight


def test_effective_weight_takes_exactly_three_values():
    torch.manual_seed(0)
    weight = torch.randn(64, 48)
    quantized = quantize_weight(weight)
    scale = weight.abs().mean()
    values = torch.unique(quantized)
    assert len(values) == 3
    torch.testing.assert_close(values, torch.stack([-scale, torch.zeros(()), scale]))


def test_activations_lie_on_the_per_token_int8_grid():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 32, dtype=torch.float64) * torch.rand(5, 7, 1, dtype=torch.float64) * 10
    levels = quantize_activation(x) * 127 / x.abs().amax(dim=-1, keepdim=True)
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-9)
    levels = levels.round()
    assert levels.min() >= -128 and levels.max() <= 127
    # the largest entry of each token maps to +-127 exactly
    assert torch.equal(levels.abs().amax(dim=-1), torch.full((5, 7), 127.0, dtype=torch.float64))


def test_gradients_are_straight_through():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    upstream = torch.randn(4, 8)
    (layer(x) * upstream).sum().backward()

    # the same computation with the quantised tensors as the leaves
    w_q = quantize_weight(layer.weight.detach()).requires_grad_()
    x_q = quantize_activation(x.detach()).requires_grad_()
    (F.linear(x_q, w_q) * upstream).sum().backward()
    assert torch.equal(layer.weight.grad, w_q.grad)
    assert torch.equal(x.grad, x_q.grad)
    # and they differ from a dense layer's gradients, so the test can fail
    assert not torch.allclose(x.grad, upstream @ layer.weight.detach())


def test_output_scale_matches_dense_linear():
    torch.manual_seed(0)
    dense = nn.Linear(256, 256, bias=False)
    bit = BitLinear(256, 256)
    bit.weight.data.copy_(dense.weight.data)
    x = torch.randn(2048, 256)
    ratio = bit(x).std() / dense(x).std()
    assert 0.5 < ratio < 2.0, f"BitLinear output std is {ratio:.3g}x the dense one"


def test_hand_computed_3x4_example():
    # mean|W| = 9/12 = 0.75; W/0.75 rounds and clips to T below
    weight = torch.tensor(
        [[0.5, -1.0, 0.0, 2.0], [1.0, 1.0, -0.25, 0.0], [-0.5, 0.25, 1.5, -1.0]],
        dtype=torch.float64,
    )
    ternary = torch.tensor([[1, -1, 0, 1], [1, 1, 0, 0], [-1, 0, 1, -1]], dtype=torch.float64)
    # max|x| = 2.54 -> 127/2.54 = 50 levels per unit: [127, -50.55, 25, 15.35] -> [127, -51, 25, 15]
    x = torch.tensor([[2.54, -1.011, 0.5, 0.307]], dtype=torch.float64)
    x_q = torch.tensor([[2.54, -1.02, 0.5, 0.30]], dtype=torch.float64)

    layer = BitLinear(4, 3, dtype=torch.float64)
    layer.weight.data.copy_(weight)
    ternary_int, scale = layer.ternary_weight()
    assert torch.equal(ternary_int.double(), ternary) and scale == 0.75
    torch.testing.assert_close(quantize_activation(x), x_q, rtol=0, atol=1e-12)
    # y = 0.75 * T @ x_q = 0.75 * [3.86, 1.52, -2.34]
    expected = torch.tensor([[2.895, 1.14, -1.755]], dtype=torch.float64)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
