"""BitNet b1.58 quantisers and the BitLinear layer.

Weights: per-tensor absmean ternary, W_q = s * clip(round(W / s), -1, 1) with s = mean|W|.
Activations: per-token absmax int8, x_q = clip(round(x * 127 / max|x|), -128, 127) * max|x| / 127.
Both quantisers are straight-through: their backward pass is the identity, so the fp32 latent
weight receives exactly the gradient taken with respect to the quantised weight.

The quantised tensors are rescaled back ("fake quantisation"), so a BitLinear's output is on the
same scale as an nn.Linear with the same latent weights; forgetting the rescale is the classic
bug that makes outputs orders of magnitude off. Matches transformers' `AutoBitLinear` in
online mode (`integrations/bitnet.py`), including where the epsilon clamps.

A training step's forward (autograd recording) runs on integers (`_Int8Linear`, below): the
per-token int8 activation codes times the ternary weight codes with `torch._int_mm` (int8 x int8
-> int32, exact), rescaled once, y = (x_codes @ W_codes^T) / (x_scale * w_inv_scale). The integer
sums are exact where the fake-quantised fp32 matmul rounds its partial sums, so the two differ by
float rounding only (and the int8 outputs are bit for bit those of `bitnet.infer`'s generation,
which computes the same expression). Its backward is the reference's straight-through one, from
the int8 codes and scales saved in the forward pass (a quarter of the fp32 copies the reference
keeps): grad_x = grad_y @ W_q and grad_W = grad_y^T @ x_q, with W_q and x_q dequantised bit for
bit as `quantize_weight` and `quantize_activation` give them. Measured in bench/bitnet_train.py
(one thread): a step 0.99x the dense twin's at the template's size and 0.84-0.90x at the 10 M and
50 M presets, where the reference's is 1.02-1.12x; 20-33% less kept for the backward. Without grad
(evaluation, scoring, generation's references) the fake-quantised matmul runs, so evaluated
logits stay bit for bit transformers' (`int8_matmul_applies` is the rule).
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


def _activation_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`activation_codes` of a 2-D float tensor, bit for bit, in fewer passes over it.

    max|x| as max(max x, -min x) (the same number, without an |x| copy), and no clip to
    [-128, 127]: with scale = fl(127 / m) and |x| <= m, |x * scale| <= 127 (1 + 2^-24)^2 < 127.5,
    so the rounded levels already lie in [-127, 127] (a row holding NaN or inf gets a NaN or zero
    scale, and the output row divided by it is NaN or inf, as the reference's would be).
    """
    absmax = torch.maximum(x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True).neg_())
    scale = 127.0 / absmax.clamp_(min=EPS)
    return (x * scale).round_().to(torch.int8), scale


class _Int8Linear(torch.autograd.Function):
    """F.linear(quantize_activation(x), quantize_weight(weight), bias) on int8 codes.

    x is [M, in] (callers flatten leading dimensions), weight [out, in]. Forward: one exact
    int8 x int8 -> int32 matmul and one rescale. Backward: the reference's straight-through
    gradients, computed as autograd computes them for F.linear's matmul (grad_y @ W_q and
    grad_y^T @ x_q, the same calls), from the saved int8 codes and scales.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        x_codes, x_scale = _activation_int8(x.detach())
        w_levels, w_scale = _ternary_levels(weight.detach())
        w_codes = w_levels.to(torch.int8)
        del w_levels
        out = torch._int_mm(x_codes, w_codes.t()).float().div_(x_scale * w_scale)
        if bias is not None:
            out.add_(bias)
        ctx.save_for_backward(x_codes, x_scale, w_codes, w_scale)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x_codes, x_scale, w_codes, w_scale = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out.mm(w_codes.float().div_(w_scale))
        if ctx.needs_input_grad[1]:
            grad_w = grad_out.t().mm(x_codes.float().div_(x_scale))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b


def int8_matmul_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether BitLinear computes this input on integers (`_Int8Linear`) rather than with the
    fake-quantised fp32 matmul: when autograd records the call (a training step), on float32
    CPU tensors (where torch._int_mm takes any shape, M = 1 included), outside autocast (which
    asks for a lower-precision F.linear), nonempty.

    Without grad (evaluation, the scorer, comparisons with transformers' BitNet) the reference
    runs, so evaluated logits stay bit for bit those of transformers and of earlier versions;
    a training step's forward differs from them by float rounding only. The rule reads grad
    mode, dtypes, devices, shapes and the autocast state, never timings, so the same inputs
    always take the same path (claims replay bit for bit)."""
    return (
        torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dim() >= 1
        and x.numel() > 0
        and weight.numel() > 0
        and not torch.is_autocast_enabled("cpu")
    )


def int8_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """F.linear(quantize_activation(x), quantize_weight(weight), bias) computed on int8 codes
    (`_Int8Linear`), for x of any leading shape: BitLinear's training forward pass, and the
    template's."""
    out = _Int8Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


class BitLinear(nn.Linear):
    """Drop-in nn.Linear whose forward pass uses W1.58 weights and A8 activations.

    The parameter `weight` stays the fp32 latent weight the optimiser updates; the ternary
    weight exists only inside forward (and in exports).

    `int8_matmul` (default True) runs the training forward pass on int8 codes (`_Int8Linear`)
    wherever `int8_matmul_applies`; False (on an instance, or the class) keeps the reference
    fake-quantised fp32 matmul everywhere. Both give the same values up to float rounding.
    """

    int8_matmul: bool = True

    def __init__(self, in_features: int, out_features: int, bias: bool = False, **kwargs) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8_matmul and int8_matmul_applies(x, self.weight):
            return int8_linear(x, self.weight, self.bias)
        return self.reference_forward(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantised fp32 forward pass: the definition the int8 path reproduces."""
        return F.linear(quantize_activation(x), quantize_weight(self.weight), self.bias)

    @torch.no_grad()
    def ternary_weight(self) -> tuple[torch.Tensor, float]:
        """The integer weights in {-1, 0, 1} (int8) and their scale s = 1 / (1/mean|W|): those
        of the forward pass (`ternary_codes`), ties included."""
        codes, inv_scale = ternary_codes(self.weight)
        return codes, float(1.0 / inv_scale)
