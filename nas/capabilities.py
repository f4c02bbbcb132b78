"""Optional capabilities of a space, as typed interfaces.

A searcher or evaluator that needs more of a space than decisions, ops and models names a
capability (``Searcher.requires``, :meth:`nas.Space.require`); a space offers it by
implementing that capability's methods, nothing else to declare. Each capability is a
``runtime_checkable`` :class:`typing.Protocol`, and :func:`offers` is the one check; the
error for a space that lacks one names the methods it would need (:func:`missing`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Tabular(Protocol):
    """``table``: a tabular benchmark (``nb201``)."""

    def benchmark_table(self, path: str | None = None):
        """A :class:`nas.evaluators.BenchmarkTable`: the space's own, or one read from ``path``
        (``column``, ``key_column`` and ``scale`` keywords, where the space takes them, choose
        another column: the ``table`` evaluator passes them when the run gives them)."""

    def table_key(self, arch) -> str:
        """The key of ``arch`` in that table."""


@runtime_checkable
class WithSupernet(Protocol):
    """``supernet``: one set of shared weights for every arch (``uib``)."""

    def supernet(self):
        """A module with ``forward(x, arch)``, ``optimizer(lr, momentum, weight_decay)`` and
        ``export(arch)`` (see :mod:`nas.training.supernet`)."""


@runtime_checkable
class Relaxable(Protocol):
    """``relaxed``: a continuous relaxation for differentiable search (``afrb``, ``uib``)."""

    def relaxed(self, base=None, seed: int = 0, **options):
        """A :class:`nas.training.relax.Relaxation` over the decisions ``base`` does not fix;
        options a space has no use for are ignored (``alpha_init``, ``cost_sigma``, ``tau``)."""


@runtime_checkable
class Layerwise(Protocol):
    """``layerwise``: a teacher whose layers each have candidate replacements (``hant``;
    see :mod:`nas.training.layerwise`)."""

    reference_option: str

    def layer_decisions(self) -> list: ...

    def teacher_chain(self) -> list: ...

    def layer_ops(self, layer: int, option) -> list: ...

    def fixed_ops(self) -> list: ...

    def parameter_free(self, layer: int, option) -> bool: ...


@runtime_checkable
class WithTopology(Protocol):
    """``topology``: each block as a chain of layers with skip connections, for NN-Mass."""

    def block_topologies(self, arch) -> list:
        """A :class:`nas.nnmass.BlockTopology` per block."""


@runtime_checkable
class WithReLUStages(Protocol):
    """``relu_stages``: ReLU counts and treatments per stage, for DeepReDuce (``relu_reuse``)."""

    def stage_relus(self, arch) -> list: ...

    def treat_stages(self, arch, stages, treatment): ...

    def scale_channels(self, arch, factor: float): ...


#: capability name -> its interface
CAPABILITIES: dict[str, type] = {
    "table": Tabular, "supernet": WithSupernet, "relaxed": Relaxable, "layerwise": Layerwise,
    "topology": WithTopology, "relu_stages": WithReLUStages,
}


def _members(protocol: type) -> list[str]:
    methods = {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return sorted(methods | set(getattr(protocol, "__annotations__", {})))


def offers(space, capability: str) -> bool:
    """Whether ``space`` implements ``capability`` (a name of :data:`CAPABILITIES`)."""
    return isinstance(space, CAPABILITIES[capability])


def missing(space, capability: str) -> list[str]:
    """The members of ``capability``'s interface ``space`` lacks."""
    return [n for n in _members(CAPABILITIES[capability]) if not hasattr(space, n)]


def signature_of(capability: str) -> str:
    """The interface's members as the error names them: ``supernet()``, ``reference_option``."""
    protocol = CAPABILITIES[capability]
    return ", ".join(n if n in getattr(protocol, "__annotations__", {}) else f"{n}()" for n in _members(protocol))
