"""Synchronous data parallelism in one process: the baseline DiLoCo is measured against.

N simulated workers share one model. Every step each worker computes the gradient of a batch of
its own data, the gradients are averaged (what an all-reduce every step does) and one AdamW step
is taken with merge/inner.py's settings. With `steps = inner_steps * outer_steps` it spends the
same compute as `merge.diloco.run_diloco` with the same workers.

Communication is counted like DiLoCo's: each worker sends its fp32 gradient once per step
(`merge.compress.payload_bytes(numel, "none")`), summed over workers and steps.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bitnet.data import get_batch
from bitnet.model import BitNetLM
from merge.compress import payload_bytes
from merge.inner import InnerConfig, inner_lr, inner_optimizer, worker_data_seeds


@dataclass
class SyncDPResult:
    model: BitNetLM
    bytes_communicated: int  # all workers, all steps
    bytes_per_worker_step: int
    workers: int
    steps: int
    losses: list[float] = field(default_factory=list)  # mean over workers, per step
    seconds: float = 0.0


def run_sync_dp(base: BitNetLM, trains: Sequence[np.ndarray], *, steps: int, seed: int = 0,
                inner: InnerConfig | None = None, data_seeds: Sequence[int] | None = None,
                on_step: Callable[[int, float], None] | None = None) -> SyncDPResult:
    """Train a copy of `base` with gradients averaged over `len(trains)` workers every step.

    Args:
        base: the common starting model (left unchanged).
        trains: one uint8 training array per worker.
        steps: optimiser steps; each costs one batch per worker.
        seed, data_seeds: worker i's batches come from `Generator().manual_seed(seed + i)`
            (or `data_seeds[i]`), the same streams `run_diloco` gives its workers.
        inner: AdamW and batch settings (merge.inner.InnerConfig defaults).
        on_step: called with (steps done, mean loss) after every step.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    seeds = worker_data_seeds(len(trains), seed, data_seeds)
    inner = inner or InnerConfig()

    start = time.perf_counter()
    model = copy.deepcopy(base).train()
    optimizer = inner_optimizer(model, inner)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    per_worker = payload_bytes(sum(p.numel() for p in model.parameters()), "none")
    workers = len(trains)
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = inner_lr(inner, step)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for train, generator in zip(trains, generators, strict=True):
            inputs, targets = get_batch(train, inner.batch_size, inner.seq_len, generator)
            _, loss = model(inputs, targets)
            (loss / workers).backward()  # accumulating loss/N = the all-reduced mean gradient
            step_loss += loss.item() / workers
        if inner.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), inner.grad_clip)
        optimizer.step()
        losses.append(step_loss)
        if on_step is not None:
            on_step(step + 1, step_loss)
    return SyncDPResult(model=model.eval(), bytes_communicated=per_worker * workers * steps,
                        bytes_per_worker_step=per_worker, workers=workers, steps=steps,
                        losses=losses, seconds=time.perf_counter() - start)
