"""Relaxed architectures: the interface differentiable searchers train through.

A space with the ``relaxed`` capability returns, from ``space.relaxed(base)``, a
:class:`Relaxation`: one network in which the searched decisions are continuous
parameters trained by gradient descent together with the weights. Two forms exist:

- *Activation relaxation* (RAN-e's AFRB): one scalar per block moves it between a
  non-linear block and a linear one that collapses into a single convolution; the
  structural penalty is ``sum((alpha - 1)^2)`` and the Arch is read off by a band rule.
- *Mixed operations* (DARTS, ProxylessNAS, GDAS): per decision, logits over its options;
  each forward pass uses a sample of them (:func:`gumbel_hard`), and the Arch is their
  argmax.

Either way the relaxation prices itself: :meth:`Relaxation.expected_cost` is the cost the
run's cost model gives the network, as a differentiable function of the relaxation's
parameters (an expectation over the options' probabilities), so a searcher can add a
latency term to its loss.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from nas.arch import Arch
from nas.costs import CostModel
from nas.ops import OpSpec


class Relaxation(nn.Module, abc.ABC):
    """A network over a continuous relaxation of some of a space's decisions.

    ``forward(x)`` gives class logits. :meth:`arch_parameters` are the relaxation's own
    parameters (trained by the searcher's architecture optimizer), every other parameter
    is a weight.
    """

    #: what :meth:`state` reports per decision (``"alpha"`` or ``"probs"``)
    state_kind: str = ""

    @abc.abstractmethod
    def arch_parameters(self) -> dict[str, nn.Parameter]:
        """The relaxation's parameters by name."""

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters().values()}
        return [p for p in self.parameters() if id(p) not in arch]

    def weight_optimizer(self, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
                         ) -> torch.optim.Optimizer:
        """The optimizer of the weights (SGD with momentum; a weight-sharing relaxation
        returns its supernet's own)."""
        return torch.optim.SGD(self.weight_parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    def generators(self) -> list[torch.Generator]:
        """The random generators the relaxation draws from while training (e.g. Gumbel
        noise), whose states a resumable search saves."""
        return []

    def penalty(self) -> torch.Tensor:
        """The structural term of the search objective (zero unless the relaxation has one)."""
        return torch.zeros(())

    @abc.abstractmethod
    def expected_cost(self) -> torch.Tensor:
        """The cost of the network under the cost model given to :meth:`bind_cost`, as a
        differentiable function of the relaxation's parameters."""

    @abc.abstractmethod
    def bind_cost(self, cost_model: CostModel) -> None:
        """Price every option of every relaxed decision with ``cost_model``."""

    @abc.abstractmethod
    def derive(self, **rule) -> Arch:
        """The discrete Arch the relaxation stands for now."""

    @abc.abstractmethod
    def distributions(self) -> dict[str, tuple[tuple, list[float]]]:
        """Per relaxed decision, its options and how probable the relaxation holds each now
        (what a derived Arch over a budget gives way by: the least probable changes first)."""

    @abc.abstractmethod
    def state(self) -> dict[str, float | list[float]]:
        """Per relaxed decision, its current alpha or option probabilities (for plots)."""

    def summary(self, arch: Arch) -> dict:
        """Space-specific counts describing a derived Arch (e.g. blocks collapsed)."""
        return {}


def ops_cost(cost_model: CostModel, ops: list[OpSpec]) -> float:
    """The cost of some layers of a network, without the model's fixed overhead (layer
    costs add, the overhead is counted once per network)."""
    return cost_model.cost(ops) - cost_model.overhead()


def gumbel_hard(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None
                ) -> tuple[int, torch.Tensor]:
    """GDAS's sampler: an option drawn from ``softmax(logits)`` (Gumbel-max), and a
    one-hot gate vector that is exactly one-hot in the forward pass and carries the
    Gumbel-softmax gradient (straight-through) back to ``logits``."""
    uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-10, 1 - 1e-10)
    gumbel = -torch.log(-torch.log(uniform))
    soft = F.softmax((logits + gumbel) / tau, dim=0)
    index = int(soft.detach().argmax())
    hard = torch.zeros_like(soft)
    hard[index] = 1.0
    return index, hard - soft.detach() + soft
