"""The local planner's model computed here: SmolLM2 (a LLaMA decoder) read from the converted
cache (agent.planners.converted_cache: config.json and float32 safetensors), without
transformers. Its import, tokenizer and model took 3.4 of the planner's 5 CPU-s load, taken from
a scoring's cores (now 1.0 in all). The same computation as transformers' modeling_llama
(RMSNorm, rotary positions, grouped-query attention through sdpa, a SiLU-gated MLP, a tied
output layer), checked against it in tests/agent/test_planner_local.py.

The linear layers are torch.nn.Linear, so the planner's int8 conversion
(agent.planners.local_model.with_int8_linears) applies to them as to transformers' own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bitnet.checkpoint_files import CONFIG_FILE, WEIGHTS_FILE  # the converted cache's names
from bitnet.model import RMSNorm, apply_rotary, inverse_frequencies  # LLaMA's, as ours


class KVCache:
    """The keys and values of every position read so far, per layer: [1, kv heads, T, head dim]."""

    def __init__(self, layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def __len__(self) -> int:
        first = self.keys[0]
        return 0 if first is None else first.shape[2]

    def extend(self, layer: int, keys: torch.Tensor, values: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys and values with these appended."""
        old_keys, old_values = self.keys[layer], self.values[layer]
        if old_keys is not None and old_values is not None:
            keys, values = torch.cat([old_keys, keys], 2), torch.cat([old_values, values], 2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values

    def crop(self, length: int) -> None:
        """Forget every position from `length` on."""
        self.keys = [None if k is None else k[:, :, :length] for k in self.keys]
        self.values = [None if v is None else v[:, :, :length] for v in self.values]

    def copy(self) -> KVCache:
        """A cache to extend without changing this one (extending makes new tensors)."""
        twin = KVCache(0)
        twin.keys, twin.values = list(self.keys), list(self.values)
        return twin


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
                layer: int, past: int) -> torch.Tensor:
        length = x.shape[1]
        q = self.q_proj(x).view(1, length, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(1, length, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(1, length, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k, v = cache.extend(layer, k, v)
        if past and length > 1:  # new positions after cached ones: an explicit causal mask,
            # and the key-value heads repeated, as transformers' sdpa path does with a mask
            mask = torch.ones(length, past + length, dtype=torch.bool).tril(past)
            groups = self.heads // self.kv_heads
            out = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1),
                                                 v.repeat_interleave(groups, 1), attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=length > 1, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(1, length, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config["rms_norm_eps"]
        self.input_layernorm = RMSNorm(hidden, eps)
        self.self_attn = Attention(hidden, config["num_attention_heads"],
                                   config["num_key_value_heads"], _head_dim(config))
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.mlp = MLP(hidden, config["intermediate_size"])


class Body(nn.Module):  # transformers' LlamaModel: its names, so its state dict loads as is
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        shape = config["vocab_size"], config["hidden_size"]
        # given an uninitialised weight: its random initialisation, even on the meta device,
        # imports torch._dynamo (1-2 CPU-s), and the loaded weights replace it anyway
        self.embed_tokens = nn.Embedding(*shape, _weight=torch.empty(shape))
        self.layers = nn.ModuleList(DecoderLayer(config)
                                    for _ in range(config["num_hidden_layers"]))
        self.norm = RMSNorm(config["hidden_size"], config["rms_norm_eps"])


class LlamaDecoder(nn.Module):
    """`decoder(tokens, cache)`: the next-token logits after `tokens`, read after the positions
    `cache` holds (which it then holds too)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        unsupported = {k: config.get(k) for k in ("attention_bias", "mlp_bias")
                       if config.get(k)}
        if config.get("hidden_act", "silu") != "silu":
            unsupported["hidden_act"] = config["hidden_act"]
        if config.get("model_type") != "llama" or unsupported:
            raise ValueError(f"not a LLaMA decoder this module computes: "
                             f"{config.get('model_type')} {unsupported}")
        self.config = config
        self.model = Body(config)
        self.lm_head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)
        if config.get("tie_word_embeddings", True):
            self.lm_head.weight = self.model.embed_tokens.weight
        if (config.get("rope_parameters") or {}).get("rope_type", "default") != "default":
            raise ValueError(f"not a LLaMA decoder this module computes: rope "
                             f"{config['rope_parameters']}")
        with torch.device("cpu"):  # also when the layers are made on the meta device (where
            # arange imports torch._dynamo, 1-2 CPU-s); a plain tensor, as it is never loaded
            self.inv_freq = _inverse_frequencies(config)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.model.layers))

    def forward(self, tokens: list[int], cache: KVCache) -> torch.Tensor:
        past = len(cache)
        x = self.model.embed_tokens(torch.tensor([tokens]))
        positions = torch.arange(past, past + len(tokens), dtype=torch.float)
        angles = positions[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        for index, layer in enumerate(self.model.layers):
            x = x + layer.self_attn(layer.input_layernorm(x), cos, sin, cache, index, past)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        # the output layer (49k tokens wide) for the last position alone
        return self.lm_head(self.model.norm(x[:, -1:]))[0, -1]


def _head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _inverse_frequencies(config: dict[str, Any]) -> torch.Tensor:
    """The rotary embedding's frequencies, from transformers' config (its default rope)."""
    rope = config.get("rope_parameters") or {}
    return inverse_frequencies(_head_dim(config),
                               float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))


def load_decoder(converted: Path) -> LlamaDecoder:
    """The decoder of a converted cache directory, its float32 weights mapped from the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = json.loads((converted / CONFIG_FILE).read_text(encoding="utf-8"))
    with torch.device("meta"):  # no random initialisation of weights about to be replaced
        decoder = LlamaDecoder(config)
    try:
        weights = load_file(converted / WEIGHTS_FILE)
    except SafetensorError as err:  # a plain Exception: told apart from a bug here
        raise ValueError(f"unreadable weights in {converted}: {err}") from None
    return from_state_dict(decoder, weights)


def decoder_of(model: Any) -> LlamaDecoder:
    """The decoder computing transformers' LLaMA causal LM `model`, on the same weights."""
    with torch.device("meta"):
        decoder = LlamaDecoder(json.loads(model.config.to_json_string()))
    return from_state_dict(decoder, model.state_dict())


def from_state_dict(decoder: LlamaDecoder, weights: dict[str, torch.Tensor]) -> LlamaDecoder:
    """`decoder` (made on the meta device) given transformers' state dict of the same model."""
    tied = decoder.lm_head.weight is decoder.model.embed_tokens.weight
    if tied:  # one tensor under either name (safetensors keeps one of a shared pair)
        shared = weights.get("model.embed_tokens.weight", weights.get("lm_head.weight"))
        weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}
        if shared is not None:
            weights["model.embed_tokens.weight"] = shared
    missing, unexpected = decoder.load_state_dict(weights, strict=False, assign=True)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"the weights do not fit the decoder: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    if tied:
        decoder.lm_head.weight = decoder.model.embed_tokens.weight
    return decoder.eval()
