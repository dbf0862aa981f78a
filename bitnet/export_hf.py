"""Export a checkpoint as a packed-ternary Hugging Face directory (offline BitNet quantisation).

The layout is the one transformers' BitNet integration reads for the published
microsoft/bitnet-b1.58-2B-4T (`quantization_config: {quant_method: bitnet, linear_class:
bitlinear, quantization_mode: offline}`, `integrations/bitnet.py`). Every BitLinear becomes
    <layer>.weight        uint8 [out/4, in]: the ternary codes t + 1 in {0, 1, 2}, 2 bits each;
                          packed row r holds weight rows r, r + out/4, r + 2·out/4, r + 3·out/4
                          in bits 0-1, 2-3, 4-5, 6-7 (transformers' `pack_weights`)
    <layer>.weight_scale  float32 [1]: s = 1/mean|W|, the factor W was multiplied by before
                          rounding; transformers computes y = (x_int8 @ t^T) / (x_scale * s)
Embeddings, norms and lm_head keep the checkpoint's fp32 values. The checkpoint's tokenizer
(bitnet.tokenizer: the byte tokenizer when it carries none, a trained BPE's merges otherwise) is
written next to them, so `AutoTokenizer.from_pretrained(out)` encodes text to the model's ids.

Logits are equal to our model's up to float32 rounding, not bit for bit: our BitLinear
multiplies rescaled (fake-quantised) values, x_q/x_scale @ (t/s)^T, while transformers'
BitLinear sums the integers exactly and divides once. The two roundings differ in the last
bits, and a downstream int8 activation quantiser can turn such a difference into one whole
int8 step when a value sits on a rounding boundary (see tests/bitnet/test_export_hf.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bitnet.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    hf_config,
    load_checkpoint,
)
from bitnet.model import BitNetLM
from bitnet.quant import BitLinear, ternary_codes
from bitnet.tokenizer import TextTokenizer, load_tokenizer

# What the published packed BitNet checkpoints declare; transformers then builds BitLinear
# layers holding uint8 codes and a weight_scale (lm_head is left alone by default).
OFFLINE_QUANTIZATION = {
    "quant_method": "bitnet",
    "linear_class": "bitlinear",
    "quantization_mode": "offline",
}


CODES_PER_BYTE = 4  # ternary codes in a packed byte (transformers' VALUES_PER_ITEM)


class ExportError(ValueError):
    """A model that cannot be written in the requested format; the message says why."""


@torch.no_grad()
def pack_ternary(layer: BitLinear, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A BitLinear's packed uint8 codes and its weight_scale (1/mean|W|, float32 [1])."""
    # transformers is imported here, on use: ~4 s that importing this module need not cost
    from transformers.integrations.bitnet import VALUES_PER_ITEM, pack_weights

    out_features = layer.weight.shape[0]
    if out_features % VALUES_PER_ITEM:
        raise ExportError(
            f"{name} has {out_features} output rows, not a multiple of {VALUES_PER_ITEM}: "
            f"transformers' packed BitLinear holds out/{VALUES_PER_ITEM} rows of "
            f"{VALUES_PER_ITEM} codes; choose widths and head counts that are multiples of 4"
        )
    # the forward pass's own quantisation (bitnet.quant), so ties round exactly as in training
    codes, inv_scale = ternary_codes(layer.weight)
    scale = inv_scale.reshape(1).to(torch.float32)  # transformers divides by it
    return pack_weights(codes), scale  # pack_weights adds 1 in place: codes is ours to lose


