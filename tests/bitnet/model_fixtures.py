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
