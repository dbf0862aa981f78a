"""Named model sizes, from the template's 0.6 M to `genkidama-618m`: shapes, not weights.

A preset is a LLaMA-shaped BitNet b1.58 body (layers, width, query/key-value heads, FFN size,
context) plus the batch that trains it on a 24 GiB, two-core laptop. The vocabulary is not part
of it: it comes from the tokenizer in use (256 for bytes, N for `bpe:N`), so
`preset.config(vocab_size)` combines the two, and the name's size holds at the preset's
`vocab` (the tokenizer it is meant for): `genkidama-618m` is 619.1 M parameters with a tied
32,000-entry vocabulary (570.4 M on bytes), the smaller ones are sized on bytes.

Why genkidama-618m is 23 x 1536, 12 query / 3 key-value heads, FFN 4096, tied: MAGNET's paper
gives Genkidama's size (618 M, a BitNet b1.58 trained from scratch and run by bitnet.cpp) but not
its shape, so this one follows LLaMA's own rules at that size: head_dim 128, FFN = 8/3 x width
rounded to 256 (exactly 4096 at 1536), 4:1 grouped-query attention (LLaMA 3's ratio; a quarter
of the KV cache when decoding on a CPU), a tied head (llama.cpp's BitNet graph has no separate
output matrix) and LLaMA's 32,000-entry vocabulary; the depth is what brings it to ~618 M.
1536 x FFN 4096 is also the width of the BitNet reference models at this scale (and of the
603 M 22-layer model this machine was first measured with).

Importing this module does not import torch (`magnet-agent train --preset` checks names with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bitnet.model import BitNetConfig

BYTES = 256  # the byte tokenizer's vocabulary (bitnet.data.VOCAB_SIZE; not imported: numpy)


@dataclass(frozen=True)
class Preset:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int  # intermediate size of the gated FFN
    context: int  # max_position_embeddings = the training sequence length
    batch_size: int  # sequences per step that fit a 24 GiB laptop (bench/sizes.py measures)
    tie: bool  # lm_head shares the embedding matrix
    vocab: int  # the vocabulary the name's size is stated at

    def config(self, vocab_size: int | None = None, **overrides) -> BitNetConfig:
        """The model config at `vocab_size` (default: the preset's own `vocab`)."""
        from bitnet.model import BitNetConfig

        return BitNetConfig(
            vocab_size=vocab_size or self.vocab, hidden_size=self.hidden,
            intermediate_size=self.ffn, num_hidden_layers=self.layers,
            num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.context, tie_word_embeddings=self.tie, **overrides)

    def parameters(self, vocab_size: int | None = None) -> int:
        """BitNetLM's parameter count at `vocab_size`, counted without building it."""
        vocab = vocab_size or self.vocab
        d, head_dim = self.hidden, self.hidden // self.heads
        attention = 2 * d * d + 2 * d * self.kv_heads * head_dim + d  # q, o, k, v, attn_sub_norm
        mlp = 3 * d * self.ffn + self.ffn  # gate, up, down, ffn_sub_norm
        layer = attention + mlp + 2 * d  # and the two pre-norms
        embeddings = vocab * d * (1 if self.tie else 2)
        return self.layers * layer + embeddings + d  # + the final norm

    def tokens_per_step(self) -> int:
        return self.batch_size * self.context


PRESETS: dict[str, Preset] = {
    # the bitnet-lm template's own constants (N_LAYER=4, N_EMBD=96, ...): 0.6 M on bytes
    "tiny": Preset(layers=4, hidden=96, heads=4, kv_heads=2, ffn=384, context=128,
                   batch_size=16, tie=True, vocab=BYTES),
    # the LLaMA rules from here on: head_dim 64 (128 for the largest), FFN 8/3 x width
    "bitnet-10m": Preset(layers=6, hidden=384, heads=6, kv_heads=2, ffn=1024, context=256,
                         batch_size=8, tie=True, vocab=BYTES),
    "bitnet-50m": Preset(layers=8, hidden=768, heads=12, kv_heads=4, ffn=2048, context=256,
                         batch_size=4, tie=True, vocab=BYTES),
    "bitnet-150m": Preset(layers=13, hidden=1024, heads=16, kv_heads=4, ffn=2816, context=256,
                          batch_size=2, tie=True, vocab=BYTES),
    "genkidama-618m": Preset(layers=23, hidden=1536, heads=12, kv_heads=3, ffn=4096,
                             context=256, batch_size=1, tie=True, vocab=32_000),
}


def preset(name: str) -> Preset:
    """The named preset; a ValueError in one line listing the names for any other."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}") from None
