"""Export a checkpoint as a GGUF file for llama.cpp's `bitnet` architecture, and check it.

Tensors, in llama.cpp's names (`LLM_ARCH_BITNET`, src/models/bitnet.cpp):
    token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_sub_norm, attn_output, ffn_norm,
    ffn_gate, ffn_up, ffn_sub_norm, ffn_down}, output_norm, and `blk.N.<projection>.scale` for
    each ternary projection: llama.cpp multiplies that matmul's result by it
    (`build_lora_mm(w, x, w_s)`). `output` only for an untied lm_head (see below).

Types:
    TQ2_0  ternary projections whose rows (in_features) are a multiple of 256 (the TQ2_0 block).
           The stored values are the integers {-1, 0, 1}: every block's fp16 `d` is 1 (0 for an
           all-zero block), so they are exact. The per-tensor scale lives in the F32 `.scale`
           tensor because the fp16 `d` cannot hold our fp32 scale exactly.
    F16    ternary projections with other row lengths: {-1, 0, 1} is exact in F16 at half the
           bytes of F32 (llama.cpp has no matmul for I8 weights); scale in `.scale` again.
    F32    everything kept in full precision (embedding/lm_head, RMSNorm weights, the scales):
           the checkpoint stores them as fp32.
De-quantised ternary tensor x scale == `bitnet.quant.quantize_weight(latent)` bit for bit, and the
F32 tensors equal the checkpoint's; `check_gguf` verifies both by reading the file back.

What llama.cpp computes from this file differs from our model (`llamacpp_differences`):
  - FFN activation: llama.cpp's bitnet graph gates with SiLU (silu(gate) * up), ours with squared
    ReLU. We write `bitnet.hidden_activation = "relu2"` (the key upstream's bitnet graph reads),
    but llama.cpp maps no string to gated relu^2, so it falls back to SiLU; the 0.3.36 build here
    ignores the key. Not expressible today: the logits differ at the level of the model itself.
  - lm_head: the graph computes logits with `token_embd` (weights tied). An untied lm_head is
    written as `output.weight`, so the file is complete, but llama.cpp then refuses it ("wrong
    number of tensors").
  - Activation quantisation: TQ2_0 matmuls quantise activations to Q8_K, absmax int8 per
    256-block (ours: per token over the whole row). Identical grid when the row is 256 long;
    finer for longer rows (e.g. down_proj's input). F16 weights see fp16 activations, no int8.
  - KV cache: F16 by default in llama.cpp (ours fp32); pass type_k=type_v=F32 to compare.
RoPE (rotate-half = llama.cpp's NEOX type, which its bitnet arch uses), GQA, SubLN placement,
RMSNorm eps, and attention scale 1/sqrt(head_dim) are the same. `llamacpp_graph_logits` runs our
model with llama.cpp's semantics; llama.cpp's logits match it to float rounding.

Vocabulary: our 256 byte ids as a `gpt2` (byte-level BPE) vocabulary: token i is GPT-2's printable
stand-in for byte i, plus one merge that can never apply (llama.cpp needs a merges array, gguf
refuses an empty one), so llama.cpp's tokenizer maps UTF-8 text to exactly our ids and back.
llama.cpp's gpt2 defaults make id 11 (byte 0x0B) BOS/EOS; BOS is not added.
"""

from __future__ import annotations

import copy
import os
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import gguf
import numpy as np
import torch
import torch.nn.functional as F

from bitnet.checkpoint import CheckpointError, load_checkpoint
from bitnet.model import BitNetConfig, BitNetLM, BitNetMLP
from bitnet.quant import BitLinear, quantize_activation, quantize_weight, ternary_codes

ARCH = "bitnet"
QK_K = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.TQ2_0][0]  # 256
HIDDEN_ACT = "relu2"  # `bitnet.hidden_activation`, as in HF's config; see the module docstring
DEAD_MERGE = "\u0100\u0100 \u0100\u0100"  # two 2-char symbols no merge creates: never applies

_F32 = gguf.GGMLQuantizationType.F32
_F16 = gguf.GGMLQuantizationType.F16
_TQ2 = gguf.GGMLQuantizationType.TQ2_0
_ATTN = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
_MLP = {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}

TensorRow = tuple[str, str, tuple]  # (GGUF tensor name, GGUF type name, shape in PyTorch order)


class GGUFCheckError(ValueError):
    """The file read back does not hold exactly the checkpoint's tensors."""


def ternary_and_scale(layer: BitLinear) -> tuple[np.ndarray, np.float32]:
    """The {-1, 0, 1} integers t and fp32 scale s with t * s == quantize_weight(W) exactly.

    The forward pass's own quantisation (bitnet.quant): its weight is codes / inv_scale, and
    1 / inv_scale rounds to the same float32 as that division does for a code of 1.
    """
    codes, inv_scale = ternary_codes(layer.weight.float())
    scale = (1.0 / inv_scale).to(torch.float32)
    if not torch.equal(codes * scale, quantize_weight(layer.weight.float()).detach()):
        raise ValueError(f"weight of shape {tuple(codes.shape)} is not codes * scale")
    return codes.numpy(), np.float32(scale.item())


