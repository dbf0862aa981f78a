"""Merging models that share a base, tensor by tensor, over the fp32 latent weights.

The maths is mergekit 0.1.5's (linear.py, generalized_task_arithmetic.py, sparsify.py) with its
defaults, so a merge here gives the tensors mergekit gives (bench/mergekit_check.py compares
them: linear, task arithmetic and TIES agree to float rounding), except DARE's rescale, which
is the paper's. Every method but `linear` works on task vectors tau_i = model_i - base:

    merged = base + lam * sum_i(w_i * m_i * tau_i')          (task arithmetic, DARE)
    merged = base + lam * sum_i(w_i * m_i * tau_i') / sum_i(w_i * m_i)        (TIES)

- task arithmetic (Ilharco et al., 2023): tau_i' = tau_i, m_i = 1. With lam = 1/n and equal
  weights it is the uniform merge, where a DiLoCo outer step with lr 1 and no momentum lands.
- TIES (Yadav et al., 2023): tau_i' keeps the `density` fraction of tau_i's largest magnitudes
  (per tensor, at least one), and m_i = 1 where w_i tau_i' has the elected sign (the sign of
  sum_i w_i tau_i'), else 0.
- DARE (Yu et al., 2023): tau_i' drops each element with probability `drop_rate` and scales
  the survivors by 1 / (1 - drop_rate), as the paper does (mergekit instead restores each
  tensor's L1 norm); with `sign_election`, TIES' sign mask too (mergekit's dare_ties).
The checkpoint keeps latent weights: BitLinear re-quantises them to ternary when it runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from merge.method_names import METHODS

StateDict = dict[str, torch.Tensor]


class MergeError(ValueError):
    """Inputs that cannot be merged; the message names the problem and the fix."""


def linear(models: Sequence[Mapping[str, torch.Tensor]],
           weights: Sequence[float] | None = None) -> StateDict:
    """The weighted average sum_i w_i theta_i / sum_i w_i."""
    w = _weights(weights, len(models))
    _check_same_tensors(models)
    return {name: _cast(sum(wi * m[name].float() for wi, m in zip(w, models, strict=True))
                        / sum(w), models[0][name])
            for name in models[0]}


def task_arithmetic(base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]],
                    lam: float = 1.0, weights: Sequence[float] | None = None) -> StateDict:
    """base + lam * (weighted sum of the task vectors)."""
    return _combine(base, models, lam, weights, sparsify=None, elect_sign=False,
                    normalize=False)


def ties(base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]],
         density: float = 0.5, lam: float = 1.0,
         weights: Sequence[float] | None = None) -> StateDict:
    """TIES-merging (Yadav et al., 2023): trim to the largest `density`, elect signs, merge the
    agreeing values."""
    _fraction("density", density, low_open=True)

    def trim(delta: torch.Tensor) -> torch.Tensor:
        return _keep_largest(delta, density)

    return _combine(base, models, lam, weights, sparsify=trim, elect_sign=True, normalize=True)


def dare(base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]],
         drop_rate: float = 0.5, lam: float = 1.0, seed: int = 0,
         weights: Sequence[float] | None = None, sign_election: bool = False) -> StateDict:
    """DARE (Yu et al., 2023): drop each task-vector element with probability `drop_rate`,
    rescale the rest by 1/(1 - drop_rate); the masks come from `seed`, so a merge repeats."""
    _fraction("drop_rate", drop_rate, high_open=True)
    generator = torch.Generator().manual_seed(seed)
    keep = 1.0 - drop_rate

    def drop(delta: torch.Tensor) -> torch.Tensor:
        mask = torch.rand(delta.shape, generator=generator) < keep
        return delta * mask / keep

    return _combine(base, models, lam, weights, sparsify=drop, elect_sign=sign_election,
                    normalize=False)


def merge(method: str, base: Mapping[str, torch.Tensor],
          models: Sequence[Mapping[str, torch.Tensor]], **options) -> StateDict:
    """Dispatch by name (`METHODS`); `options` are that method's keyword arguments."""
    if method == "linear":
        return linear(models, **options)
    functions = {"task_arithmetic": task_arithmetic, "ties": ties, "dare": dare}
    if method not in functions:
        raise MergeError(f"unknown merge method {method!r}: use one of {', '.join(METHODS)}")
    return functions[method](base, models, **options)


def _combine(base, models, lam, weights, *, sparsify, elect_sign, normalize) -> StateDict:
    w = _weights(weights, len(models))
    _check_same_tensors([base, *models])
    merged = {}
    for name, base_tensor in base.items():
        origin = base_tensor.float()
        deltas = torch.stack([m[name].float() - origin for m in models])
        if sparsify is not None:
            deltas = torch.stack([sparsify(d) for d in deltas])
        scale = torch.tensor(w, dtype=torch.float32).view(-1, *[1] * origin.dim())
        weighted = deltas * scale
        mask = (weighted.sign() == _elected_sign(weighted)).float() if elect_sign else None
        total = (weighted * mask).sum(0) if mask is not None else weighted.sum(0)
        if normalize:
            divisor = (scale * mask).sum(0) if mask is not None else scale.sum(0)
            divisor[divisor == 0] = 1.0  # no model agrees: the sum is zero anyway
            total = total / divisor
        merged[name] = _cast(origin + lam * total, base_tensor)
    return merged


def _elected_sign(weighted: torch.Tensor) -> torch.Tensor:
    """TIES' sign election by total mass: +1 where the weighted sum is >= 0, else -1."""
    return (weighted.sum(0) >= 0).float() * 2 - 1


def _keep_largest(delta: torch.Tensor, density: float) -> torch.Tensor:
    """delta with all but its max(1, int(density * numel)) largest magnitudes zeroed."""
    k = max(1, int(density * delta.numel()))
    if k >= delta.numel():
        return delta
    flat = delta.flatten()
    mask = torch.zeros_like(flat)
    mask[flat.abs().topk(k).indices] = 1.0
    return (flat * mask).view_as(delta)


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if n == 0:
        raise MergeError("no models to merge: pass at least one specialist")
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    if len(w) != n:
        raise MergeError(f"{len(w)} weights for {n} models: give one weight per model")
    if sum(w) == 0:
        raise MergeError("the weights sum to 0: give at least one a non-zero weight")
    return w


def _fraction(name: str, value: float, *, low_open: bool = False, high_open: bool = False) -> None:
    above_low = value > 0.0 if low_open else value >= 0.0
    below_high = value < 1.0 if high_open else value <= 1.0
    if not (above_low and below_high):  # also refuses NaN
        low, high = "(0" if low_open else "[0", "1)" if high_open else "1]"
        raise MergeError(f"{name} {value} is outside {low}, {high}: choose a value in it")


def _check_same_tensors(states: Sequence[Mapping[str, torch.Tensor]]) -> None:
    first = states[0]
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != first.keys():
            missing = sorted(set(first) ^ set(state))[:3]
            raise MergeError(f"model {i} has different tensors ({', '.join(missing)}): merge "
                             "only models of one architecture")
        for name, tensor in state.items():
            if tensor.shape != first[name].shape:
                raise MergeError(f"model {i}'s {name} is {tuple(tensor.shape)}, not "
                                 f"{tuple(first[name].shape)}: merge only models of one shape")


def _cast(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return value.to(like.dtype) if like.is_floating_point() else value.round().to(like.dtype)
