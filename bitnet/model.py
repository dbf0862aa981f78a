"""A LLaMA-style BitNet b1.58 language model, laid out like transformers' `BitNetForCausalLM`.

Module names match Hugging Face's so a state_dict loads there unchanged:
    model.embed_tokens, model.layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj,
    self_attn.attn_sub_norm, post_attention_layernorm, mlp.{gate,up,down}_proj,
    mlp.ffn_sub_norm}, model.norm, lm_head
SubLN puts an extra RMSNorm right before each output projection (o_proj, down_proj), which keeps
the activations entering those quantised layers well scaled. The FFN is gated by `hidden_act`:
squared ReLU ("relu2", the BitNet b1.58 paper's and transformers' default) or SiLU ("silu", the
gate llama.cpp's `bitnet` graph computes). Embeddings, norms and lm_head stay in full precision;
every other projection is a BitLinear.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bitnet.quant import BitLinear


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()  # as transformers' ReLUSquaredActivation


# `hidden_act` names, as transformers' ACT2FN spells them (its BitNetForCausalLM reads the same
# config.json field), and the gate each computes.
FFN_ACTIVATIONS = {"relu2": relu_squared, "silu": F.silu}


@dataclass
class BitNetConfig:
    vocab_size: int = 256  # byte-level tokenizer
    hidden_size: int = 96
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # < num_attention_heads = grouped-query attention
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # transformers' BitNetConfig default; a config.json without the field was trained with it
    hidden_act: str = "relu2"

    def __post_init__(self) -> None:
        if self.hidden_act not in FFN_ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not an FFN activation here: use one of "
                f"{', '.join(map(repr, FFN_ACTIVATIONS))}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}: choose a head count that divides it"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}: choose a divisor"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE: change the heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out (not F.rms_norm) to round exactly like the reference: quantisers downstream
        # turn last-bit differences into whole int8 steps.
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotate-half RoPE (the Hugging Face/LLaMA convention)."""

    def __init__(self, config: BitNetConfig) -> None:
        super().__init__()
        inv_freq = inverse_frequencies(config.head_dim, config.rope_theta)
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float)
        freqs = torch.outer(positions, inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len > self.cos.shape[0]:
            raise ValueError(
                f"sequence of {seq_len} tokens exceeds max_position_embeddings "
                f"{self.cos.shape[0]}: raise it in the config or shorten the input"
            )
        return self.cos[:seq_len], self.sin[:seq_len]


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """RoPE's frequency per pair of dimensions, as transformers' default rope computes them."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class BitNetAttention(nn.Module):
    def __init__(self, config: BitNetConfig, linear: type[nn.Linear]) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = linear(config.hidden_size, q_dim, bias=False)
        self.k_proj = linear(config.hidden_size, kv_dim, bias=False)
        self.v_proj = linear(config.hidden_size, kv_dim, bias=False)
        self.o_proj = linear(q_dim, config.hidden_size, bias=False)
        self.attn_sub_norm = RMSNorm(q_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        q = self.q_proj(x).view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_heads != self.num_kv_heads
        )
        y = y.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_dim)
        return self.o_proj(self.attn_sub_norm(y))


class BitNetMLP(nn.Module):
    def __init__(self, config: BitNetConfig, linear: type[nn.Linear]) -> None:
        super().__init__()
        self.gate_proj = linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = linear(config.intermediate_size, config.hidden_size, bias=False)
        self.ffn_sub_norm = RMSNorm(config.intermediate_size, config.rms_norm_eps)
        self.act_fn = FFN_ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(self.ffn_sub_norm(hidden))


class BitNetDecoderLayer(nn.Module):
    def __init__(self, config: BitNetConfig, linear: type[nn.Linear]) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = BitNetAttention(config, linear)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = BitNetMLP(config, linear)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class BitNetModel(nn.Module):
    def __init__(self, config: BitNetConfig, linear: type[nn.Linear]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            BitNetDecoderLayer(config, linear) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        cos, sin = self.rotary_emb(input_ids.shape[1])
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class BitNetLM(nn.Module):
    """Causal LM: BitNetModel + full-precision lm_head.

    `linear` swaps the projection class; `nn.Linear` gives the dense twin used as a baseline.
    """

    def __init__(self, config: BitNetConfig, linear: type[nn.Linear] = BitLinear) -> None:
        super().__init__()
        self.config = config
        self.model = BitNetModel(config, linear)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def forward(
        self, input_ids: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.lm_head(self.model(input_ids))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        return logits, loss
