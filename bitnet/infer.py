"""A BitNet b1.58 model for fast batch-1 CPU inference: int8 ternary weights, integer matmuls.

`InferenceModel.from_model(BitNetLM)` converts the fp32 latent weights once; what stays in
memory for every BitLinear is its ternary codes {-1, 0, 1} as int8 (one byte a weight, a
quarter of fp32) plus one scale per tensor. Embeddings, norms and lm_head stay fp32, as in
training.

Each ternary projection quantises its input per token to int8 exactly as training does
(`bitnet.quant.activation_codes`, the same function `quantize_activation` uses), multiplies
int8 x int8 -> int32 with `torch._int_mm` (oneDNN/VNNI on x86; no shape restrictions on CPU,
M = 1 included) and rescales the exact integer sums once:

    y = (x_codes @ W_codes^T) / (x_scale * w_inv_scale)

which is the training-time value `quantize_activation(x) @ quantize_weight(W)^T` up to fp32
rounding (the integer sum is exact here; the training-time fp32 matmul rounds its partial sums).
Most logits agree to ~1e-5; now and then a last-bit difference lands on a rounding boundary of
a later quantiser and moves it one int8 step (a logit moves by ~0.03 against a spread of ~2),
which leaves greedy tokens the same in the tests (tests/bitnet/test_generate.py).

Projections that read the same input share one matmul: q/k/v are one [q+k+v, hidden] int8
matrix and gate/up one [2 * intermediate, hidden] matrix, each row keeping the scale of the
tensor it came from (the activation codes are the same for all of them, so this is exact).

Kernel choice, measured at batch 1 (M = 1) on this machine (2 vCPU AMD EPYC, AVX-512 VNNI),
1-2 threads, weights hot in cache, 1024 -> 4096 / 4096 -> 1024 projections:
  torch._int_mm, int8 [N, K] weight passed as a transposed view   40-80 us   (chosen)
  torch._int_mm, contiguous [K, N] int8 copy                      110-320 us
  fp32 F.linear (dense)                                           350-450 us
  aten._weight_int8pack_mm, fp32 activations                      2.5-7 ms (bf16: output
                                                                  rounded to bf16, not exact)
  aten._weight_int4pack_mm_for_cpu, ternary as int4, fp32 codes   3.5-7 ms (exact, but slow)
In a whole model the weights stream from DRAM: at ~100M parameters decoding is memory-bound
(~94 MB of int8 codes read per token).

`KVCache` holds keys/values (after RoPE) of the positions seen so far; `forward(ids, cache)`
appends to it, so a prompt is prefilled once and every new token costs one position.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bitnet.model import FFN_ACTIVATIONS, BitNetConfig, BitNetLM, RMSNorm, apply_rotary
from bitnet.quant import BitLinear, activation_codes, ternary_codes

# Random-init models for speed measurements: the bitnet-lm template's proportions (FFN 4x
# hidden, kv heads = heads / 2, head_dim 64) at widths that are multiples of 256.
SPEED_CONFIGS: dict[str, BitNetConfig] = {
    "20m": BitNetConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=5,
                        num_attention_heads=8, num_key_value_heads=4),
    "100m": BitNetConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=6,
                         num_attention_heads=16, num_key_value_heads=8),
}


def build_model(
    config: BitNetConfig | str, *, seed: int = 0, linear: type[nn.Linear] = BitLinear
) -> BitNetLM:
    """A randomly initialised BitNetLM (a SPEED_CONFIGS name or a config), in eval mode.

    `linear=nn.Linear` gives the dense fp32 twin with the same shapes.
    """
    if isinstance(config, str):
        if config not in SPEED_CONFIGS:
            raise ValueError(f"unknown model size {config!r}: use one of {sorted(SPEED_CONFIGS)}")
        config = SPEED_CONFIGS[config]
    torch.manual_seed(seed)
    return BitNetLM(config, linear).eval()


class TernaryLinear(nn.Module):
    """int8 ternary weight codes [out, in] and a per-row inverse scale; int8 x int8 matmul."""

    def __init__(self, codes: torch.Tensor, inv_scale: torch.Tensor) -> None:
        super().__init__()
        if codes.dtype != torch.int8 or codes.dim() != 2:
            raise ValueError(f"codes must be a 2-D int8 tensor, got {codes.dtype} {codes.shape}")
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("inv_scale", inv_scale.to(torch.float32).reshape(-1))
        self.out_features, self.in_features = codes.shape

    @classmethod
    def from_bitlinears(cls, layers: list[BitLinear]) -> TernaryLinear:
        """One matrix for several BitLinears that read the same input (rows stacked)."""
        codes, scales = [], []
        for layer in layers:
            c, s = ternary_codes(layer.weight)
            codes.append(c)
            scales.append(s.float().expand(c.shape[0]))
        return cls(torch.cat(codes), torch.cat(scales))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x_codes, x_scale = activation_codes(x.reshape(-1, self.in_features))
        acc = torch._int_mm(x_codes, self.codes.t())  # [M, out] int32, exact
        return acc.float().div_(x_scale * self.inv_scale).reshape(*lead, self.out_features)


class DenseLinear(nn.Module):
    """fp32 weight rows stacked from several nn.Linear layers (the dense baseline's twin)."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.cat([lay.weight.detach().float() for lay in layers]),
                                   requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def _fuse(layers: list[nn.Linear]) -> nn.Module:
    if all(isinstance(layer, BitLinear) for layer in layers):
        return TernaryLinear.from_bitlinears(layers)
    if any(isinstance(layer, BitLinear) for layer in layers):
        raise ValueError("cannot fuse BitLinear with dense layers")
    return DenseLinear(layers)


def _norm(norm: RMSNorm) -> RMSNorm:
    copied = copy.deepcopy(norm).float()
    copied.weight.requires_grad_(False)
    return copied


@dataclass
class KVCache:
    """Keys (after RoPE) and values per layer: [layers, batch, kv_heads, max_len, head_dim]."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]


class _Layer(nn.Module):
    def __init__(self, layer: nn.Module, config: BitNetConfig) -> None:
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_sizes = [q_dim, kv_dim, kv_dim]
        self.ffn_size = config.intermediate_size
        self.input_layernorm = _norm(layer.input_layernorm)
        self.qkv_proj = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        self.attn_sub_norm = _norm(attn.attn_sub_norm)
        self.o_proj = _fuse([attn.o_proj])
        self.post_attention_layernorm = _norm(layer.post_attention_layernorm)
        self.gate_up_proj = _fuse([mlp.gate_proj, mlp.up_proj])
        self.ffn_sub_norm = _norm(mlp.ffn_sub_norm)
        self.down_proj = _fuse([mlp.down_proj])
        self.act_fn = FFN_ACTIVATIONS[config.hidden_act]  # the gate the model was trained with

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start: int,
    ) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        q, k, v = self.qkv_proj(self.input_layernorm(x)).split(self.qkv_sizes, dim=-1)
        q = q.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            cache_k, cache_v = cache
            end = start + seq_len
            cache_k[:batch, :, start:end] = k
            cache_v[:batch, :, start:end] = v
            k, v = cache_k[:batch, :, :end], cache_v[:batch, :, :end]
            if seq_len == 1:  # one new query sees every cached position
                causal = False
            elif start > 0:  # a chunk after cached positions: causal, offset by `start`
                rows = torch.arange(start, end).unsqueeze(1)
                mask, causal = rows >= torch.arange(end).unsqueeze(0), False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        y = y.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_dim)
        x = x + self.o_proj(self.attn_sub_norm(y))
        gate, up = self.gate_up_proj(self.post_attention_layernorm(x)).split(
            [self.ffn_size, self.ffn_size], dim=-1
        )
        return x + self.down_proj(self.ffn_sub_norm(self.act_fn(gate) * up))


class InferenceModel(nn.Module):
    """BitNetLM for generation: int8 ternary projections, fp32 rest, optional KV cache."""

    def __init__(self, model: BitNetLM) -> None:
        super().__init__()
        self.config = model.config
        self.tokenizer = None  # a TextTokenizer, set by load_for_inference (None: bytes)
        inner = model.model
        self.embed_tokens = nn.Embedding.from_pretrained(
            inner.embed_tokens.weight.detach().float().clone(), freeze=True
        )
        self.layers = nn.ModuleList(_Layer(layer, self.config) for layer in inner.layers)
        self.norm = _norm(inner.norm)
        if self.config.tie_word_embeddings:
            self.lm_head_weight = self.embed_tokens.weight
        else:
            self.lm_head_weight = nn.Parameter(
                model.lm_head.weight.detach().float().clone(), requires_grad=False
            )
        self.register_buffer("cos", inner.rotary_emb.cos.float().clone(), persistent=False)
        self.register_buffer("sin", inner.rotary_emb.sin.float().clone(), persistent=False)
        self.eval()

    @classmethod
    def from_model(cls, model: BitNetLM) -> InferenceModel:
        return cls(model)

    @property
    def max_len(self) -> int:
        return self.config.max_position_embeddings

    @property
    def is_ternary(self) -> bool:
        return isinstance(self.layers[0].qkv_proj, TernaryLinear)

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        c = self.config
        max_len = min(max_len or self.max_len, self.max_len)
        shape = (c.num_hidden_layers, batch, c.num_key_value_heads, max_len, c.head_dim)
        return KVCache(torch.zeros(shape), torch.zeros(shape))

    def forward(
        self, input_ids: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab] (or [batch, 1, vocab] with `last_only`).

        With a cache, `input_ids` continue the cached positions and are appended to the cache.
        """
        batch, seq_len = input_ids.shape
        start = cache.length if cache is not None else 0
        end = start + seq_len
        limit = cache.max_len if cache is not None else self.max_len
        if end > limit:
            raise ValueError(
                f"{end} positions exceed the model's context of {limit} tokens "
                "(max_position_embeddings): shorten the prompt or generate fewer tokens"
            )
        cos, sin = self.cos[start:end], self.sin[start:end]
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            kv = (cache.keys[i], cache.values[i]) if cache is not None else None
            x = layer(x, cos, sin, kv, start)
        if cache is not None:
            cache.length = end
        if last_only:
            x = x[:, -1:]
        return F.linear(self.norm(x), self.lm_head_weight)

    def weight_bytes(self) -> dict[str, int]:
        """Bytes held in memory: ternary codes, their scales, everything else (fp32)."""
        ternary = scales = other = 0
        for module in self.modules():
            if isinstance(module, TernaryLinear):
                ternary += module.codes.numel() * module.codes.element_size()
                scales += module.inv_scale.numel() * module.inv_scale.element_size()
        seen = {id(t) for m in self.modules() if isinstance(m, TernaryLinear)
                for t in (m.codes, m.inv_scale)}
        for tensor in list(self.parameters()) + list(self.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                other += tensor.numel() * tensor.element_size()
        return {"ternary_codes": ternary, "ternary_scales": scales, "other": other}


def load_for_inference(checkpoint_dir: str | os.PathLike) -> InferenceModel:
    """Load a training checkpoint (config.json + model.safetensors) as an InferenceModel.

    The fp32 latent weights are read once, converted, and dropped; the checkpoint's tokenizer
    (bitnet.tokenizer: bytes when it carries none) is attached as `.tokenizer`, for
    bitnet.generate. Errors are `bitnet.checkpoint.CheckpointError` with a one-line message.
    """
    from bitnet.checkpoint import CheckpointError, load_checkpoint
    from bitnet.tokenizer import load_tokenizer

    model = InferenceModel.from_model(load_checkpoint(checkpoint_dir))
    try:
        model.tokenizer = load_tokenizer(checkpoint_dir)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    return model
