"""Wire formats of pseudo-gradients: fp16, int8 with a per-chunk scale, and their sizes."""

from __future__ import annotations

import pytest
import torch

from merge.compress import (
    CHUNK,
    COMPRESSIONS,
    decode,
    encode,
    payload_bytes,
    quantize_int8,
    round_trip,
)


@pytest.mark.parametrize("numel", [1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7])
@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_payload_size_is_what_encode_produces(kind, numel):
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    payload = encode(x, kind)
    assert payload.dtype == torch.uint8
    assert payload.numel() == payload_bytes(numel, kind)
    assert decode(payload, numel, kind).shape == (numel,)


def test_byte_counts_per_value():
    n = 100 * CHUNK
    assert payload_bytes(n, "none") == 4 * n
    assert payload_bytes(n, "fp16") == 2 * n
    assert payload_bytes(n, "int8") == n + 4 * 100  # one fp32 scale per chunk
    assert payload_bytes(CHUNK + 1, "int8") == CHUNK + 1 + 8  # a partial chunk has its scale


def test_none_is_lossless():
    x = torch.randn(3000) * 1e-3
    assert torch.equal(round_trip(x, "none"), x)


def test_fp16_relative_error_is_half_precision():
    x = torch.randn(4000, generator=torch.Generator().manual_seed(1)) * 0.01
    y = round_trip(x, "fp16")
    assert not torch.equal(x, y)  # it is lossy...
    normal = x.abs() > 2 ** -14  # ...within fp16's normal range by at most half an ulp
    rel = ((x - y).abs() / x.abs())[normal]
    assert rel.max().item() <= 2 ** -11


def test_int8_error_is_bounded_by_each_chunks_own_scale():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3 * CHUNK + 100, generator=g) * 1e-3
    x[5] = 10.0  # an outlier in chunk 0 must not coarsen the other chunks
    y = round_trip(x, "int8")
    for c in range(4):
        part = slice(c * CHUNK, (c + 1) * CHUNK)
        bound = x[part].abs().max().item() / 254
        assert (x[part] - y[part]).abs().max().item() <= bound * (1 + 1e-5)
    assert (x[CHUNK:] - y[CHUNK:]).abs().max().item() < 1e-4  # 1e-3 scale, not 10 / 127
    assert (x[:CHUNK] - y[:CHUNK]).abs().max().item() > 1e-3  # chunk 0 did pay for it
    assert y[5].item() == pytest.approx(10.0, rel=1e-6)  # the absmax is exact


def test_int8_codes_and_zero_chunks():
    x = torch.zeros(2 * CHUNK)
    x[CHUNK:] = torch.linspace(-1, 1, CHUNK)
    codes, scales = quantize_int8(x)
    assert codes.dtype == torch.int8 and codes.abs().max().item() == 127
    assert scales[0].item() == 0.0 and torch.equal(round_trip(x, "int8")[:CHUNK], x[:CHUNK])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown compression 'int4'"):
        encode(torch.zeros(3), "int4")
    with pytest.raises(ValueError, match="must be"):
        decode(torch.zeros(10, dtype=torch.uint8), 3, "int8")
