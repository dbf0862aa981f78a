"""The BitNet b1.58 model that train.py trains: BitLinear, RMSNorm, RoPE, attention, MLP, LM.

A copy of bitnet.model.BitNetLM (same parameter names, init and logits; checkpoints load in
transformers as BitNetForCausalLM while the architecture matches it), yours to change. The config,
checkpoint format and evaluation live outside this folder, so every variant is scored alike.
"""

import torch
import torch.nn.functional as F
from torch import nn

from bitnet.model import FFN_ACTIVATIONS, BitNetConfig
from bitnet.quant import int8_linear, int8_matmul_applies


class Quantize(torch.autograd.Function):
    """round(x * scale) clipped to [low, high], scaled back; backward is the identity (STE)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> torch.Tensor:
        return (x * scale).round_().clamp_(low, high).div_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return grad, None, None, None


class BitLinear(nn.Linear):
    """nn.Linear with ternary weights ({-1, 0, 1} * mean|W|) and per-token int8 activations.

    A training step computes the same product on the integer codes (bitnet.quant.int8_linear:
    faster, equal up to float rounding); change the quantisation here and drop that branch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if int8_matmul_applies(x, self.weight):
            return int8_linear(x, self.weight, self.bias)
        x_scale = 127.0 / x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        w_scale = 1.0 / self.weight.detach().abs().mean().clamp(min=1e-5)
        x_q = Quantize.apply(x, x_scale, -128, 127)
        w_q = Quantize.apply(self.weight, w_scale, -1, 1)
        return F.linear(x_q, w_q, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_tables(config: BitNetConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair, rotate-half layout (LLaMA)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    freqs = torch.outer(torch.arange(config.max_position_embeddings, dtype=torch.float), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Causal self-attention, grouped-query (fewer k/v heads), SubLN before o_proj."""

    def __init__(self, config: BitNetConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.q_proj = BitLinear(config.hidden_size, q_dim, bias=False)
        self.k_proj = BitLinear(config.hidden_size, kv_dim, bias=False)
        self.v_proj = BitLinear(config.hidden_size, kv_dim, bias=False)
        self.o_proj = BitLinear(q_dim, config.hidden_size, bias=False)
        self.attn_sub_norm = RMSNorm(q_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_head != self.n_kv_head
        )
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.o_proj(self.attn_sub_norm(y))


class MLP(nn.Module):
    """Gated feed-forward, act(gate) * up, SubLN before down_proj.

    act is config.hidden_act (train.py's FFN_ACT): "relu2" = relu(x)^2, "silu" = x * sigmoid(x)
    (what llama.cpp's bitnet graph computes, so a GGUF export runs there as trained).
    """

    def __init__(self, config: BitNetConfig) -> None:
        super().__init__()
        self.gate_proj = BitLinear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = BitLinear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = BitLinear(config.intermediate_size, config.hidden_size, bias=False)
        self.ffn_sub_norm = RMSNorm(config.intermediate_size, config.rms_norm_eps)
        self.act_fn = FFN_ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(self.ffn_sub_norm(hidden))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: BitNetConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class BitNetLM(nn.Module):
    """Embedding, decoder layers, final norm, full-precision lm_head (bytes in, logits out)."""

    def __init__(self, config: BitNetConfig) -> None:
        super().__init__()
        self.config = config  # bitnet.checkpoint writes config.json from it
        # parameter names (model.layers.0.mlp.up_proj.weight, ...) are transformers' BitNet ones
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers)),
            norm=RMSNorm(config.hidden_size, config.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        cos, sin = rope_tables(config)
        self.register_buffer("cos", cos, persistent=False)  # not saved: recomputed from config
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = idx.shape[1]
        if n > len(self.cos):
            raise ValueError(f"{n} tokens exceed max_position_embeddings {len(self.cos)}")
        cos, sin = self.cos[:n], self.sin[:n]
        x = self.model.embed_tokens(idx)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        logits = self.lm_head(self.model.norm(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        return logits, loss