def packed_state_dict(model: BitNetLM) -> dict[str, torch.Tensor]:
    """The model's tensors with every BitLinear weight replaced by its codes and scale."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")  # as in save_checkpoint: HF re-ties it on load
    for name, module in model.named_modules():
        if isinstance(module, BitLinear):
            state[f"{name}.weight"], state[f"{name}.weight_scale"] = pack_ternary(module, name)
    return state


def checkpoint_tokenizer(checkpoint_dir: str | os.PathLike, vocab_size: int) -> TextTokenizer:
    """The tokenizer a checkpoint carries (bytes when none), which must have its config's
    vocab_size; CheckpointError (one line) otherwise. What both exports write."""
    try:
        tokenizer = load_tokenizer(checkpoint_dir)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    if tokenizer.vocab_size != vocab_size:
        raise CheckpointError(
            f"{Path(checkpoint_dir) / CONFIG_FILE}: vocab_size {vocab_size} is not its tokenizer's"
            f" {tokenizer.vocab_size} ({tokenizer.spec}): save the checkpoint with the tokenizer"
            " it was trained with")
    return tokenizer


def export_hf(checkpoint_dir: Path, out_dir: Path) -> Path:
    """Write `checkpoint_dir` to `out_dir` as a packed-ternary BitNetForCausalLM + tokenizer.

    Raises CheckpointError for a missing/partial/corrupt checkpoint and ExportError for a model
    the packed layout cannot hold. Each file is written atomically; config.json comes last.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if out_dir.resolve() == checkpoint_dir.resolve():
        raise ExportError(f"{out_dir} is the checkpoint itself: export to another directory")
    model = load_checkpoint(checkpoint_dir)
    tokenizer = checkpoint_tokenizer(checkpoint_dir, model.config.vocab_size)
    state = packed_state_dict(model)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out_dir / WEIGHTS_FILE)
    tokenizer.save(out_dir, model_max_length=model.config.max_position_embeddings)
    config = (hf_config(model.config, tokenizer=tokenizer)
              | {"quantization_config": OFFLINE_QUANTIZATION})
    tmp = out_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, out_dir / CONFIG_FILE)
    return out_dir


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors' name, e.g. "U8", "F32"
    shape: tuple[int, ...]
    nbytes: int
    ternary: bool  # packed codes or their scale


@dataclass(frozen=True)
class HfExportSummary:
    """What an exported directory holds on disk, read back from its model.safetensors."""

    tensors: list[TensorEntry]
    ternary_params: int  # weights the packed codes stand for (4 per byte)
    ternary_bytes: int  # packed codes + scales

    @property
    def bytes_per_param(self) -> float:
        """Bytes on disk per ternary weight: 0.25 for the 2-bit codes + the per-tensor scales."""
        return self.ternary_bytes / self.ternary_params

    def table(self) -> str:
        lines = [f"{'tensor':<44} {'dtype':<5} {'shape':<14} {'bytes':>10}"]
        for t in self.tensors:
            shape = "x".join(map(str, t.shape))
            lines.append(f"{t.name:<44} {t.dtype:<5} {shape:<14} {t.nbytes:>10}")
        lines.append(
            f"ternary layers: {self.ternary_params} weights in {self.ternary_bytes} bytes = "
            f"{self.bytes_per_param:.4f} bytes/param"
        )
        return "\n".join(lines)


_DTYPE_BYTES = {"U8": 1, "I8": 1, "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8}


def summarize_hf_export(out_dir: Path) -> HfExportSummary:
    """The tensor table and ternary bytes/param of a directory written by `export_hf`."""
    tensors, params, nbytes = [], 0, 0
    with safe_open(str(Path(out_dir) / WEIGHTS_FILE), framework="pt") as f:
        names = sorted(f.keys())
        scaled = {n.removesuffix(".weight_scale") for n in names if n.endswith(".weight_scale")}
        for name in names:
            piece = f.get_slice(name)
            dtype, shape = piece.get_dtype(), tuple(piece.get_shape())
            size = _DTYPE_BYTES[dtype] * int(torch.Size(shape).numel())
            ternary = name.rsplit(".", 1)[0] in scaled
            if ternary:
                nbytes += size
                if name.endswith(".weight"):
                    params += size * CODES_PER_BYTE
            tensors.append(TensorEntry(name, dtype, shape, size, ternary))
    return HfExportSummary(tensors, params, nbytes)
