"""Cost models: turn an architecture's OpSpecs into one number (lower is better).

An Arch's cost is the sum of its layers' costs plus a fixed overhead (zero for the
analytic models; measured LUTs record one per target).
"""

from __future__ import annotations

import abc
from typing import Iterable

from nas.errors import NASError
from nas.ops import OpSpec
from nas.registry import register_cost_model

#: units that count things: printed with SI prefixes (7.588M MACs)
COUNT_UNITS = ("MACs", "params", "ReLUs", "MAC-equivalents")


def si(value: float, digits: int = 4) -> str:
    """``3.3e9`` -> ``3.3G``, ``2.05e6`` -> ``2.05M``."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g}{prefix}"
    return f"{value:.{digits}g}"


def format_cost(value: float, unit: str | None) -> str:
    """A cost as every output prints it: counts with SI prefixes (``7.588M MACs``), other
    units with four significant digits (``8.123 ms``)."""
    number = si(value) if unit in COUNT_UNITS else f"{value:.4g}"
    return f"{number} {unit}" if unit else number


class CostModel(abc.ABC):
    """Prices architectures, usually as the sum of their layers' OpSpecs. ``unit`` names what
    the number counts (for tables and plots).

    Every budget, front and ledger entry uses :meth:`arch_cost`. An *additive* model (the
    default) prices layers: ``arch_cost`` is the sum of ``op_cost`` over the arch's OpSpecs
    plus ``overhead()``, which searchers that price layers (the ILP, differentiable
    relaxations) rely on. :class:`WholeArchCostModel` prices whole architectures instead."""

    name: str = ""
    unit: str = ""
    #: whether an arch's cost is the sum of its layers' op_cost plus overhead()
    additive: bool = True

    def arch_cost(self, space, arch) -> float:
        """The cost of ``arch``, an architecture of ``space``."""
        return self.cost(space.ops(arch))

    def min_cost(self, space) -> tuple:
        """``(cost, arch, exact)`` of the cheapest architecture of ``space``: the space's
        own minimum (exact where its costs separate over its choices, or it enumerates)."""
        return space.min_cost(self)

    @abc.abstractmethod
    def op_cost(self, op: OpSpec) -> float:
        """Cost of one layer."""

    def overhead(self) -> float:
        """Fixed cost of any model on the target (input/output handling, dispatch)."""
        return 0.0

    def cost(self, ops: Iterable[OpSpec]) -> float:
        # Layers repeat across archs and within one; price each distinct OpSpec once.
        cache = self.__dict__.setdefault("_op_costs", {})
        total = 0.0
        for op in ops:
            c = cache.get(op)
            if c is None:
                c = cache[op] = self.op_cost(op)
            total += c
        return float(total + self.overhead())

    def provenance(self, short: bool = False) -> str:
        """Where the costs come from, when a reader must know it to trust them (a measured
        LUT says whose machine measured it); empty for analytic models."""
        return ""


class WholeArchCostModel(CostModel):
    """A cost model that prices whole architectures (a table of measured networks, a timing
    of each candidate), not layers: subclasses implement :meth:`arch_cost`. Searchers that
    price layers refuse it (``Searcher.needs_layer_costs``)."""

    additive = False

    def _no_layers(self):
        return NASError(f"cost model {self.name!r} prices whole architectures, not layers: use an additive one "
                        "(a LUT target, macs, params, ...) where layer costs are needed")

    def op_cost(self, op):
        raise self._no_layers()

    def cost(self, ops):
        raise self._no_layers()

    @abc.abstractmethod
    def arch_cost(self, space, arch) -> float:
        """The cost of ``arch``, an architecture of ``space``."""

    def min_cost(self, space) -> tuple:
        # Space.min_cost's own rule (enumerate a small space, else the cheapest of the
        # extremes and samples), not a space's override, which may assume additive costs.
        from nas.space import Space

        return Space.min_cost(space, self)


def table_key(space, arch) -> str:
    """The key of ``arch`` in a table of architectures: the space's table key where it has
    one (a NAS-Bench-201 arch string), else the Arch's canonical JSON."""
    return space.table_key(arch) if callable(getattr(space, "table_key", None)) else arch.canonical_json()


def arch_from_key(space, key: str):
    """The architecture of ``space`` a table key names (NASError when it names none)."""
    from nas.arch import Arch

    if callable(getattr(space, "arch_from_table_key", None)):
        return space.arch_from_table_key(key)
    return space.validate(Arch.from_json(key))


