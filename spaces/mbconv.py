"""A small MobileNetV2-style space of inverted-residual (MBConv) blocks.

A 3x3 stem, then stages of MBConv blocks; per stage the output width and the depth are
``coarse`` decisions, per block the depthwise kernel and the expansion ratio are ``fine``
decisions; global pooling and a linear classifier close the network. Small enough to
train in seconds on the embedded data, so the default run searches, trains and reports
for real.
"""

from __future__ import annotations

from nas import Arch, Decision, NASError, OpSpec, Space, register_space
from nas.ops import build_sequential


def _int_tuple(values, field: str) -> tuple:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise NASError(f"mbconv field {field} must be a list of integers, got {values!r}") from None
    if not out or min(out) < 1:
        raise NASError(f"mbconv field {field} must be a non-empty list of positive integers, got {values!r}")
    return out


@register_space("mbconv")
class MBConvSpace(Space):
    """MobileNetV2-style MBConv blocks: per stage width and depth (``coarse``), per block
    kernel and expansion (``fine``)."""

    def __init__(self, resolution: int = 32, num_classes: int = 10, in_channels: int = 3,
                 stem_channels: int = 16, stem_stride: int = 2,
                 stage_strides: list = (1, 2, 2),
                 stage_widths: list = ((16, 24, 32), (24, 32, 48), (48, 64, 96)),
                 depths: list = (1, 2, 3), kernels: list = (3, 5, 7), expansions: list = (1, 3, 6)):
        super().__init__(resolution, num_classes, in_channels)
        self.stem_channels = int(stem_channels)
        self.stem_stride = int(stem_stride)
        self.stage_strides = _int_tuple(stage_strides, "stage_strides")
        self.stage_widths = tuple(_int_tuple(w, "stage_widths") for w in stage_widths)
        if len(self.stage_widths) != len(self.stage_strides):
            raise NASError(f"mbconv has {len(self.stage_strides)} stage_strides but {len(self.stage_widths)} "
                           "stage_widths lists; give one width list per stage")
        self.depths = _int_tuple(depths, "depths")
        self.kernels = _int_tuple(kernels, "kernels")
        if any(k % 2 == 0 for k in self.kernels):
            raise NASError(f"mbconv kernels must be odd, got {list(self.kernels)}")
        self.expansions = _int_tuple(expansions, "expansions")

    def config(self):
        cfg = super().config()
        cfg["stage_widths"] = [list(w) for w in self.stage_widths]
        for k in ("stage_strides", "depths", "kernels", "expansions"):
            cfg[k] = list(cfg[k])
        return cfg

    @property
    def n_stages(self) -> int:
        return len(self.stage_strides)

    def _make_decisions(self):
        ds = []
        for s in range(1, self.n_stages + 1):
            ds.append(Decision(f"s{s}_width", self.stage_widths[s - 1], tag="coarse"))
            ds.append(Decision(f"s{s}_depth", self.depths, tag="coarse"))
            for b in range(1, max(self.depths) + 1):
                ds.append(Decision(f"s{s}_b{b}_kernel", self.kernels, tag="fine"))
                ds.append(Decision(f"s{s}_b{b}_expansion", self.expansions, tag="fine"))
        return ds

    def canonicalize(self, arch):
        # Blocks beyond a stage's depth do not exist: fix their choices so that archs
        # building the same network share one key (one ledger entry, one evaluation).
        changes = {}
        for s in range(1, self.n_stages + 1):
            for b in range(arch[f"s{s}_depth"] + 1, max(self.depths) + 1):
                changes[f"s{s}_b{b}_kernel"] = self.kernels[0]
                changes[f"s{s}_b{b}_expansion"] = self.expansions[0]
        return arch.replace(**changes) if changes else arch

    def ops(self, arch: Arch):
        r = self.resolution
        stem = OpSpec.make("conv", "stem", c_in=self.in_channels, c_out=self.stem_channels, res=r, k=3,
                           stride=self.stem_stride, act="relu6")
        ops = [stem]
        c, r = stem.out_shape()[0], stem.out_shape()[1]
        for s in range(1, self.n_stages + 1):
            width = arch[f"s{s}_width"]
            for b in range(1, arch[f"s{s}_depth"] + 1):
                stride = self.stage_strides[s - 1] if b == 1 else 1
                op = OpSpec.make("mbconv", f"stage{s}.block{b}", c_in=c, c_out=width, res=r, stride=stride,
                                 k=arch[f"s{s}_b{b}_kernel"], e=arch[f"s{s}_b{b}_expansion"])
                ops.append(op)
                c, r = op.out_shape()[0], op.out_shape()[1]
        ops.append(OpSpec.make("gap", "pool", c_in=c, res=r))
        ops.append(OpSpec.make("linear", "classifier", c_in=c, c_out=self.num_classes))
        return ops

    def build(self, arch):
        return build_sequential(self.ops(self.validate(arch)))

    def all_ops(self, samples=0, seed=0):
        # Complete: each block's input width is the stem's or one of the previous stage's
        # widths (or its own stage's after the first block), at the resolution of its stage.
        stem = self.ops(self.canonicalize(Arch({d.name: d.options[0] for d in self.decisions()})))[0]
        ops = {stem.key: stem}
        c_prev = [stem.out_shape()[0]]
        r = stem.out_shape()[1]
        for s in range(1, self.n_stages + 1):
            stride = self.stage_strides[s - 1]
            for c_in in c_prev:
                for w in self.stage_widths[s - 1]:
                    for k in self.kernels:
                        for e in self.expansions:
                            first = OpSpec.make("mbconv", f"stage{s}.block1", c_in=c_in, c_out=w, res=r, stride=stride,
                                                k=k, e=e)
                            ops.setdefault(first.key, first)
            r_out = first.out_shape()[1]
            if max(self.depths) > 1:
                for w in self.stage_widths[s - 1]:
                    for k in self.kernels:
                        for e in self.expansions:
                            op = OpSpec.make("mbconv", f"stage{s}.block", c_in=w, c_out=w, res=r_out, k=k, e=e)
                            ops.setdefault(op.key, op)
            c_prev, r = list(self.stage_widths[s - 1]), r_out
        for w in c_prev:
            for op in (OpSpec.make("gap", "pool", c_in=w, res=r),
                       OpSpec.make("linear", "classifier", c_in=w, c_out=self.num_classes)):
                ops.setdefault(op.key, op)
        return list(ops.values())

    def min_cost(self, cost_model, n_samples=0, seed=0):
        # Every analytic and measured cost grows with width, depth, kernel and expansion,
        # and the options are sorted ascending: the smallest choice everywhere is cheapest.
        arch = self.canonicalize(Arch({d.name: min(d.options) for d in self.decisions()}))
        return cost_model.cost(self.ops(arch)), arch, True
