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


class CostModel(abc.ABC):
    """Prices OpSpecs. ``unit`` names what the number counts (for tables and plots)."""

    name: str = ""
    unit: str = ""

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

    def describe(self) -> str:
        return f"{self.name} ({self.unit})"


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
