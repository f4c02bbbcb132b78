"""The Space base class: what every search space plug-in offers."""

from __future__ import annotations

import abc
import itertools
import math
from typing import Iterator

import numpy as np
from torch import nn

from nas.arch import Arch, Decision
from nas.capabilities import CAPABILITIES, offers, signature_of
from nas.errors import NASError, one_of
from nas.ops import OpSpec


def number_list(values, where: str, field: str, kind=int, minimum: float = 1, distinct_sorted: bool = False) -> tuple:
    """A space's list-valued setting as a tuple of ``kind``, each >= ``minimum``.

    ``distinct_sorted`` for option grids (order and repeats carry no meaning there); keep
    the given order for per-stage settings such as base widths.
    """
    noun = "integers" if kind is int else "numbers"
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        raise NASError(f"{where} field {field} must be a list of {noun}, got {values!r}") from None
    if distinct_sorted:
        out = tuple(sorted(set(out)))
    if not out or min(out) < minimum:
        raise NASError(f"{where} field {field} must be a non-empty list of {noun} >= {minimum}, got {values!r}")
    return out


#: What a space implements to offer each optional capability (for the error a searcher
#: gives when a space lacks one). Spaces declare ``supernet``, ``relaxed`` and ``layerwise``
#: by adding them in :meth:`Space.capabilities`; the others are detected.
class Space(abc.ABC):
    """A search space: decisions, sampling, validation, model building and costing.

    Subclasses implement :meth:`decisions`, :meth:`build` and :meth:`ops`, and take their
    configuration as keyword arguments with defaults (the CLI's ``space.*`` fields). A
    trainable space takes ``resolution``, ``num_classes`` and ``in_channels``.

    Optional capabilities, which searchers and evaluators ask for by name (see
    :meth:`require`), are typed interfaces (:mod:`nas.capabilities`): a space offers one by
    implementing its methods (``table``: ``benchmark_table`` and ``table_key``; ``supernet``;
    ``relaxed``; ``layerwise``; ``topology``; ``relu_stages``). ``presets`` (:meth:`_presets`)
    are listed among them when a space has any.
    """

    name: str = ""  # set by the registry
    #: fields the CLI takes from the run's data set when they are left null (its config node
    #: leaves them null); a space whose networks have a fixed input (a tabular benchmark,
    #: a network priced at ImageNet size) lists none
    data_fields: tuple[str, ...] = ("resolution", "num_classes", "in_channels")
    #: config groups the CLI selects with this plug-in unless the command line names them
    config_defaults: dict[str, str] = {}

    def __init__(self, resolution: int = 32, num_classes: int = 10, in_channels: int = 3):
        for field, value in (("resolution", resolution), ("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise NASError(f"space field {field} must be a positive integer, got {value!r}")
        self.resolution = resolution
        self.num_classes = num_classes
        self.in_channels = in_channels
        self._decision_cache: list[Decision] | None = None

    # ------------------------------------------------------------------ decisions
    @abc.abstractmethod
    def _make_decisions(self) -> list[Decision]:
        """The space's decisions, in a fixed order (computed once)."""

    def decisions(self, tag: str | None = None) -> list[Decision]:
        if self._decision_cache is None:
            ds = list(self._make_decisions())
            names = [d.name for d in ds]
            if len(set(names)) != len(names):
                raise ValueError(f"space {self.name!r} declares a decision name twice")
            self._decision_cache = ds
        if tag is None:
            return list(self._decision_cache)
        return [d for d in self._decision_cache if d.tag == tag]

    def decision(self, name: str) -> Decision:
        for d in self.decisions():
            if d.name == name:
                return d
        raise NASError(f"space {self.name!r} has no decision {name!r}")

    def size(self) -> int:
        """Number of decision combinations (an upper bound on distinct networks)."""
        return math.prod(len(d.options) for d in self.decisions())

    # ------------------------------------------------------------------ archs
    def sample(self, rng: np.random.Generator, attempts: int = 1000) -> Arch:
        """A uniformly random choice per decision, canonicalised; rejection sampling while
        :meth:`check` refuses, so that searchers only ever see valid archs."""
        for _ in range(attempts):
            values = {d.name: d.options[int(rng.integers(len(d.options)))] for d in self.decisions()}
            arch = self.canonicalize(Arch(values))
            try:
                self.check(arch)
                return arch
            except NASError as refusal:
                last = refusal
        raise NASError(f"space {self.name!r}: no valid arch in {attempts} samples; the last was refused with: {last}")

    def default_arch(self) -> Arch:
        """Where a searcher holds the decisions it is not searching (e.g. the blocks while
        a two-stage search shapes the stages). The default takes each decision's first
        option."""
        return self.canonicalize(Arch({d.name: d.options[0] for d in self.decisions()}))

    def canonicalize(self, arch: Arch) -> Arch:
        """Map archs that build the same network to one representative (e.g. decisions of
        blocks that a depth decision switches off). The default changes nothing."""
        return arch

    def check(self, arch: Arch) -> None:
        """Space-specific constraints beyond per-decision options; raise NASError."""

    def validate(self, arch) -> Arch:
        """Check ``arch`` against the space and return its canonical form (NASError if bad)."""
        if not isinstance(arch, Arch):
            arch = Arch(arch)
        known = {d.name: d for d in self.decisions()}
        unknown = [k for k in arch if k not in known]
        if unknown:
            raise NASError(
                f"arch has decision {unknown[0]!r} that space {self.name!r} does not have; "
                f"its decisions are: {', '.join(known)}"
            )
        missing = [k for k in known if k not in arch]
        if missing:
            raise NASError(f"arch lacks decision {missing[0]!r} of space {self.name!r} ({len(missing)} missing)")
        values = {}
        for name, d in known.items():
            values[name] = d.options[d.index(arch[name])]  # NASError names the options
        arch = Arch(values)
        self.check(arch)
        return self.canonicalize(arch)

    def enumerate(self) -> Iterator[Arch]:
        """Every combination of options (only sensible for small spaces)."""
        ds = self.decisions()
        for combo in itertools.product(*(d.options for d in ds)):
            yield Arch(dict(zip((d.name for d in ds), combo)))

    # ------------------------------------------------------------------ models
    @abc.abstractmethod
    def build(self, arch: Arch) -> nn.Module:
        """A standalone ``torch.nn.Module`` for ``arch`` taking ``input_shape`` inputs."""

    def check_input_size(self) -> None:
        """Refuse a resolution the network cannot downsample even once (e.g. 1x1 images
        through stride-2 stages train without an error but mean nothing). Deeper strided
        layers may see 1 px: small images in a space made for large ones are allowed."""
        for op in self.ops(self.default_arch()):
            stride, res = op.get("stride", 1), op.get("res")
            if isinstance(stride, int) and isinstance(res, int) and stride > 1:
                if res < stride:
                    raise NASError(f"space.resolution={self.resolution} is too small for space {self.name!r}: its "
                                   f"first downsampling layer {op.name or op.kind!r} takes {res} px with stride "
                                   f"{stride}; use a larger resolution (null: the data set's)")
                return

    @abc.abstractmethod
    def ops(self, arch: Arch) -> list[OpSpec]:
        """The layers of ``arch`` as OpSpecs, for costing."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    def config(self) -> dict:
        """The space's config fields and values (what ``space.*`` overrides set)."""
        from nas.registry import config_fields

        return {k: getattr(self, k) for k in config_fields(type(self)) if hasattr(self, k)}

    # ------------------------------------------------------------------ presets
    def _presets(self) -> dict[str, dict]:
        """Published networks of this space as ``name -> {decision: option}``."""
        return {}

    def presets(self) -> list[str]:
        return list(self._presets())

    def preset(self, name: str) -> Arch:
        table = self._presets()
        if name not in table:
            raise NASError(f"space {self.name!r} has no preset {name!r}; presets: {one_of(table)}")
        return self.validate(Arch(table[name]))

    # ------------------------------------------------------------------ capabilities

    def resolve_arch(self, value: str, field: str = "arch") -> Arch:
        """An Arch from a preset name of this space or a JSON file (``arch.json`` of a run);
        ``field`` names the setting it came from, for the error."""
        from pathlib import Path

        if value in self.presets():
            return self.preset(value)
        path = Path(str(value)).expanduser()
        if not path.is_file():
            if self.presets():
                raise NASError(f"{field}={value!r} is neither a preset of space {self.name!r} "
                               f"({one_of(self.presets())}) nor a path to an arch JSON file")
            raise NASError(f"{field}={value!r} is not a path to an arch JSON file (space {self.name!r} has no presets)")
        return self.validate(Arch.from_json(path.read_text()))

    # ------------------------------------------------------------------ capabilities
    def capabilities(self) -> set[str]:
        """The optional capabilities this space offers (:mod:`nas.capabilities`), and
        ``presets`` when it has any."""
        offered = {name for name in CAPABILITIES if offers(self, name)}
        return offered | ({"presets"} if self._presets() else set())

    def require(self, capability: str, who: str) -> None:
        """Raise a NASError naming the missing capability and the methods that would offer it
        (called by searchers and evaluators)."""
        if capability not in self.capabilities():
            how = f"; to offer it, implement {signature_of(capability)}" if capability in CAPABILITIES else ""
            raise NASError(
                f"{who} needs a space with {capability!r}, and space {self.name!r} does not offer it "
                f"(it offers: {', '.join(sorted(self.capabilities())) or 'nothing optional'}){how}"
            )

    def all_ops(self, samples: int = 2000, seed: int = 0) -> list[OpSpec]:
        """Every distinct OpSpec (by key) the space can produce, for building a LUT.

        Spaces of up to 20,000 archs are enumerated (complete); larger ones return the ops
        of ``samples`` random archs plus the smallest and largest choices. Spaces that can
        list their ops directly override this with the complete set.
        """
        if self.size() <= 20_000:
            archs = (self.canonicalize(a) for a in self.enumerate())
        else:
            rng = np.random.default_rng(seed)
            ds = self.decisions()
            extremes = [self.canonicalize(Arch({d.name: d.options[i] for d in ds})) for i in (0, -1)]
            archs = itertools.chain(extremes, (self.sample(rng) for _ in range(samples)))
        unique: dict[str, OpSpec] = {}
        for arch in archs:
            for op in self.ops(arch):
                unique.setdefault(op.key, op)
        return list(unique.values())

    def min_cost(self, cost_model, n_samples: int = 2000, seed: int = 0) -> tuple[float, Arch, bool]:
        """The cheapest architecture under ``cost_model``: ``(cost, arch, exact)``.

        Small spaces are enumerated (exact). Others take the cheapest of the first and last
        options everywhere and ``n_samples`` random archs (``exact`` is False); spaces whose
        cost is a sum over independent choices override this with the exact minimum.
        """
        if self.size() <= 4096:
            candidates = (self.canonicalize(a) for a in self.enumerate())
            exact = True
        else:
            rng = np.random.default_rng(seed)
            ds = self.decisions()
            firsts = self.canonicalize(Arch({d.name: d.options[0] for d in ds}))
            lasts = self.canonicalize(Arch({d.name: d.options[-1] for d in ds}))
            candidates = itertools.chain([firsts, lasts], (self.sample(rng) for _ in range(n_samples)))
            exact = False
        cost, arch = self.cheapest(cost_model, candidates)
        return cost, arch, exact

    def cheapest(self, cost_model, archs) -> tuple[float, Arch]:
        """``(cost, arch)`` of the cheapest of ``archs`` that satisfy the space's constraints."""
        best = None
        for arch in archs:
            arch = self.canonicalize(arch)
            try:
                self.check(arch)
            except NASError:
                continue
            c = cost_model.arch_cost(self, arch)
            if best is None or c < best[0]:
                best = (c, arch)
        if best is None:
            raise NASError(f"space {self.name!r}: none of the architectures tried satisfies its constraints")
        return best
