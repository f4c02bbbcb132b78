"""ReXNet's channel-configuration space: inverted bottlenecks whose output channels follow a
piecewise-linear function of the block index (ReXNet, Sec. 4, Eq. 1).

Skeleton: MobileNetV2's. A 3x3 stride-2 stem, then seven groups of inverted bottlenecks
with strides 1, 2, 2, 2, 1, 2, 1 (expansion 1 in the first group, 6 elsewhere, 3x3
depthwise), whose depths are decisions ``g1_depth`` .. ``g7_depth`` (ReXNet's 16 blocks are
1-2-2-3-3-5-0, MobileNetV2's 17 are 1-2-3-4-3-3-1); a 1x1 conv to the penultimate width,
global pooling and a linear classifier.

Channels (``channels=linear``): with ``d`` blocks, block ``i = 0 .. d-1`` outputs
``c_i = round(w * (b + a * f(i / d)))`` (for ``w < 1``: ``round(b + w * a * f(i / d))``, as
ReXNet keeps its first width), where ``b`` is ``intercept``, ``a`` is ``rise`` and ``f`` is
piecewise linear through (0, 0), (``break_at``, ``break_rise``) and (1, 1): flat-then-linear
with ``break_rise = 0``, one straight line when ``break_rise = break_at`` (ReXNet:
``b = 16``, ``a = 180``). ``channels=stagewise`` gives MobileNetV2's per-group widths
16-24-32-64-96-160-320 times ``w`` (rounded to multiples of 8), the configuration ReXNet
set out to replace. Channels never decrease with the block index (Eq. 1's constraint):
``validate`` rejects an arch whose function falls (e.g. ``break_rise`` options above 1).

Blocks (``style``): ``rexnet`` as in ``../shared/specs/architectures.md`` (SiLU after the
expansion, squeeze-excite from the third group on, ReLU6 after it, a shortcut that adds
the input to the first ``in`` output channels when stride is 1 and ``in <= out``; SiLU in
stem and head, penultimate width ``int(1280 * w)``); ``mobilenetv2`` (ReLU6 throughout, no
squeeze-excite, a residual only when ``in == out``, penultimate 1280, or ``1280 * w`` above
1). Presets: ``rexnet_0_9``, ``rexnet_1_0``, ``rexnet_1_3``, ``rexnet_1_5``, ``rexnet_2_0``
(Table 5) and ``mobilenetv2_1_0``, in ``grid=published`` (see :data:`GRIDS`).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from nas import Arch, Decision, NASError, OpSpec, Space, register_op_kind, register_space
from nas.nnmass import residual_chain
from nas.ops import LayeredOpKind, build_sequential, conv_out, make_divisible
from nas.space import number_list

GROUP_STRIDES = (1, 2, 2, 2, 1, 2, 1)
MOBILENETV2_WIDTHS = (16, 24, 32, 64, 96, 160, 320)
SE_FROM_GROUP = 3  # ReXNet: no squeeze-excite in the first three blocks (groups 1 and 2)
SE_REDUCTION = 12
STEM_CHANNELS = 32
PENULTIMATE = 1280


class InvertedBottleneck(nn.Module):
    """ReXNet's or MobileNetV2's inverted bottleneck (see the module docstring)."""

    def __init__(self, c_in, c_out, stride, e, se, style):
        super().__init__()
        mid = round(c_in * e)
        rexnet = style == "rexnet"
        layers = []
        if e != 1:
            layers += [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid),
                       nn.SiLU() if rexnet else nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid)]
        if se:
            layers.append(SqueezeExcite(mid, max(1, int(mid / SE_REDUCTION))))
        layers += [nn.ReLU6(), nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.body = nn.Sequential(*layers)
        self.c_in = c_in
        self.shortcut = stride == 1 and (c_in <= c_out if rexnet else c_in == c_out)

    def forward(self, x):
        y = self.body(x)
        if not self.shortcut:
            return y
        if y.shape[1] == self.c_in:
            return y + x
        # ReXNet's partial shortcut: the input joins the first c_in output channels.
        return torch.cat([y[:, : self.c_in] + x, y[:, self.c_in:]], 1)


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced):
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, reduced, 1), nn.BatchNorm2d(reduced),
                                nn.ReLU(), nn.Conv2d(reduced, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x)


@register_op_kind("inverted_bottleneck")
class InvertedBottleneckOp(LayeredOpKind):
    """A whole ReXNet / MobileNetV2 inverted bottleneck, costed as one op."""

    defaults = {"stride": 1, "e": 6, "se": False, "style": "rexnet"}
    required = ("c_in", "c_out", "res")

    def out_shape(self, **p):
        r = conv_out(p["res"], 3, p["stride"], 1)
        return (p["c_out"], r, r)

    def _layers(self, p):
        c, co, r, e = p["c_in"], p["c_out"], p["res"], p["e"]
        mid = round(c * e)
        ro = conv_out(r, 3, p["stride"], 1)
        n_in, n_mid, n_mido, n_out = c * r * r, mid * r * r, mid * ro * ro, co * ro * ro
        rows = []
        if e != 1:
            rows.append((c * mid * r * r, c * mid + 2 * mid, n_mid, n_in + n_mid + c * mid + 2 * mid))
        rows.append((9 * mid * ro * ro, 9 * mid + 2 * mid, 0, n_mid + n_mido + 9 * mid + 2 * mid))
        if p["se"]:
            s = max(1, int(mid / SE_REDUCTION))
            weights = mid * s + s + 2 * s + s * mid + mid
            rows.append((2 * mid * s, weights, s + mid, 2 * n_mido + weights))
        rows.append((0, 0, n_mido, 2 * n_mido))  # ReLU6
        shortcut = p["stride"] == 1 and (c <= co if p["style"] == "rexnet" else c == co)
        rows.append((mid * co * ro * ro, mid * co + 2 * co, 0,
                     n_mido + n_out + mid * co + 2 * co + (2 * n_in if shortcut else 0)))
        return rows

    def build(self, **p):
        return InvertedBottleneck(p["c_in"], p["c_out"], p["stride"], p["e"], p["se"], p["style"])


#: Option grids. ``small`` (the default) suits the embedded data sets and keeps channels in
#: multiples of 16, so that a LUT lists every layer of the space; ``published`` holds
#: ReXNet's and MobileNetV2's networks (the presets) with ReXNet's exact rounding.
GRIDS = {
    "small": {"group_depths": ((1,), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2), (0, 1)), "width_mults": (0.5, 1.0),
              "intercepts": (16, 32), "rises": (90, 180), "break_ats": (0.5,), "break_rises": (0.0, 0.5, 1.0),
              "channel_divisor": 16},
    "published": {"group_depths": ((1,), (1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (1, 2, 3, 4), (2, 3, 4, 5), (0, 1)),
                  "width_mults": (0.5, 0.75, 0.9, 1.0, 1.3, 1.5, 2.0), "intercepts": (8, 16, 24, 32, 48),
                  "rises": (60, 120, 180, 240, 300, 360), "break_ats": (0.25, 0.5, 0.75),
                  "break_rises": (0.0, 0.25, 0.5, 0.75, 1.0), "channel_divisor": 1},
}


@register_space("rexnet")
class ReXNetSpace(Space):
    """ReXNet's channel-configuration space: MobileNetV2's skeleton (``group_depths``: blocks per
    group, strides 1, 2, 2, 2, 1, 2, 1), block channels ``c_i = w * (intercept + rise *
    f(i / depth))`` with ``f`` piecewise linear through (0, 0), (break_at, break_rise), (1, 1),
    rounded to a multiple of ``channel_divisor``. ``grid``: ``small`` (the default, for the
    embedded data sets: channels in multiples of 16, every layer in the shipped CPU LUT) or
    ``published`` (ReXNet x0.9-x2.0 and MobileNetV2 as presets, exact rounding); a list given
    replaces the grid's."""

    def __init__(self, resolution: int = 32, num_classes: int = 10, in_channels: int = 3, grid: str = "small",
                 group_depths: list | None = None, width_mults: list | None = None, intercepts: list | None = None,
                 rises: list | None = None, break_ats: list | None = None, break_rises: list | None = None,
                 channel_divisor: int | None = None):
        super().__init__(resolution, num_classes, in_channels)
        if grid not in GRIDS:
            raise NASError(f"rexnet: unknown grid {grid!r}; accepted: {', '.join(map(repr, GRIDS))}")
        self.grid = grid
        given = {"group_depths": group_depths, "width_mults": width_mults, "intercepts": intercepts, "rises": rises,
                 "break_ats": break_ats, "break_rises": break_rises, "channel_divisor": channel_divisor}
        cfg = {k: GRIDS[grid][k] if v is None else v for k, v in given.items()}  # a field given wins
        channel_divisor = cfg["channel_divisor"]
        if not isinstance(channel_divisor, int) or isinstance(channel_divisor, bool) or channel_divisor < 1:
            raise NASError(f"rexnet field channel_divisor must be a positive integer, got {channel_divisor!r}")
        self.channel_divisor = channel_divisor
        if len(cfg["group_depths"]) != len(GROUP_STRIDES):
            raise NASError(f"rexnet field group_depths needs {len(GROUP_STRIDES)} lists (one per group of "
                           f"MobileNetV2's skeleton), got {len(cfg['group_depths'])}")
        self.group_depths = tuple(number_list(d, "rexnet", f"group_depths[{g}]", minimum=0, distinct_sorted=True) for g, d in enumerate(cfg["group_depths"]))
        if self.group_depths[0][0] < 1:
            raise NASError("rexnet: the first group needs at least one block")
        self.width_mults = number_list(cfg["width_mults"], "rexnet", "width_mults", float, 1e-9, True)
        self.intercepts = number_list(cfg["intercepts"], "rexnet", "intercepts", distinct_sorted=True)
        self.rises = number_list(cfg["rises"], "rexnet", "rises", minimum=0, distinct_sorted=True)
        self.break_ats = number_list(cfg["break_ats"], "rexnet", "break_ats", float, 1e-9, True)
        if self.break_ats[-1] >= 1:
            raise NASError(f"rexnet field break_ats must lie strictly between 0 and 1, got {list(cfg['break_ats'])}")
        self.break_rises = number_list(cfg["break_rises"], "rexnet", "break_rises", float, 0, True)

    def config(self):
        cfg = super().config()
        cfg["group_depths"] = [list(d) for d in self.group_depths]
        for k in ("width_mults", "intercepts", "rises", "break_ats", "break_rises"):
            cfg[k] = list(cfg[k])
        return cfg

    def _make_decisions(self):
        ds = [Decision(f"g{g}_depth", depths, tag="depth") for g, depths in enumerate(self.group_depths, start=1)]
        ds += [Decision("style", ("rexnet", "mobilenetv2"), tag="block"),
               Decision("channels", ("linear", "stagewise"), tag="channels"),
               Decision("width_mult", self.width_mults, tag="channels"),
               Decision("intercept", self.intercepts, tag="channels"),
               Decision("rise", self.rises, tag="channels"),
               Decision("break_at", self.break_ats, tag="channels"),
               Decision("break_rise", self.break_rises, tag="channels")]
        return ds

    # ------------------------------------------------------------------ channels
    def canonicalize(self, arch):
        changes = {}
        if arch["channels"] == "stagewise":  # the linear function's parameters play no part
            changes = {"intercept": self.intercepts[0], "rise": self.rises[0], "break_at": self.break_ats[0],
                       "break_rise": self.break_rises[0]}
        elif arch["break_rise"] == arch["break_at"] or arch["rise"] == 0:
            # One straight line whatever the bend's position: keep the first such bend.
            straight = [t for t in self.break_ats if t in self.break_rises] if arch["rise"] else []
            if straight:
                changes = {"break_at": straight[0], "break_rise": straight[0]}
        return arch.replace(**changes) if changes else arch

    def group_of_blocks(self, arch) -> list[int]:
        """The group (1-based) of every block."""
        return [g for g in range(1, len(GROUP_STRIDES) + 1) for _ in range(arch[f"g{g}_depth"])]

    def channel_function(self, arch, t: float) -> float:
        """``f(t)``: piecewise linear through (0, 0), (break_at, break_rise), (1, 1)."""
        tb, rb = arch["break_at"], arch["break_rise"]
        if tb == rb:
            return t
        return rb * t / tb if t <= tb else rb + (1 - rb) * (t - tb) / (1 - tb)

    def block_channels(self, arch) -> list[int]:
        groups = self.group_of_blocks(arch)
        w = arch["width_mult"]
        if arch["channels"] == "stagewise":
            return [make_divisible(MOBILENETV2_WIDTHS[g - 1] * w, 8) for g in groups]
        d, b, a = len(groups), arch["intercept"], arch["rise"]
        values = [a * self.channel_function(arch, i / d) for i in range(d)]
        exact = [b + w * v if w < 1 else w * (b + v) for v in values]
        q = self.channel_divisor  # 1: ReXNet's rounding; more: fewer distinct layers (a complete LUT)
        return [max(q, round(x / q) * q) for x in exact]

    def check(self, arch):
        channels = self.block_channels(arch)
        for i, (c, nxt) in enumerate(zip(channels, channels[1:]), start=1):
            if nxt < c:
                raise NASError(f"rexnet: channels must not decrease with the block index (ReXNet's Eq. 1), but "
                               f"block {i} has {c} and block {i + 1} {nxt} (break_at {arch['break_at']}, "
                               f"break_rise {arch['break_rise']}: keep break_rise <= 1)")

    # ------------------------------------------------------------------ network
    def _blocks(self, arch):
        """(c_in, c_out, stride, expansion, se) per block, and the stem's width."""
        style, w = arch["style"], arch["width_mult"]
        if style == "rexnet":
            stem = STEM_CHANNELS if w < 1 else round(STEM_CHANNELS * w)
        else:
            stem = make_divisible(STEM_CHANNELS * w, 8)
        blocks, c, prev_group = [], stem, None
        for g, c_out in zip(self.group_of_blocks(arch), self.block_channels(arch)):
            stride = GROUP_STRIDES[g - 1] if g != prev_group else 1
            se = style == "rexnet" and g >= SE_FROM_GROUP
            blocks.append((c, c_out, stride, 1 if g == 1 else 6, se))
            c, prev_group = c_out, g
        return stem, blocks

    def penultimate(self, arch) -> int:
        w = arch["width_mult"]
        if arch["style"] == "rexnet":
            return int(PENULTIMATE * w)
        return make_divisible(PENULTIMATE * w, 8) if w > 1 else PENULTIMATE

    def ops(self, arch: Arch):
        act = "silu" if arch["style"] == "rexnet" else "relu6"
        stem_c, blocks = self._blocks(arch)
        stem = OpSpec.make("conv", "stem", c_in=self.in_channels, c_out=stem_c, res=self.resolution, k=3, stride=2,
                           act=act)
        ops, r = [stem], stem.out_shape()[1]
        for i, (c_in, c_out, stride, e, se) in enumerate(blocks, start=1):
            op = OpSpec.make("inverted_bottleneck", f"block{i}", c_in=c_in, c_out=c_out, res=r, stride=stride, e=e,
                             se=se, style=arch["style"])
            ops.append(op)
            r = op.out_shape()[1]
        c, pen = blocks[-1][1], self.penultimate(arch)
        ops += [OpSpec.make("conv", "head.conv", c_in=c, c_out=pen, res=r, k=1, act=act),
                OpSpec.make("gap", "head.pool", c_in=pen, res=r),
                OpSpec.make("linear", "classifier", c_in=pen, c_out=self.num_classes)]
        return ops

    def build(self, arch):
        return build_sequential(self.ops(self.validate(arch)))

    def block_topologies(self, arch):
        style = arch["style"]
        out = []
        for c_in, c_out, stride, e, _ in self._blocks(arch)[1]:
            mid = round(c_in * e)
            nodes = (c_in, mid, mid, c_out) if e != 1 else (c_in, mid, c_out)
            shortcut = stride == 1 and (c_in <= c_out if style == "rexnet" else c_in == c_out)
            out.append(residual_chain(nodes, nonlinear=mid * (2 if e != 1 else 1), residual=shortcut))
        return out

    def _presets(self):
        rexnet_depths = (1, 2, 2, 3, 3, 5, 0)
        table = {}
        for name, w in (("rexnet_0_9", 0.9), ("rexnet_1_0", 1.0), ("rexnet_1_3", 1.3), ("rexnet_1_5", 1.5),
                        ("rexnet_2_0", 2.0)):
            table[name] = {**{f"g{g}_depth": d for g, d in enumerate(rexnet_depths, start=1)}, "style": "rexnet",
                           "channels": "linear", "width_mult": w, "intercept": 16, "rise": 180, "break_at": 0.5,
                           "break_rise": 0.5}
        table["mobilenetv2_1_0"] = {**{f"g{g}_depth": d for g, d in enumerate((1, 2, 3, 4, 3, 3, 1), start=1)},
                                    "style": "mobilenetv2", "channels": "stagewise", "width_mult": 1.0,
                                    "intercept": 16, "rise": 180, "break_at": 0.5, "break_rise": 0.5}
        # Only the presets whose options this configuration offers.
        decisions = {d.name: d.options for d in self.decisions()}
        return {n: a for n, a in table.items() if all(v in decisions[k] for k, v in a.items())}

    def min_cost(self, cost_model, n_samples=2000, seed=0):
        # Not a sum over independent choices (widths depend on the depth); enumerate the
        # smallest depths and multiplier with every channel function, plus samples.
        rng = np.random.default_rng(seed)
        smallest = {f"g{g}_depth": d[0] for g, d in enumerate(self.group_depths, start=1)}
        smallest["width_mult"] = self.width_mults[0]
        candidates = [Arch({**smallest, "style": style, "channels": channels, "intercept": self.intercepts[0],
                            "rise": self.rises[0], "break_at": tb, "break_rise": rb})
                      for style, channels, tb, rb in itertools.product(("rexnet", "mobilenetv2"), ("linear", "stagewise"),
                                                                       self.break_ats, self.break_rises)]
        candidates += [self.sample(rng) for _ in range(n_samples)]
        cost, arch = self.cheapest(cost_model, candidates)
        return cost, arch, False
