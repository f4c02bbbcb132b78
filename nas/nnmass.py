"""NN-Mass (RAN-i, Definition 1 / Eq. 4): a training-free score of a network's topology.

A space offers capability ``topology`` by a method ``block_topologies(arch) ->
list[BlockTopology]``: one entry per block whose skip connections count (the repeated
residual blocks; stems, downsampling layers and heads are left out, as in the paper).

A block is a chain of layers. Node 0 is the block's input, node ``t`` the output of its
layer ``t``; ``channels[t]`` is the width of node ``t``. Layer ``t`` reads node ``t-1``.
A skip connection links a node to a later, non-adjacent node ``j >= i + 2`` (adjacent
nodes are already linked by the layer between them) and carries ``channels[i]`` links,
one per channel of its source: a residual addition supplies the source's channels.
Then, per block ``b``:

- ``i_b`` = the input channels of all its layers, ``sum(channels[0:L])``;
- ``rho_b`` = actual skip links / possible skip links, the possible ones being every pair
  ``(i, j)`` with ``j >= i + 2``;

and ``NN-Mass = sum_b i_b * rho_b``. :func:`bottleneck_mass` and :func:`convnext_block_mass`
are the closed forms of Fig. 5 / Eq. 6; the tests check them against this direct count.
Proposition 3: with a uniform expansion ``e`` the number of non-linear units (counted per
channel, as the paper's X) is ``k * NN-Mass``, with ``k`` from :func:`nonlinear_per_mass`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from nas.arch import Arch
from nas.errors import NASError
from nas.evaluators import Evaluator, Score
from nas.registry import register_evaluator


@dataclass(frozen=True)
class BlockTopology:
    """One block as a chain of layers with skip connections (see the module docstring)."""

    #: width of node 0 (the block's input) and of each layer's output
    channels: tuple[int, ...]
    #: actual skip connections as (source node, destination node), destination >= source + 2
    skips: tuple[tuple[int, int], ...] = ()
    #: channels that pass through a non-linear activation in the block (Prop. 3's units)
    nonlinear: int = 0

    def __post_init__(self):
        nodes = len(self.channels)
        for src, dst in self.skips:
            if not (0 <= src and src + 2 <= dst < nodes):
                raise ValueError(f"skip ({src}, {dst}) is not between non-adjacent nodes of a block with "
                                 f"{nodes} nodes")

    @property
    def input_channels(self) -> int:
        """``i_b``: input channels summed over the block's layers."""
        return sum(self.channels[:-1])

    def possible_links(self) -> int:
        c, n = self.channels, len(self.channels)
        return sum(c[i] * (n - i - 2) for i in range(n - 2))

    def actual_links(self) -> int:
        return sum(self.channels[src] for src, _ in self.skips)

    @property
    def density(self) -> float:
        """``rho_b``: the fraction of possible skip links that are present."""
        possible = self.possible_links()
        return self.actual_links() / possible if possible else 0.0

    @cached_property
    def mass(self) -> float:
        return self.input_channels * self.density


def residual_chain(channels, nonlinear: int = 0, residual: bool = True) -> BlockTopology:
    """A chain of layers with (or without) one residual from the block's input to its output."""
    channels = tuple(int(c) for c in channels)
    skips = ((0, len(channels) - 1),) if residual and len(channels) >= 3 else ()
    return BlockTopology(channels, skips, int(nonlinear))


def nn_mass(blocks: list[BlockTopology]) -> float:
    """NN-Mass of a network given its blocks (Eq. 4)."""
    return float(sum(b.mass for b in blocks))


def nonlinear_units(blocks: list[BlockTopology]) -> int:
    """Non-linear units of the blocks, per channel (Prop. 3's X)."""
    return sum(b.nonlinear for b in blocks)


def bottleneck_mass(w1: float, e: float) -> float:
    """Closed form for one ResNet bottleneck block (Fig. 5a, Eq. 6): 1x1 w1->w2, 3x3 w2->w2,
    1x1 w2->w1 with w2 = e*w1 and a residual: ``w1 (1 + 2e) / (2 + e)``."""
    return w1 * (1 + 2 * e) / (2 + e)


def convnext_block_mass(w1: float, e: float) -> float:
    """Closed form for one ConvNeXt block (Fig. 5b): 7x7 depthwise w1->w1, 1x1 w1->w2,
    1x1 w2->w1 with w2 = e*w1 and a residual: ``(2 w1 + w2) / 3``."""
    return (2 * w1 + e * w1) / 3


def nonlinear_per_mass(block: str, e: float) -> float:
    """Prop. 3's constant k with X = k * NN-Mass: ``2e(2+e)/(1+2e)`` for bottlenecks (two
    ReLUs of width w2), ``3e/(2+e)`` for ConvNeXt blocks (one GELU of width w2)."""
    if block == "bottleneck":
        return 2 * e * (2 + e) / (1 + 2 * e)
    if block == "convnext":
        return 3 * e / (2 + e)
    raise NASError(f"no closed form for block {block!r}; known: 'bottleneck', 'convnext'")


def arch_nn_mass(space, arch: Arch) -> float:
    """NN-Mass of ``arch`` of a space with capability ``topology``."""
    space.require("topology", "NN-Mass")
    return nn_mass(space.block_topologies(arch))


@register_evaluator("nnmass")
class NNMassEvaluator(Evaluator):
    """Training-free: quality = NN-Mass of the arch (RAN-i); no data, no forward pass."""

    metric = "nn_mass"

    def bind(self, space, data=None):
        super().bind(space, data)
        space.require("topology", "evaluator 'nnmass'")

    def evaluate(self, space, arch):
        blocks = space.block_topologies(arch)
        return Score(nn_mass(blocks), {"nn_mass": nn_mass(blocks), "nonlinear_channels": nonlinear_units(blocks),
                                       "blocks": len(blocks)})