@register_cost_model("table")
class TableCost(WholeArchCostModel):
    """Measured costs of whole architectures, read from a CSV file (optionally gzipped):
    one row per architecture, its key in ``key_column`` (the space's table key where it has
    one, e.g. a NAS-Bench-201 arch string; else the Arch's canonical JSON), its cost in
    ``column`` times ``scale``, in ``unit``. An architecture without a row cannot be
    priced (one-line error naming it); the cheapest is the cheapest row of the space."""

    def __init__(self, path: str | None = None, column: str | None = None, key_column: str = "arch",
                 unit: str = "", scale: float = 1.0):
        from nas.evaluators import BenchmarkTable

        if not path or not column:
            raise NASError("cost model 'table' needs path=FILE (a CSV with one measured cost per architecture) and "
                           "column=NAME (the column that holds the cost); key_column names the architectures' column "
                           "(default 'arch')")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise NASError(f"cost model 'table': scale must be a number > 0, got {scale!r}")
        self.table = BenchmarkTable.from_csv(path, key_column, column, float(scale))
        self.path, self.column, self.key_column, self.unit = str(path), column, key_column, unit or ""

    def arch_cost(self, space, arch) -> float:
        key = table_key(space, arch)
        try:
            return self.table.rows[key]
        except KeyError:
            raise NASError(f"cost table {self.path!r} has no row for {key!r} in column {self.key_column!r}; "
                           "every architecture the search may propose needs one") from None

    def min_cost(self, space) -> tuple:
        best = None
        for key, value in self.table.rows.items():
            if best is not None and value >= best[0]:
                continue
            try:
                arch = arch_from_key(space, key)
            except NASError:
                continue  # a row of another space or configuration
            best = (value, arch)
        if best is None:
            raise NASError(f"cost table {self.path!r} has no row for an architecture of space {space.name!r}")
        return best[0], best[1], True  # only rows can be priced: the cheapest row is the cheapest arch

    def provenance(self, short: bool = False) -> str:
        from pathlib import Path

        return f"from {Path(self.path).name if short else self.path}, column {self.column}"


@register_cost_model("macs")
class MACs(CostModel):
    """Multiply-accumulates of convolutions and linear layers."""

    unit = "MACs"

    def op_cost(self, op):
        return float(op.macs())


@register_cost_model("params")
class Params(CostModel):
    """Trainable parameters."""

    unit = "params"

    def op_cost(self, op):
        return float(op.num_params())


@register_cost_model("relu")
class ReLUCount(CostModel):
    """Non-linear units per image: the dominant cost of private inference."""

    unit = "ReLUs"

    def op_cost(self, op):
        return float(op.nonlinear())


