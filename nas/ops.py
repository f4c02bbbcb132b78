"""OpSpecs: hashable descriptions of layers, and the op kinds that count and build them.

An :class:`OpSpec` is one layer (or one whole block) as it will run: its kind plus
the parameters that kind needs (channels, input resolution, kernel, stride, ...). Its
canonical :attr:`OpSpec.key` indexes latency LUTs. From an OpSpec alone one can count
MACs, parameters, bytes moved and non-linear units, and build the layer in isolation;
spaces build their models from the same OpSpecs, so the analytic counts and the real
model cannot drift apart.

Conventions (they match ``torch.utils.flop_counter`` and ``sum(p.numel())``):

- MACs are those of convolutions and linear layers (matrix products); normalisation,
  activation, pooling and additions cost no MACs.
- Parameters are trainable tensors; BatchNorm has 2 per channel (running statistics are
  buffers, not parameters).
- Non-linear units are the elements that pass through a non-linear activation (ReLU,
  ReLU6, SiLU, GELU, hard-swish, PReLU, sigmoid): the cost of private inference.
- Activations are square: ``res`` is the input height and width.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from nas.errors import NASError, one_of

# --------------------------------------------------------------------------- OpSpec

#: (MACs, parameters, non-linear units) per (kind, params) of every OpSpec counted so far
_COUNTS: dict = {}


@dataclass(frozen=True)
class OpSpec:
    """One layer as it will run. ``name`` says where it sits in the model; it is not part
    of the key, so identical layers in different places share one LUT entry.

    A space's ``ops(arch)`` lists its network as OpSpecs, in order: every cost model (MACs,
    parameters, ReLUs, roofline, LUT latency) prices these and nothing else. Make one with
    ``OpSpec.make(kind, name, **params)``; the built-in kinds (``nas.ops.OP_KINDS``):

    - ``conv``: c_in, c_out, res (input height = width), k; stride, groups (c_in for a
      depthwise conv), bias, bn (BatchNorm after it), act (relu, relu6, silu, gelu,
      hswish, sigmoid or None), pre_act, padding.
    - ``norm``: BatchNorm with an optional act; ``linear``: c_in, c_out (a flat vector);
      ``pool``: mode avg or max, k, stride; ``gap``: global average pooling to a vector.
    - ``add``: the addition of a residual connection (c_in, res). A residual block is its
      layers followed by an ``add``; the model the space builds adds the branches itself.
    - ``identity`` and ``zero``: a skip and a cut edge (cell spaces such as NAS-Bench-201).
    - ``mbconv``: a whole inverted-residual block (c_in, c_out, res, k, stride, e, act),
      counted as the sum of its layers.

    A layer none of these describe (a block with attention, squeeze-excite or parallel
    branches) is a kind of the space's own: subclass ``nas.ops.TracedOpKind`` (its counts
    come from tracing the module its ``build(**params)`` returns, so they are exact by
    construction) or ``nas.ops.OpKind`` (write ``macs``/``params``/``nonlinear``), and
    register it with ``@nas.register_op_kind("name")``. A LUT measures each distinct
    OpSpec of every kind as its ``build()`` module."""

    kind: str
    params: tuple
    name: str = field(default="", compare=False)
    _dict: dict = field(default=None, compare=False, repr=False, hash=False)

    @classmethod
    def make(cls, kind: str, name: str = "", **params) -> "OpSpec":
        if kind not in OP_KINDS:
            raise NASError(f"unknown op kind {kind!r}; known op kinds: {one_of(sorted(OP_KINDS))}")
        full = dict(OP_KINDS[kind].defaults)
        full.update(params)
        missing = [p for p in OP_KINDS[kind].required if p not in full]
        if missing:
            raise NASError(f"op kind {kind!r} needs parameter(s) {', '.join(missing)}")
        return cls(kind, tuple(sorted(full.items())), name)

    def __getitem__(self, item):
        return self.p[item]

    def get(self, item, default=None):
        return self.p.get(item, default)

    @property
    def p(self) -> dict:
        if self._dict is None:
            object.__setattr__(self, "_dict", dict(self.params))
        return self._dict

    @property
    def key(self) -> str:
        """Canonical LUT key, e.g. ``conv(act=relu,bn=True,c_in=3,...)``."""
        return f"{self.kind}(" + ",".join(f"{k}={v}" for k, v in self.params) + ")"

    # Counting, delegated to the op kind.
    @property
    def op_kind(self) -> "OpKind":
        return OP_KINDS[self.kind]

    def _counts(self) -> tuple[int, int, int]:
        # Searchers price thousands of archs made of the same few ops: count each op once.
        key = (self.kind, self.params)
        counts = _COUNTS.get(key)
        if counts is None:
            kind, p = self.op_kind, self.p
            counts = _COUNTS[key] = (int(kind.macs(**p)), int(kind.params(**p)), int(kind.nonlinear(**p)))
        return counts

    def macs(self) -> int:
        return self._counts()[0]

    def num_params(self) -> int:
        return self._counts()[1]

    def nonlinear(self) -> int:
        return self._counts()[2]

    def memory_elements(self) -> int:
        """Elements read and written: weights plus input and output activations of each
        internal layer (what the roofline model's memory time is made of)."""
        return int(self.op_kind.memory_elements(**self.p))

    def out_shape(self) -> tuple:
        return self.op_kind.out_shape(**self.p)

    def in_shape(self) -> tuple:
        return self.op_kind.in_shape(**self.p)

    def build(self) -> nn.Module:
        return self.op_kind.build(**self.p)


# --------------------------------------------------------------------------- op kinds


class OpKind(abc.ABC):
    """How to count and build one kind of layer. Subclasses set ``defaults``/``required``."""

    defaults: dict = {}
    required: tuple = ()

    def macs(self, **p) -> int:
        return 0

    def params(self, **p) -> int:
        return 0

    def nonlinear(self, **p) -> int:
        return 0

    def in_shape(self, **p) -> tuple:
        return (p["c_in"], p["res"], p["res"])

    def out_shape(self, **p) -> tuple:
        return self.in_shape(**p)

    def memory_elements(self, **p) -> int:
        return _numel(self.in_shape(**p)) + _numel(self.out_shape(**p)) + self.params(**p)

    @abc.abstractmethod
    def build(self, **p) -> nn.Module:
        """The layer as a standalone module taking an input of ``in_shape``."""


class LayeredOpKind(OpKind):
    """A composite op (a whole block) counted as the sum of its internal layers."""

    @abc.abstractmethod
    def _layers(self, p: dict) -> list[tuple[int, int, int, int]]:
        """(MACs, params, non-linear units, memory elements) of each internal layer."""

    def macs(self, **p):
        return sum(row[0] for row in self._layers(p))

    def params(self, **p):
        return sum(row[1] for row in self._layers(p))

    def nonlinear(self, **p):
        return sum(row[2] for row in self._layers(p))

    def memory_elements(self, **p):
        return sum(row[3] for row in self._layers(p))


class TracedOpKind(OpKind):
    """A composite op (a whole block with attention, squeeze-excite, parallel branches)
    counted by tracing the module it builds on the ``meta`` device: MACs by
    ``torch.utils.flop_counter``, parameters by ``numel``, non-linear units and memory by
    forward hooks. The counts are those of the real module by construction, without
    allocating or computing anything, and are cached per OpSpec."""

    _counts: dict = {}

    def _traced(self, p: dict) -> tuple[int, int, int, int]:
        key = (type(self).__name__, tuple(sorted(p.items())))
        if key not in TracedOpKind._counts:
            TracedOpKind._counts[key] = trace_counts(self.build, self.in_shape(**p), p)
        return TracedOpKind._counts[key]

    def macs(self, **p):
        return self._traced(p)[0]

    def params(self, **p):
        return self._traced(p)[1]

    def nonlinear(self, **p):
        return self._traced(p)[2]

    def memory_elements(self, **p):
        return self._traced(p)[3]


def trace_counts(build: Callable, in_shape: tuple, p: dict) -> tuple[int, int, int, int]:
    """(MACs, parameters, non-linear units, memory elements) of ``build(**p)`` run on one
    input of ``in_shape``, all on the meta device. Memory: inputs, outputs and own
    parameters of every leaf module."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        module = build(**p)
    module.eval()
    units, memory = [], []

    def count_units(mod, inp, out):
        units.append(out.numel())

    def count_memory(mod, inp, out):
        own = sum(t.numel() for t in mod.parameters(recurse=False))
        memory.append(sum(t.numel() for t in inp if isinstance(t, torch.Tensor)) + out.numel() + own)

    hooks = [m.register_forward_hook(count_units) for m in module.modules() if isinstance(m, NONLINEAR_MODULES)]
    hooks += [m.register_forward_hook(count_memory) for m in module.modules() if not list(m.children())]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            module(torch.empty(1, *in_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return (counter.get_total_flops() // 2, sum(t.numel() for t in module.parameters()), sum(units), sum(memory))


OP_KINDS: dict[str, OpKind] = {}


def register_op_kind(name: str) -> Callable:
    """Decorator for an :class:`OpKind` subclass; spaces may add their own kinds."""

    def decorate(cls):
        OP_KINDS[name] = cls()
        return cls

    return decorate


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=False),
    "relu6": lambda: nn.ReLU6(inplace=False),
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "hswish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
}

#: Module types counted as non-linear units (tests hook these on built models).
NONLINEAR_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.PReLU, nn.Sigmoid)


def activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise NASError(f"unknown activation {name!r}; known: {one_of(sorted(ACTIVATIONS))}") from None


def make_divisible(v: float, divisor: int = 8) -> int:
    """``v`` rounded to a multiple of ``divisor``, never more than 10% below it (the
    channel rounding of MobileNets and EfficientNets)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def conv_out(res: int, k: int, stride: int, padding: int) -> int:
    return (res + 2 * padding - k) // stride + 1


@register_op_kind("conv")
class Conv(OpKind):
    """kxk convolution, optional BatchNorm, optional activation after it (or before it
    with ``pre_act``: NAS-Bench-201's ReLU-Conv-BN)."""

    defaults = {"stride": 1, "groups": 1, "bias": False, "bn": True, "act": None, "pre_act": False, "padding": None}
    required = ("c_in", "c_out", "res", "k")

    @staticmethod
    def _pad(p):
        return p["k"] // 2 if p["padding"] is None else p["padding"]

    def out_shape(self, **p):
        r = conv_out(p["res"], p["k"], p["stride"], self._pad(p))
        return (p["c_out"], r, r)

    def macs(self, **p):
        _, r, _ = self.out_shape(**p)
        return p["k"] * p["k"] * (p["c_in"] // p["groups"]) * p["c_out"] * r * r

    def params(self, **p):
        n = p["k"] * p["k"] * (p["c_in"] // p["groups"]) * p["c_out"]
        return n + (p["c_out"] if p["bias"] else 0) + (2 * p["c_out"] if p["bn"] else 0)

    def nonlinear(self, **p):
        if p["act"] is None:
            return 0
        return _numel(self.in_shape(**p)) if p["pre_act"] else _numel(self.out_shape(**p))

    def build(self, **p):
        layers = []
        if p["pre_act"] and p["act"]:
            layers.append(activation(p["act"]))
        layers.append(nn.Conv2d(p["c_in"], p["c_out"], p["k"], p["stride"], self._pad(p), groups=p["groups"], bias=p["bias"]))
        if p["bn"]:
            layers.append(nn.BatchNorm2d(p["c_out"]))
        if not p["pre_act"] and p["act"]:
            layers.append(activation(p["act"]))
        return nn.Sequential(*layers)


@register_op_kind("norm")
class Norm(OpKind):
    """BatchNorm (2 parameters per channel) with an optional activation."""

    defaults = {"act": None}
    required = ("c_in", "res")

    def params(self, **p):
        return 2 * p["c_in"]

    def nonlinear(self, **p):
        return _numel(self.in_shape(**p)) if p["act"] else 0

    def build(self, **p):
        return nn.Sequential(nn.BatchNorm2d(p["c_in"]), activation(p["act"]))


@register_op_kind("linear")
class Linear(OpKind):
    """Fully connected layer on a flat vector of ``c_in`` features."""

    defaults = {"bias": True, "act": None}
    required = ("c_in", "c_out")

    def in_shape(self, **p):
        return (p["c_in"],)

    def out_shape(self, **p):
        return (p["c_out"],)

    def macs(self, **p):
        return p["c_in"] * p["c_out"]

    def params(self, **p):
        return p["c_in"] * p["c_out"] + (p["c_out"] if p["bias"] else 0)

    def nonlinear(self, **p):
        return p["c_out"] if p["act"] else 0

    def build(self, **p):
        return nn.Sequential(nn.Linear(p["c_in"], p["c_out"], bias=p["bias"]), activation(p["act"]))


@register_op_kind("pool")
class Pool(OpKind):
    """Average or max pooling (average excludes padding, as in NAS-Bench-201)."""

    defaults = {"mode": "avg", "k": 3, "stride": 1, "padding": None}
    required = ("c_in", "res")

    def out_shape(self, **p):
        pad = p["k"] // 2 if p["padding"] is None else p["padding"]
        r = conv_out(p["res"], p["k"], p["stride"], pad)
        return (p["c_in"], r, r)

    def build(self, **p):
        pad = p["k"] // 2 if p["padding"] is None else p["padding"]
        if p["mode"] == "avg":
            return nn.AvgPool2d(p["k"], p["stride"], pad, count_include_pad=False)
        if p["mode"] == "max":
            return nn.MaxPool2d(p["k"], p["stride"], pad)
        raise NASError(f"pool mode {p['mode']!r} is not one of 'avg', 'max'")


@register_op_kind("gap")
class GlobalAvgPool(OpKind):
    """Global average pooling to a flat vector of ``c_in`` features."""

    required = ("c_in", "res")

    def out_shape(self, **p):
        return (p["c_in"],)

    def build(self, **p):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


@register_op_kind("identity")
class Identity(OpKind):
    required = ("c_in", "res")

    def memory_elements(self, **p):
        return 0

    def build(self, **p):
        return nn.Identity()


class AddSelf(nn.Module):
    """Stands in for a residual addition when the addition is timed alone."""

    def forward(self, x):
        return x + x


@register_op_kind("add")
class ResidualAdd(OpKind):
    """The elementwise addition of a residual connection (no MACs or parameters; two
    tensors read, one written). Spaces list it so that LUTs and the roofline price it; the
    models they build add their branches themselves."""

    required = ("c_in", "res")

    def memory_elements(self, **p):
        return 3 * _numel(self.in_shape(**p))

    def build(self, **p):
        return AddSelf()


class Zero(nn.Module):
    """The 'none' operation: a zero tensor of the input's shape (an edge that is cut)."""

    def forward(self, x):
        return x.mul(0.0)


@register_op_kind("zero")
class ZeroOp(OpKind):
    required = ("c_in", "res")

    def memory_elements(self, **p):
        return 0

    def build(self, **p):
        return Zero()


class MBConvBlock(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand (if e > 1), kxk depthwise, 1x1 project."""

    def __init__(self, c_in, c_out, k, stride, e, act):
        super().__init__()
        mid = c_in * e
        layers = []
        if e != 1:
            layers += [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), activation(act)]
        layers += [
            nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            activation(act),
            nn.Conv2d(mid, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


@register_op_kind("mbconv")
class MBConv(LayeredOpKind):
    """A whole inverted-residual block, costed as one op (its layers run back to back)."""

    defaults = {"stride": 1, "e": 6, "act": "relu6"}
    required = ("c_in", "c_out", "res", "k")

    def out_shape(self, **p):
        r = conv_out(p["res"], p["k"], p["stride"], p["k"] // 2)
        return (p["c_out"], r, r)

    def _layers(self, p):
        c, r, k, e = p["c_in"], p["res"], p["k"], p["e"]
        mid = c * e
        ro = conv_out(r, k, p["stride"], k // 2)
        rows = []
        if e != 1:
            rows.append((c * mid * r * r, c * mid + 2 * mid, mid * r * r, c * r * r + mid * r * r + c * mid))
        rows.append((k * k * mid * ro * ro, k * k * mid + 2 * mid, mid * ro * ro, mid * r * r + mid * ro * ro + k * k * mid))
        rows.append((mid * p["c_out"] * ro * ro, mid * p["c_out"] + 2 * p["c_out"], 0,
                     mid * ro * ro + p["c_out"] * ro * ro + mid * p["c_out"]))
        return rows

    def build(self, **p):
        return MBConvBlock(p["c_in"], p["c_out"], p["k"], p["stride"], p["e"], p["act"])


def build_sequential(ops: list[OpSpec]) -> nn.Sequential:
    """A model from OpSpecs that run one after the other (each takes the previous output)."""
    for prev, nxt in zip(ops, ops[1:]):
        if tuple(prev.out_shape()) != tuple(nxt.in_shape()):
            raise ValueError(f"op {nxt.name or nxt.key} expects input {nxt.in_shape()}, "
                             f"but {prev.name or prev.key} gives {prev.out_shape()}")
    return nn.Sequential(*(op.build() for op in ops))
