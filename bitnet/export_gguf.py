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

What llama.cpp computes from this file (`llamacpp_blockers`, `llamacpp_differences`):
  - FFN activation: llama.cpp's bitnet graph gates with SiLU (silu(gate) * up). We write
    `bitnet.hidden_activation` = the model's `hidden_act` (the key upstream's graph reads: "silu"
    maps to SiLU, "relu2" to nothing, so it falls back to SiLU; older builds ignore the key). A
    relu2 model is therefore not computable there: its logits differ at the level of the model.
  - lm_head: the graph computes logits with `token_embd` (weights tied). An untied lm_head is
    written as `output.weight`, so the file is complete, but llama.cpp then refuses it ("wrong
    number of tensors"). Not computable either.
  A model with hidden_act "silu" and a tied lm_head (the template's FFN_ACT / TIE_EMBEDDINGS) is
  computed as trained, up to rounding:
  - Activation quantisation: TQ2_0 matmuls quantise activations to Q8_K, absmax int8 per
    256-block (ours: per token over the whole row). Identical grid when the row is 256 long;
    finer for longer rows (e.g. down_proj's input). F16 weights see fp16 activations, no int8.
  - KV cache: F16 by default in llama.cpp (ours fp32); bitnet.llamacpp asks for F32.
RoPE (rotate-half = llama.cpp's NEOX type, which its bitnet arch uses), GQA, SubLN placement,
RMSNorm eps, and attention scale 1/sqrt(head_dim) are the same. `llamacpp_graph_logits` runs our
model with llama.cpp's semantics; llama.cpp's logits match it to float rounding, and its bits
per byte on the validation windows match our evaluator's (bitnet.llamacpp, tests/bitnet/
test_llamacpp_parity.py).

Vocabulary: the checkpoint's tokenizer (bitnet.tokenizer) as a `gpt2` (byte-level BPE) vocabulary
with the `gpt-2` pre-tokenizer (GPT-2's regex split, as the trained tokenizers split text): token
i spelled in GPT-2's printable stand-ins for its bytes (ids 0..255 are the single bytes), and the
merges as "left right" in rank order, as in tokenizer.json. The byte tokenizer has no merges; it
gets one that can never apply (llama.cpp needs a merges array, gguf refuses an empty one). So
llama.cpp's tokenizer maps UTF-8 text to exactly our ids and back (llama-cpp-python 0.3.36, with
portable-prose's bpe:4096: all 69 documents of the first 400 KB of its validation split).
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

from bitnet.checkpoint import load_checkpoint
from bitnet.export_hf import checkpoint_tokenizer
from bitnet.hf_tokenizer import to_symbols
from bitnet.model import FFN_ACTIVATIONS, BitNetConfig, BitNetLM, BitNetMLP
from bitnet.quant import BitLinear, quantize_activation, quantize_weight, ternary_codes
from bitnet.tokenizer import TextTokenizer

ARCH = "bitnet"
QK_K = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.TQ2_0][0]  # 256
LLAMACPP_ACT = "silu"  # the only FFN gate llama.cpp's bitnet graph computes
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


def vocabulary(tokenizer: TextTokenizer) -> tuple[list[str], list[str]]:
    """A tokenizer as llama.cpp's `gpt2` vocabulary: each token spelled in GPT-2's symbols (as
    tokenizer.json spells it), and its merges as "left right" in rank order (DEAD_MERGE alone
    for the byte tokenizer)."""
    tokens = [to_symbols(token) for token in tokenizer.tokens]
    merges = [f"{tokens[left]} {tokens[right]}" for left, right in tokenizer.merges]
    return tokens, merges or [DEAD_MERGE]


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


def _add_vocabulary(writer: gguf.GGUFWriter, tokenizer: TextTokenizer) -> None:
    """llama.cpp's byte-level BPE (`gpt2` model, GPT-2's regex split: `gpt-2` pre-tokenizer)."""
    tokens, merges = vocabulary(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    writer.add_token_merges(merges)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


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
    writer.add_string(f"{ARCH}.hidden_activation", config.hidden_act)


def export_gguf(checkpoint_dir: Path, out_path: Path, *, verify: bool = True) -> list[TensorRow]:
    """Write `out_path` (GGUF, arch `bitnet`) from a checkpoint directory; return its table.

    Rows are (tensor name, GGUF type name, shape in PyTorch order). The file is written to a
    temporary name and renamed, and (with `verify`) read back and checked by `check_gguf` first.
    A missing or corrupt checkpoint raises `CheckpointError`; a failed check `GGUFCheckError`.
    """
    model = load_checkpoint(checkpoint_dir)
    tokenizer = checkpoint_tokenizer(checkpoint_dir, model.config.vocab_size)
    tensors = _tensors(model)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), ARCH)
    _add_metadata(writer, model.config, Path(checkpoint_dir).resolve().name or ARCH)
    _add_vocabulary(writer, tokenizer)
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


def llamacpp_blockers(config: BitNetConfig) -> list[str]:
    """Why llama.cpp's bitnet graph cannot compute this model from its export (empty: it can)."""
    blockers = []
    if config.hidden_act != LLAMACPP_ACT:
        blockers.append(f"its bitnet graph gates the FFN with SiLU, this model with "
                        f"{config.hidden_act}")
    if not config.tie_word_embeddings:
        blockers.append("it takes logits from the embedding, this model has an untied lm_head")
    return blockers


def llamacpp_notice(config: BitNetConfig) -> str | None:
    """One line for a model llama.cpp cannot compute (None when it can): why, and the fix."""
    blockers = llamacpp_blockers(config)
    if not blockers:
        return None
    return (f"llama.cpp cannot compute this model ({'; '.join(blockers)}); the file holds its "
            f'weights exactly. For one it runs, train with FFN_ACT = "{LLAMACPP_ACT}" and '
            "TIE_EMBEDDINGS = True (the template's constants)")


def llamacpp_differences(config: BitNetConfig) -> list[str]:
    """How llama.cpp's computation of a computable export rounds differently from our model."""
    notes = []
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


def _llamacpp_twin(model: BitNetLM) -> BitNetLM:
    """A copy of `model` whose projections and FFN gates compute the way llama.cpp's do."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, BitLinear):
            module.forward = types.MethodType(_llamacpp_bitlinear, module)
        elif isinstance(module, BitNetMLP):
            module.act_fn = FFN_ACTIVATIONS[LLAMACPP_ACT]  # whatever hidden_activation says
    return twin


@torch.no_grad()
def llamacpp_graph_logits(model: BitNetLM, ids: Sequence[int]) -> np.ndarray:
    """Our model's logits computed the way llama.cpp's bitnet graph computes them from the export:
    SiLU-gated FFN and llama.cpp's activation quantisation (lm_head as in the model)."""
    logits, _ = _llamacpp_twin(model)(torch.tensor([list(ids)]))
    return logits[0].numpy()


def format_table(rows: Sequence[TensorRow]) -> str:
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}}  {qtype:<5}  {list(shape)}" for name, qtype, shape in rows)