def ternary_type(in_features: int) -> gguf.GGMLQuantizationType:
    return _TQ2 if in_features % QK_K == 0 else _F16


def byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode table: token i is the printable character standing for byte i."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    tokens, extra = [], 0
    for b in range(256):
        if b in printable:
            tokens.append(chr(b))
        else:
            tokens.append(chr(256 + extra))
            extra += 1
    return tokens


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def _named_tensors(model: BitNetLM) -> Iterator[tuple[str, torch.Tensor | BitLinear]]:
    """(GGUF name without suffix, full-precision tensor or BitLinear), in llama.cpp's order."""
    inner = model.model
    yield "token_embd.weight", inner.embed_tokens.weight
    for i, layer in enumerate(inner.layers):
        blk = f"blk.{i}"
        yield f"{blk}.attn_norm.weight", layer.input_layernorm.weight
        for attr, name in _ATTN.items():
            yield f"{blk}.{name}", getattr(layer.self_attn, attr)
        yield f"{blk}.attn_sub_norm.weight", layer.self_attn.attn_sub_norm.weight
        yield f"{blk}.ffn_norm.weight", layer.post_attention_layernorm.weight
        for attr, name in _MLP.items():
            yield f"{blk}.{name}", getattr(layer.mlp, attr)
        yield f"{blk}.ffn_sub_norm.weight", layer.mlp.ffn_sub_norm.weight
    yield "output_norm.weight", inner.norm.weight
    if not model.config.tie_word_embeddings:
        yield "output.weight", model.lm_head.weight


def _tensors(model: BitNetLM) -> list[tuple[str, np.ndarray, gguf.GGMLQuantizationType]]:
    """(name, data ready for GGUFWriter, type) for every tensor."""
    out = []
    for name, item in _named_tensors(model):
        if not isinstance(item, BitLinear):
            out.append((name, _f32(item), _F32))
            continue
        values, scale = ternary_and_scale(item)
        qtype = ternary_type(values.shape[1])
        if qtype == _TQ2:
            data = gguf.quants.quantize(values.astype(np.float32), _TQ2)
        else:
            data = values.astype(np.float16)
        out.append((name + ".weight", data, qtype))
        out.append((name + ".scale", np.array([scale], dtype=np.float32), _F32))
    return out


def _shape(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple:
    if qtype == _TQ2:
        return tuple(int(n) for n in gguf.quants.quant_shape_from_byte_shape(data.shape, qtype))
    return tuple(int(n) for n in data.shape)


def _check_expressible(config: BitNetConfig) -> None:
    if config.vocab_size != 256:
        raise CheckpointError(
            f"vocab_size {config.vocab_size}: the GGUF export writes the 256-byte vocabulary only"
        )


def _add_metadata(writer: gguf.GGUFWriter, config: BitNetConfig, name: str) -> None:
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_TQ2_0)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_string(f"{ARCH}.hidden_activation", HIDDEN_ACT)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(byte_tokens())
    writer.add_token_types([gguf.TokenType.NORMAL] * config.vocab_size)
    writer.add_token_merges([DEAD_MERGE])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def export_gguf(checkpoint_dir: Path, out_path: Path, *, verify: bool = True) -> list[TensorRow]:
    """Write `out_path` (GGUF, arch `bitnet`) from a checkpoint directory; return its table.

    Rows are (tensor name, GGUF type name, shape in PyTorch order). The file is written to a
    temporary name and renamed, and (with `verify`) read back and checked by `check_gguf` first.
    A missing or corrupt checkpoint raises `CheckpointError`; a failed check `GGUFCheckError`.
    """
    model = load_checkpoint(checkpoint_dir)
    _check_expressible(model.config)
    tensors = _tensors(model)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), ARCH)
    _add_metadata(writer, model.config, Path(checkpoint_dir).resolve().name or ARCH)
    for name, data, qtype in tensors:
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    try:
        if verify:
            check_gguf(tmp, model)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return [(name, qtype.name, _shape(data, qtype)) for name, data, qtype in tensors]


