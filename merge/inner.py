"""The inner loop of DiLoCo: k AdamW steps of one worker on its own data.

Shared by the single-process reference (merge/diloco.py), the synchronous baseline
(merge/sync_dp.py) and the torchft worker (merge/diloco_worker.py), so all three train the same
way. The hyper-parameters follow the bitnet-lm template's train.py (AdamW betas 0.9/0.95, weight
decay on matrices only, gradient clipping at 1.0, linear warmup); the learning rate is constant
after warmup because a DiLoCo worker does not know how long the whole run will be.

Given the same model weights, optimiser state, data and generator state, `train_steps` is
deterministic (on one thread: CPU kernels may split reductions differently across threads).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bitnet.data import get_batch
from bitnet.model import BitNetConfig, BitNetLM


@dataclass(frozen=True)
class InnerConfig:
    """AdamW and batch settings of the inner loop (the template's values by default)."""

    lr: float = 4e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    warmup_steps: int = 30
    batch_size: int = 16
    seq_len: int = 128

    def __post_init__(self) -> None:
        for name in ("lr", "batch_size", "seq_len"):
            if not getattr(self, name) > 0:
                raise ValueError(f"inner {name} must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("inner weight_decay, warmup_steps and grad_clip must be >= 0")


def worker_data_seeds(workers: int, seed: int,
                      data_seeds: Sequence[int] | None = None) -> list[int]:
    """Each simulated worker's batch seed: `data_seeds` when given, else worker i draws from
    `seed + i` (the one rule single-process DiLoCo, sync DP and the benchmark share)."""
    if workers < 1:
        raise ValueError("no training data: pass one array per worker")
    seeds = list(data_seeds) if data_seeds is not None else [seed + i for i in range(workers)]
    if len(seeds) != workers:
        raise ValueError(f"{len(seeds)} data seeds for {workers} workers: give one each")
    return seeds


def fresh_model(config: BitNetConfig, seed: int) -> BitNetLM:
    """A randomly initialised model that every worker given the same seed builds identically."""
    torch.manual_seed(seed)
    return BitNetLM(config)


def inner_optimizer(model: torch.nn.Module, cfg: InnerConfig) -> torch.optim.AdamW:
    """AdamW that decays only the matrices (never norms or embeddings), as the template does."""
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    others = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
    return torch.optim.AdamW(
        [{"params": matrices, "weight_decay": cfg.weight_decay},
         {"params": others, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
    )


def inner_lr(cfg: InnerConfig, step: int) -> float:
    """Learning rate at a worker's `step`-th inner step (0-based): linear warmup, then flat."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def train_steps(model: BitNetLM, optimizer: torch.optim.Optimizer, train: np.ndarray,
                generator: torch.Generator, steps: int, cfg: InnerConfig, first_step: int = 0,
                on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Run `steps` AdamW steps on random windows of `train`; returns the losses.

    `first_step` counts the steps this worker took before (for the warmup), so calling this
    twice with k steps each equals one call with 2k steps. `on_step(step, loss)` runs after each
    step. A non-finite loss raises ValueError (lower the learning rate).
    """
    model.train()
    losses = []
    for i in range(steps):
        step = first_step + i
        for group in optimizer.param_groups:
            group["lr"] = inner_lr(cfg, step)
        inputs, targets = get_batch(train, cfg.batch_size, cfg.seq_len, generator)
        _, loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()  # torchft's DiLoCo hooks this call: its post-hook syncs every H steps
        value = loss.item()
        if not math.isfinite(value):
            raise ValueError(f"inner loss became {value} at step {step + 1}: lower the inner lr")
        losses.append(value)
        if on_step is not None:
            on_step(step, value)
    return losses