@register_cost_model("roofline")
class Roofline(CostModel):
    """MobileNetV4's roofline latency model, summed over layers.

    Peak form (``peak_macs`` in MAC/s and ``peak_bw`` in bytes/s given): per layer
    ``max(MACs / peak_macs, bytes / peak_bw)`` in milliseconds. Ridge-point form
    (``ridge_point`` in MACs/byte given): per layer ``max(MACs, ridge_point * bytes)`` in
    MAC-equivalents, which orders networks as the peak form does for any device with that
    ridge point; ``ridge_point = 0`` is MAC counting. ``bytes`` are weights plus input and
    output activations of each layer at ``bytes_per_element`` (4 for float32, 1 for int8).
    """

    def __init__(self, peak_macs: float | None = None, peak_bw: float | None = None,
                 ridge_point: float | None = None, bytes_per_element: float = 4.0):
        for field, value in (("peak_macs", peak_macs), ("peak_bw", peak_bw), ("ridge_point", ridge_point),
                             ("bytes_per_element", bytes_per_element)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise NASError(f"roofline {field} must be a number, got {value!r}")
        peaks = peak_macs is not None or peak_bw is not None
        if peaks and ridge_point is not None:
            raise NASError("roofline takes either peak_macs and peak_bw, or ridge_point, not both")
        if peaks and (peak_macs is None or peak_bw is None or peak_macs <= 0 or peak_bw <= 0):
            raise NASError("roofline's peak form needs both peak_macs (MAC/s) and peak_bw (bytes/s) > 0")
        if not peaks and ridge_point is None:
            raise NASError("roofline needs peak_macs and peak_bw (MAC/s, bytes/s), or ridge_point (MACs/byte)")
        if ridge_point is not None and ridge_point < 0:
            raise NASError(f"roofline ridge_point must be >= 0 MACs/byte, got {ridge_point}")
        if bytes_per_element <= 0:
            raise NASError(f"roofline bytes_per_element must be > 0, got {bytes_per_element}")
        self.peak_macs = peak_macs
        self.peak_bw = peak_bw
        self.ridge_point = ridge_point
        self.bytes_per_element = bytes_per_element
        self.unit = "ms" if peaks else "MAC-equivalents"

    def op_bytes(self, op: OpSpec) -> float:
        return op.memory_elements() * self.bytes_per_element

    def op_cost(self, op):
        macs, nbytes = op.macs(), self.op_bytes(op)
        if self.ridge_point is not None:
            return float(max(macs, self.ridge_point * nbytes))
        return 1e3 * max(macs / self.peak_macs, nbytes / self.peak_bw)


@register_cost_model("pi")
class PrivateInference(CostModel):
    """Private-inference latency in ms: ``relu_ms`` per ReLU (the non-linear layers'
    garbled circuits or secure comparisons) plus ``mac_ms`` per MAC (the linear layers'
    secret-shared or homomorphic evaluation), summed over layers.

    The coefficients depend on the protocol, the network link and the machines, so they
    have no defaults: give both, or ``measurements``, a CSV file of whole-network private
    inference measurements with columns ``relus``, ``macs`` and ``ms`` (at least two rows
    that are not proportional), from which they are fitted by non-negative least squares.
    """

    unit = "ms"

    def __init__(self, relu_ms: float | None = None, mac_ms: float | None = None, measurements: str | None = None):
        given = relu_ms is not None or mac_ms is not None
        if given and measurements is not None:
            raise NASError("pi takes either relu_ms and mac_ms, or measurements (a CSV to fit them from), not both")
        if measurements is not None:
            relu_ms, mac_ms, self.fit_error = fit_pi_coefficients(measurements)
        elif relu_ms is None or mac_ms is None:
            raise NASError("cost model 'pi' needs relu_ms and mac_ms (ms per ReLU and per MAC of your private-inference "
                           "protocol), or measurements: a CSV with columns relus, macs, ms to fit them from")
        else:
            self.fit_error = None
        for field, value in (("relu_ms", relu_ms), ("mac_ms", mac_ms)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise NASError(f"pi {field} must be a number >= 0 (ms), got {value!r}")
        self.relu_ms, self.mac_ms = float(relu_ms), float(mac_ms)

    def op_cost(self, op):
        return self.relu_ms * op.nonlinear() + self.mac_ms * op.macs()


def fit_pi_coefficients(path) -> tuple[float, float, float]:
    """(ms per ReLU, ms per MAC, mean relative error of the fit) from a CSV of measured
    networks with columns ``relus``, ``macs``, ``ms``; non-negative least squares."""
    import csv
    from pathlib import Path

    import numpy as np
    from scipy.optimize import nnls

    path = Path(path).expanduser()
    if not path.is_file():
        raise NASError(f"pi measurements {str(path)!r} does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("relus", "macs", "ms") if c not in (reader.fieldnames or ())]
        if missing:
            raise NASError(f"pi measurements {str(path)!r} needs columns relus, macs, ms; it lacks {', '.join(missing)}")
        rows = []
        for row in reader:
            try:
                rows.append([float(row["relus"]), float(row["macs"]), float(row["ms"])])
            except ValueError:
                raise NASError(f"pi measurements {str(path)!r}: line {reader.line_num} has a value that is not a "
                               f"number: {row}") from None
    data = np.array(rows, dtype=float).reshape(-1, 3)
    if len(data) < 2 or np.linalg.matrix_rank(data[:, :2]) < 2:
        raise NASError(f"pi measurements {str(path)!r} must hold at least two networks whose ReLU and MAC counts "
                       "are not proportional, to separate the two coefficients")
    if (data < 0).any():
        raise NASError(f"pi measurements {str(path)!r} has negative values")
    # Scale the columns so that ReLUs (1e4-1e6) and MACs (1e7-1e10) weigh alike in the solve.
    scale = data[:, :2].max(axis=0)
    (relu_ms, mac_ms), _ = nnls(data[:, :2] / scale, data[:, 2])
    relu_ms, mac_ms = relu_ms / scale[0], mac_ms / scale[1]
    predicted = data[:, 0] * relu_ms + data[:, 1] * mac_ms
    error = float(np.mean(np.abs(predicted - data[:, 2]) / np.maximum(data[:, 2], 1e-12)))
    return float(relu_ms), float(mac_ms), error
