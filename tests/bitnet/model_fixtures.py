"""Models the bitnet tests share."""

from __future__ import annotations

import torch

from bitnet.model import BitNetConfig, BitNetLM


def trained_like(config: BitNetConfig, seed: int = 0) -> BitNetLM:
    """Weights far from init (norm gains included), so logits are not near zero."""
    torch.manual_seed(seed)
    model = BitNetLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.3)
    return model.eval()


def trained_bpe(vocab_size: int = 1024):
    """A byte-level BPE (bitnet.tokenizer) trained on this folder's tests, in ~0.2 s."""
    from pathlib import Path

    import numpy as np

    from bitnet.tokenizer import TextTokenizer, train_merges

    text = b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("test_*.py")))
    merges = train_merges(np.frombuffer(text, dtype=np.uint8), vocab_size)
    return TextTokenizer(f"bpe:{vocab_size}", merges)
