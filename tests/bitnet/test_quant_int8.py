"""BitLinear's int8 forward (torch._int_mm on int8 codes) vs the reference fake-quantised fp32
matmul: the same outputs, loss and straight-through gradients up to float rounding, the
reference kept where int8 does not apply, and bit-identical results run after run."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bitnet.infer import TernaryLinear
from bitnet.model import BitNetConfig, BitNetLM
from bitnet.quant import (
    BitLinear,
    _activation_int8,
    activation_codes,
    int8_matmul_applies,
    quantize_activation,
    quantize_weight,
)
from bitnet.torch_threads import num_threads

TINY = BitNetConfig(hidden_size=32, intermediate_size=88, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=24)


def _reference(layer: BitLinear) -> BitLinear:
    twin = copy.deepcopy(layer)
    twin.int8_matmul = False
    return twin


def _forward_backward(layer: BitLinear, x: torch.Tensor, upstream: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    (out * upstream).sum().backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    return out.detach(), grads


# (input shape, out features, bias): M = 1, odd K and N, K = N = 1, 3-D and 1-D inputs
AWKWARD = [((1, 1), 1, False), ((3, 5), 7, False), ((17, 9), 13, True), ((2, 11, 33), 6, False),
           ((40,), 24, True), ((5, 3, 96), 384, False), ((130, 7), 1, True)]


@pytest.mark.parametrize(("shape", "out_features", "bias"), AWKWARD)
def test_int8_path_matches_the_reference_forward_and_gradients(shape, out_features, bias):
    torch.manual_seed(0)
    layer = BitLinear(shape[-1], out_features, bias=bias)
    x = torch.randn(shape) * torch.rand(*shape[:-1], 1) * 3
    upstream = torch.randn(*shape[:-1], out_features)
    assert int8_matmul_applies(x, layer.weight)
    out, grads = _forward_backward(layer, x, upstream)
    ref_out, ref_grads = _forward_backward(_reference(layer), x, upstream)
    assert out.shape == ref_out.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    # with the same upstream gradient the straight-through gradients are the reference's
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-7)


def test_int8_output_is_the_exact_integer_product_rescaled_once():
    torch.manual_seed(1)
    layer = BitLinear(64, 48)
    x = torch.randn(20, 64)
    codes, scale = layer.ternary_weight()
    x_codes, x_scale = activation_codes(x)
    exact = (x_codes.double() @ codes.double().t()) * scale / x_scale.double()
    fake_quant = F.linear(quantize_activation(x).double(), quantize_weight(layer.weight).double())
    # the int8 path is at least as close to the exact value as the fp32 reference
    assert (layer(x).double() - exact).abs().max() <= 1e-6 * exact.abs().max()
    torch.testing.assert_close(fake_quant, exact, rtol=1e-6, atol=1e-6)
    # and bit for bit what generation computes (bitnet.infer)
    assert torch.equal(layer(x), TernaryLinear.from_bitlinears([layer])(x))


def test_activation_codes_of_the_int8_path_are_the_reference_codes():
    gen = torch.Generator().manual_seed(0)
    cases = [torch.randn(50, 70, generator=gen) * 10.0 ** e for e in range(-9, 10, 3)]
    cases += [torch.zeros(3, 8), torch.full((2, 5), -4.0), torch.rand(4, 9, generator=gen) * 1e-7]
    peak = torch.rand(20000, generator=gen) * 1e6 + 1e-6  # each row's max, and values near it
    near = [peak, -peak * (1 - 1e-7), peak * torch.rand(20000, generator=gen)]
    cases.append(torch.stack(near, dim=1))
    for x in cases:
        codes, scale = _activation_int8(x)
        ref_codes, ref_scale = activation_codes(x)
        assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)


@pytest.mark.parametrize("case", ["no grad", "float64", "empty", "autocast", "meta", "off"])
def test_the_reference_path_where_int8_does_not_apply(case):
    torch.manual_seed(0)
    dtype = torch.float64 if case == "float64" else torch.float32
    device = "meta" if case == "meta" else "cpu"
    layer = BitLinear(16, 8, dtype=dtype, device=device)
    x = torch.randn(0 if case == "empty" else 4, 16, dtype=dtype, device=device)
    layer.int8_matmul = case != "off"
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not int8_matmul_applies(x, layer.weight)
            assert layer(x).dtype == torch.bfloat16  # autocast's F.linear, as before
        return
    # without grad (evaluation, scoring): the reference, so logits stay transformers' exactly
    with torch.set_grad_enabled(case != "no grad"):
        if case != "off":
            assert not int8_matmul_applies(x, layer.weight)
        if case == "meta":  # (a forward on meta tensors first loads torch's meta kernels: ~8 s)
            return
        out = layer(x)
        assert out.shape == (x.shape[0], 8)
        assert torch.equal(out, layer.reference_forward(x))


def test_non_finite_inputs_stay_non_finite():
    layer = BitLinear(8, 4)
    x = torch.randn(3, 8)
    x[1, 2] = float("nan")
    x[2, 5] = float("inf")
    out = layer(x)
    assert torch.isfinite(out[0]).all() and not torch.isfinite(out[1:]).any()
    layer.weight.data[0, 0] = float("nan")
    assert not torch.isfinite(layer(torch.randn(3, 8))).any()


def _loss_and_grads(model: BitNetLM, ids: torch.Tensor):
    _, loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def test_a_model_gets_the_reference_loss_and_gradients():
    torch.manual_seed(0)
    model = BitNetLM(TINY)
    ids = torch.randint(0, TINY.vocab_size, (6, TINY.max_position_embeddings + 1))
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, BitLinear):
            module.int8_matmul = False
    loss, grads = _loss_and_grads(model, ids)
    ref_loss, ref_grads = _loss_and_grads(reference, ids)
    assert loss != pytest.approx(0) and abs(loss - ref_loss) <= 1e-5 * ref_loss
    for name, ref_grad in ref_grads.items():
        # a last-bit difference may move a downstream activation by one int8 step now and
        # then (as it does between training and generation), so compare whole tensors
        error = (grads[name] - ref_grad).norm() / ref_grad.norm()
        assert error < 1e-3, f"{name}: relative gradient difference {error:.2e}"


def _train(seed: int, steps: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = BitNetLM(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, TINY.vocab_size, (4, TINY.max_position_embeddings + 1),
                            generator=gen)
        _, loss = model(ids[:, :-1], ids[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {name: t.clone() for name, t in model.state_dict().items()}


def test_training_is_bit_identical_run_after_run():
    with num_threads(1):  # the scorer's and replays' thread count
        first, second, other = _train(3), _train(3), _train(4)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_integer_products_are_exact_at_any_thread_count(threads):
    # (the layer's output still depends on the thread count through mean|W|, an fp32 sum, as the
    # reference's does: runs are bit-identical at a given count, as the scorer fixes it)
    gen = torch.Generator().manual_seed(threads)
    x_codes = torch.randint(-128, 128, (300, 512), dtype=torch.int8, generator=gen)
    x_codes[0] = -128  # the extremes, in every column
    x_codes[1] = 127
    w_codes = torch.randint(-1, 2, (320, 512), dtype=torch.int8, generator=gen)
    w_codes[:2] = -1
    exact = x_codes.long() @ w_codes.long().t()
    with num_threads(threads):
        assert torch.equal(torch._int_mm(x_codes, w_codes.t()).long(), exact)
