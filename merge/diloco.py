"""DiLoCo in one process: N simulated workers, the reference for the distributed run.

Each worker has its own model copy, training data, batch generator and AdamW state (kept across
outer steps, as in DiLoCo). An outer step: every worker loads the global weights, takes H inner
steps (merge/inner.py), and sends its pseudo-gradient `global - local` as one flat vector,
optionally compressed (merge/compress.py); the mean of what arrives is applied by the outer
optimiser (merge/outer.OuterStep: Nesterov SGD, lr 0.7, momentum 0.9).

The arithmetic is the torchft worker's (merge/diloco_worker.py) operation for operation: the
same flat vector in `named_parameters` order, the same chunking, a sum in worker order divided by
N, the same SGD. So on one thread, with the same base, data and seeds, the distributed run lands
on these weights (tests/merge/test_diloco_torchft.py checks it).

Communication is counted as what the workers send: each worker's encoded pseudo-gradient once
per outer step (`merge.compress.payload_bytes`), summed over workers and steps.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bitnet.model import BitNetLM
from merge.compress import check_kind, payload_bytes, round_trip
from merge.inner import InnerConfig, inner_optimizer, train_steps, worker_data_seeds
from merge.outer import OUTER_LR, OUTER_MOMENTUM, OuterStep


@dataclass
class OuterProgress:
    """What `on_step` gets after each outer step."""

    step: int  # outer steps done (1-based)
    outer_steps: int
    losses: list[float]  # each worker's mean inner loss over this outer step
    bytes_communicated: int  # so far, all workers
    seconds: float  # since the start


@dataclass
class DiLoCoResult:
    model: BitNetLM  # the final global weights
    bytes_communicated: int  # all workers, all outer steps
    bytes_per_worker_step: int  # one worker's payload in one outer step
    workers: int
    inner_steps: int
    outer_steps: int
    compress: str
    losses: list[list[float]] = field(default_factory=list)  # [outer step][worker]
    seconds: float = 0.0


def parameters_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached fp32 copies of the trainable parameters (buffers such as RoPE tables excluded)."""
    return {name: p.detach().float().clone() for name, p in model.named_parameters()}


def flat_pseudo_gradient(global_params: Mapping[str, torch.Tensor], model: torch.nn.Module
                         ) -> torch.Tensor:
    """`global - local` of every parameter, flattened in `named_parameters` order."""
    return torch.cat([(global_params[name] - p.detach()).reshape(-1)
                      for name, p in model.named_parameters()])


def load_parameters(model: torch.nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Copy `params` into the model in place (its optimiser keeps pointing at the same tensors)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])


def apply_mean_pseudo_gradient(outer: OuterStep, mean: torch.Tensor) -> dict[str, torch.Tensor]:
    """One outer-optimiser step with a flat mean pseudo-gradient; returns the new global weights.

    `OuterStep.step` takes the workers' weights; here the pseudo-gradients have been through the
    wire format, so the mean is given directly (for "none" it is the same number).
    """
    sizes = [p.numel() for p in outer.params.values()]
    return outer.apply(dict(zip(outer.params, mean.split(sizes), strict=True)))


def mean_of(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum in order, then divide: the order and rounding of an all-reduce(SUM) / world size."""
    total = vectors[0].clone()
    for v in vectors[1:]:
        total += v
    return total / len(vectors)


def run_diloco(base: BitNetLM, trains: Sequence[np.ndarray], *, inner_steps: int = 50,
               outer_steps: int = 10, seed: int = 0, inner: InnerConfig | None = None,
               outer_lr: float = OUTER_LR, outer_momentum: float = OUTER_MOMENTUM,
               compress: str = "none", data_seeds: Sequence[int] | None = None,
               on_step: Callable[[OuterProgress], None] | None = None) -> DiLoCoResult:
    """Train `len(trains)` simulated DiLoCo workers from `base` (left unchanged).

    Args:
        base: the common starting model (e.g. `load_checkpoint(dir)` or `fresh_model(cfg, s)`).
        trains: one uint8 training array per worker (its own corpus, or its shard of one).
        inner_steps: H, AdamW steps per worker between synchronisations.
        outer_steps: synchronisations; total compute = workers * inner_steps * outer_steps.
        seed: worker i draws batches from `torch.Generator().manual_seed(seed + i)`, unless
            `data_seeds` gives each worker's seed.
        inner: AdamW and batch settings (merge.inner.InnerConfig defaults).
        outer_lr, outer_momentum: the outer Nesterov SGD (0.7 and 0.9 by default).
        compress: "none" | "fp16" | "int8": the wire format of the pseudo-gradients.
        on_step: called with an OuterProgress after every outer step.

    Returns:
        DiLoCoResult with the final global model and the bytes the workers sent.
    """
    check_kind(compress)
    if inner_steps < 1 or outer_steps < 1:
        raise ValueError("inner_steps and outer_steps must be at least 1")
    seeds = worker_data_seeds(len(trains), seed, data_seeds)
    inner = inner or InnerConfig()

    start = time.perf_counter()
    outer = OuterStep(parameters_of(base), lr=outer_lr, momentum=outer_momentum)
    global_params = outer.state()
    models = [copy.deepcopy(base) for _ in trains]
    optimizers = [inner_optimizer(m, inner) for m in models]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    numel = sum(p.numel() for p in base.parameters())
    per_worker = payload_bytes(numel, compress)

    sent, history = 0, []
    for step in range(outer_steps):
        received, losses = [], []
        for model, optimizer, generator, train in zip(models, optimizers, generators, trains,
                                                      strict=True):
            load_parameters(model, global_params)
            worker_losses = train_steps(model, optimizer, train, generator, inner_steps, inner,
                                        first_step=step * inner_steps)
            losses.append(float(np.mean(worker_losses)))
            received.append(round_trip(flat_pseudo_gradient(global_params, model), compress))
            sent += per_worker
        global_params = apply_mean_pseudo_gradient(outer, mean_of(received))
        history.append(losses)
        if on_step is not None:
            on_step(OuterProgress(step + 1, outer_steps, losses, sent,
                                  time.perf_counter() - start))

    final = copy.deepcopy(base)
    load_parameters(final, global_params)
    return DiLoCoResult(model=final.eval(), bytes_communicated=sent,
                        bytes_per_worker_step=per_worker, workers=len(trains),
                        inner_steps=inner_steps, outer_steps=outer_steps, compress=compress,
                        losses=history, seconds=time.perf_counter() - start)