def check_gguf(path: Path, model: BitNetLM) -> int:
    """Read `path` back with gguf.GGUFReader and check every tensor against `model` exactly.

    Ternary tensors: dequantize(weight) * scale == quantize_weight(latent), element for element;
    full-precision ones equal the checkpoint's fp32 values. Returns the number of tensors checked.
    """
    reader = gguf.GGUFReader(str(path))
    found = {t.name: t for t in reader.tensors}
    expected = dict(_named_tensors(model))
    names = {n + ".weight" for n, v in expected.items() if isinstance(v, BitLinear)}
    names |= {n + ".scale" for n, v in expected.items() if isinstance(v, BitLinear)}
    names |= {n for n, v in expected.items() if not isinstance(v, BitLinear)}
    if set(found) != names:
        raise GGUFCheckError(
            f"{path}: tensors differ from the model: missing {sorted(names - set(found))}, "
            f"unexpected {sorted(set(found) - names)}"
        )
    for name, item in expected.items():
        if isinstance(item, BitLinear):
            weight, scale = found[name + ".weight"], found[name + ".scale"]
            if weight.tensor_type != ternary_type(item.in_features):
                raise GGUFCheckError(f"{path}: {name}.weight is {weight.tensor_type.name}")
            values = gguf.quants.dequantize(weight.data, weight.tensor_type).astype(np.float32)
            if not np.isin(values, (-1.0, 0.0, 1.0)).all():
                raise GGUFCheckError(f"{path}: {name}.weight holds values outside {{-1, 0, 1}}")
            got = values * np.asarray(scale.data, dtype=np.float32).reshape(())
            with torch.no_grad():
                want = quantize_weight(item.weight.float()).numpy()
        else:
            got, want = np.asarray(found[name].data), _f32(item)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise GGUFCheckError(f"{path}: {name} does not equal the model's tensor exactly")
    return len(found)


def llamacpp_differences(config: BitNetConfig) -> list[str]:
    """How llama.cpp's bitnet graph, given this export, computes differently from our model."""
    notes = [
        "FFN: llama.cpp gates with SiLU (silu(gate) * up); ours is relu(gate)^2 * up "
        f"(`{ARCH}.hidden_activation={HIDDEN_ACT}` is written but llama.cpp has no gated relu^2)",
        "KV cache: llama.cpp's default is F16 (ours fp32)",
    ]
    if not config.tie_word_embeddings:
        notes.insert(
            0,
            "lm_head is untied: written as output.weight, which llama.cpp's bitnet "
            "graph has no slot for (it refuses the file; logits come from token_embd)",
        )
    for name, rows in (("q/k/v/o/gate/up", config.hidden_size), ("down", config.intermediate_size)):
        if rows % QK_K:
            notes.append(
                f"{name}: rows of {rows} are F16, so activations are rounded to fp16 "
                "instead of per-token int8"
            )
        elif rows > QK_K:
            notes.append(
                f"{name}: activations are int8 per 256-block (Q8_K), ours per token over all {rows}"
            )
    return notes


def _q8k_or_f16(x: torch.Tensor) -> torch.Tensor:
    """The activation a llama.cpp CPU matmul sees: Q8_K blocks (TQ2_0) or fp16 (F16 weights)."""
    if x.shape[-1] % QK_K:
        return x.half().float()
    return quantize_activation(x.unflatten(-1, (-1, QK_K))).flatten(-2)


def _llamacpp_bitlinear(self: BitLinear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(_q8k_or_f16(x), quantize_weight(self.weight), self.bias)


def _silu_mlp(self: BitNetMLP, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(self.ffn_sub_norm(F.silu(self.gate_proj(x)) * self.up_proj(x)))


def _llamacpp_twin(model: BitNetLM) -> BitNetLM:
    """A copy of `model` whose projections and FFNs compute the way llama.cpp's do."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, BitLinear):
            module.forward = types.MethodType(_llamacpp_bitlinear, module)
        elif isinstance(module, BitNetMLP):
            module.forward = types.MethodType(_silu_mlp, module)
    return twin


@torch.no_grad()
def llamacpp_graph_logits(model: BitNetLM, ids: Sequence[int]) -> np.ndarray:
    """Our model's logits computed the way llama.cpp's bitnet graph computes them from the export:
    SiLU-gated FFN and llama.cpp's activation quantisation (lm_head as in the model)."""
    logits, _ = _llamacpp_twin(model)(torch.tensor([list(ids)]))
    return logits[0].numpy()


def llamacpp_logits(
    gguf_path: Path, ids: Sequence[int], *, f32_kv: bool = True, n_threads: int = 1
) -> np.ndarray:
    """Next-token logits at every position from llama.cpp (llama-cpp-python), token ids fed
    directly. `f32_kv` stores the KV cache in F32 (llama.cpp's default is F16)."""
    import llama_cpp  # optional: only this check needs it

    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_kv else {}
    llm = llama_cpp.Llama(
        str(gguf_path),
        n_ctx=max(len(ids), 1),
        n_threads=n_threads,
        n_threads_batch=n_threads,
        logits_all=True,
        verbose=False,
        flash_attn=False,
        **kv,
    )
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def format_table(rows: Sequence[TensorRow]) -> str:
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}}  {qtype:<5}  {list(shape)}" for name, qtype, shape in rows)
