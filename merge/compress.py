"""Compressing pseudo-gradients for the wire: fp16, or int8 with one fp32 scale per chunk.

A worker's pseudo-gradient is one flat fp32 vector (all parameters, in `named_parameters`
order). `encode` turns it into a flat uint8 payload (what is sent), `decode` back into fp32:

  none  4 bytes a value (the fp32 bits, lossless)
  fp16  2 bytes a value (IEEE half: relative error <= 2**-11 within fp16's range)
  int8  1 byte a value + 4 bytes per chunk of CHUNK values: a chunk's scale is its absmax / 127,
        each value is round(x / scale), so |x - decoded| <= scale / 2 = absmax_chunk / 254.
        A per-chunk (not per-tensor) scale keeps one large value from flattening a whole tensor.

`payload_bytes(numel, kind)` is the size of an encoded vector without encoding it: the bytes a
worker sends per outer step, which is how communication is counted everywhere in merge/.
"""

from __future__ import annotations

import torch

from merge.method_names import COMPRESSIONS

CHUNK = 1024  # values sharing one int8 scale: 4 bytes of scale per KiB of codes (0.4%)
_INT8_MAX = 127  # symmetric range: -127..127, so negating a value never overflows


def check_kind(kind: str) -> str:
    if kind not in COMPRESSIONS:
        raise ValueError(f"unknown compression {kind!r}: use one of {', '.join(COMPRESSIONS)}")
    return kind


def payload_bytes(numel: int, kind: str, chunk: int = CHUNK) -> int:
    """Bytes of `encode` output for a vector of `numel` values."""
    check_kind(kind)
    if kind == "none":
        return 4 * numel
    if kind == "fp16":
        return 2 * numel
    return numel + 4 * -(-numel // chunk)


def quantize_int8(flat: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes of `flat`, fp32 scale of each chunk of `chunk` values)."""
    flat = flat.detach().float().reshape(-1)
    n_chunks = -(-flat.numel() // chunk)
    padded = torch.zeros(n_chunks * chunk)
    padded[: flat.numel()] = flat
    blocks = padded.view(n_chunks, chunk)
    scales = blocks.abs().amax(dim=1) / _INT8_MAX
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero chunk: codes 0
    codes = torch.round(blocks / safe[:, None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return codes.reshape(-1)[: flat.numel()], scales


def dequantize_int8(codes: torch.Tensor, scales: torch.Tensor, chunk: int = CHUNK
                    ) -> torch.Tensor:
    """Inverse of `quantize_int8` (up to its rounding): fp32 values."""
    n = codes.numel()
    padded = torch.zeros(scales.numel() * chunk)
    padded[:n] = codes.float()
    return (padded.view(-1, chunk) * scales[:, None]).reshape(-1)[:n]


def encode(flat: torch.Tensor, kind: str, chunk: int = CHUNK) -> torch.Tensor:
    """A flat fp32 vector as a uint8 payload of `payload_bytes(flat.numel(), kind)` bytes."""
    check_kind(kind)
    flat = flat.detach().float().reshape(-1)
    if kind == "none":
        return flat.clone().view(torch.uint8)
    if kind == "fp16":
        return flat.half().view(torch.uint8)
    codes, scales = quantize_int8(flat, chunk)
    return torch.cat([codes.view(torch.uint8), scales.view(torch.uint8)])


def decode(payload: torch.Tensor, numel: int, kind: str, chunk: int = CHUNK) -> torch.Tensor:
    """The fp32 vector of `numel` values an `encode` payload holds."""
    expected = payload_bytes(numel, kind, chunk)
    if payload.numel() != expected or payload.dtype != torch.uint8:
        raise ValueError(f"{kind} payload of {numel} values must be {expected} uint8 bytes, "
                         f"got {payload.numel()} {payload.dtype}")
    if kind == "none":
        return payload.clone().view(torch.float32)
    if kind == "fp16":
        return payload.clone().view(torch.float16).float()
    codes = payload[:numel].clone().view(torch.int8)
    scales = payload[numel:].clone().view(torch.float32)
    return dequantize_int8(codes, scales, chunk)


def round_trip(flat: torch.Tensor, kind: str, chunk: int = CHUNK) -> torch.Tensor:
    """What the receivers see of `flat`: decode(encode(flat))."""
    return decode(encode(flat, kind, chunk), flat.numel(), kind, chunk)
