"""The DiLoCo outer optimiser (Douillard et al., 2023): Nesterov SGD on pseudo-gradients.

Each worker starts an outer step from the same global weights, takes H inner steps on its own
data, and reports its pseudo-gradient `global - local`. Their mean is the gradient the outer
optimiser applies to the global weights. With lr 1 and no momentum one outer step lands exactly
on the mean of the workers' weights, i.e. a uniform task-arithmetic merge of their task vectors.

torchft's DiLoCo (merge/diloco_worker.py) takes the optimiser `outer_optimizer` builds, and
`OuterStep` below is the same arithmetic in one process: the reference that distributed runs
are checked against, and the engine of `bench/diloco.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

OUTER_LR = 0.7  # DiLoCo's published defaults
OUTER_MOMENTUM = 0.9

StateDict = dict[str, torch.Tensor]


def outer_optimizer(params: Iterable[torch.nn.Parameter], lr: float = OUTER_LR,
                    momentum: float = OUTER_MOMENTUM) -> torch.optim.SGD:
    """SGD with Nesterov momentum (plain SGD when momentum is 0: torch refuses Nesterov then)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0)


def pseudo_gradient(global_state: Mapping[str, torch.Tensor],
                    local_states: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
    """mean over workers of (global - local), per tensor, in float32."""
    if not local_states:
        raise ValueError("no worker states to average: pass at least one")
    return {
        name: sum(global_state[name].float() - local[name].float() for local in local_states)
        / len(local_states)
        for name in global_state
    }


class OuterStep:
    """Holds the global weights and the outer optimiser's momentum across outer steps."""

    def __init__(self, global_state: Mapping[str, torch.Tensor], lr: float = OUTER_LR,
                 momentum: float = OUTER_MOMENTUM) -> None:
        self.params = {name: torch.nn.Parameter(t.detach().float().clone())
                       for name, t in global_state.items()}
        self.optimizer = outer_optimizer(self.params.values(), lr=lr, momentum=momentum)

    def state(self) -> StateDict:
        """A copy of the global weights (what every worker starts its next H steps from)."""
        return {name: p.detach().clone() for name, p in self.params.items()}

    def step(self, local_states: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
        """Apply the workers' mean pseudo-gradient; returns the new global weights."""
        return self.apply(pseudo_gradient(self.state(), local_states))

    def apply(self, grads: Mapping[str, torch.Tensor]) -> StateDict:
        """One optimiser step with an already averaged pseudo-gradient (say, one that went
        through a wire format); returns the new global weights."""
        for name, p in self.params.items():
            p.grad = grads[name].detach().clone().view_as(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.state()
