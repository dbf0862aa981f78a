"""BitNet b1.58 quantisers and the BitLinear layer.

Weights: per-tensor absmean ternary, W_q = s * clip(round(W / s), -1, 1) with s = mean|W|.
Activations: per-token absmax int8, x_q = clip(round(x * 127 / max|x|), -128, 127) * max|x| / 127.
Both quantisers are straight-through: their backward pass is the identity, so the fp32 latent
weight receives exactly the gradient taken with respect to the quantised weight.

The quantised tensors are rescaled back ("fake quantisation"), so a BitLinear's output is on the
same scale as an nn.Linear with the same latent weights; forgetting the rescale is the classic
bug that makes outputs orders of magnitude off. Matches transformers' `AutoBitLinear` in
online mode (`integrations/bitnet.py`), including where the epsilon clamps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5  # floor for the absmean/absmax scales, as in the reference implementations


def _ternary_levels(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels in {-1, 0, 1} as floats, inverse scale 1/mean|W|): weight ~= levels / scale."""
    scale = 1.0 / weight.abs().mean().clamp(min=EPS)
    return (weight * scale).round_().clamp_(-1, 1), scale


def _int8_levels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token levels in [-128, 127] as floats, scale 127/max|x|): x ~= levels / scale."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return (x * scale).round_().clamp_(-128, 127), scale


class _TernaryWeight(torch.autograd.Function):
    """Absmean ternary quantisation with a straight-through gradient."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        levels, scale = _ternary_levels(weight)
        return levels.div_(scale)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


class _Int8Activation(torch.autograd.Function):
    """Per-token absmax int8 quantisation with a straight-through gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        levels, scale = _int8_levels(x)
        return levels.div_(scale)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Ternary weight {-s, 0, +s} (s = mean|W|), differentiable straight through."""
    return _TernaryWeight.apply(weight)


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-token int8-grid activation, differentiable straight through."""
    return _Int8Activation.apply(x)


def ternary_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 codes in {-1, 0, 1} and the 0-dim inverse scale 1/mean|W| of `quantize_weight`.

    Bit for bit the training-time quantisation: quantize_weight(W) == codes / inv_scale.
    """
    levels, scale = _ternary_levels(weight.detach())
    return levels.to(torch.int8), scale


def activation_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token int8 codes and scales (127/max|x|, shape [..., 1]) of `quantize_activation`.

    Bit for bit the training-time quantisation: quantize_activation(x) == codes / scale.
    """
    levels, scale = _int8_levels(x.detach())
    return levels.to(torch.int8), scale


class BitLinear(nn.Linear):
    """Drop-in nn.Linear whose forward pass uses W1.58 weights and A8 activations.

    The parameter `weight` stays the fp32 latent weight the optimiser updates; the ternary
    weight exists only inside forward (and in exports).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, **kwargs) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantize_activation(x), quantize_weight(self.weight), self.bias)

    @torch.no_grad()
    def ternary_weight(self) -> tuple[torch.Tensor, float]:
        """The integer weights in {-1, 0, 1} (int8) and their scale s = 1 / (1/mean|W|): those
        of the forward pass (`ternary_codes`), ties included."""
        codes, inv_scale = ternary_codes(self.weight)
        return codes, float(1.0 / inv_scale)
