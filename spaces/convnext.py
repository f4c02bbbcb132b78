"""ConvNeXt scaled by a width and a depth multiplier: RAN-i's training-free scaling space.

A base configuration (by default ConvNeXt-T: stage widths 96-192-384-768, depths
3-3-9-3) is scaled by two decisions, ``width_mult`` and ``depth_mult``; each stage's width
and depth is the base value times its multiplier, rounded to the nearest integer (halves
up), as RAN-i does (``../shared/specs/architectures.md``). The layers:

- stem: ``stem_stride`` x ``stem_stride`` conv with that stride and a bias, LayerNorm;
- between stages: LayerNorm, 2x2 conv with stride 2 and a bias;
- block: 7x7 depthwise conv with bias, LayerNorm, linear d -> 4d, GELU, linear 4d -> d,
  layer scale (one scalar per channel), residual addition;
- head: global average pool, LayerNorm, linear classifier.

LayerNorm has two parameters per channel. The default grid of multipliers follows RAN-i's
ranges (width 0.25-1.6, depth 0.6-2.56): 37 widths in steps of 0.0375 plus Table 7's
0.666, 0.789 and 0.9105, and 17 depths in steps of 0.1225 plus 1.0, 1.65 and 2.30: 40 x 20
= 800 candidates, the number RAN-i samples. Presets: ``convnext_t`` and Table 7's
``ran_i_t``, ``ran_i_s``, ``ran_i_b``.

Capability ``topology``: every block is a residual chain (node widths d, d, 4d, d), so NN-Mass
is ``sum over blocks of (2d + 4d) / 3`` (:mod:`nas.nnmass`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nas import Arch, Decision, NASError, OpSpec, Space, register_op_kind, register_space
from nas.nnmass import residual_chain
from nas.ops import LayeredOpKind, build_sequential
from nas.space import number_list

DEFAULT_WIDTH_MULTS = tuple(sorted({round(0.25 + 0.0375 * i, 4) for i in range(37)} | {0.666, 0.789, 0.9105}))
DEFAULT_DEPTH_MULTS = tuple(sorted({round(0.6 + 0.1225 * i, 4) for i in range(17)} | {1.0, 1.65, 2.3}))


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, k: int = 7, e: int = 4):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, e * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(e * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(self.norm(x.mean((2, 3))))


@register_op_kind("convnext_stem")
class ConvNeXtStemOp(LayeredOpKind):
    """Patchify stem: ``patch`` x ``patch`` conv, stride ``patch``, bias; LayerNorm."""

    required = ("c_in", "c_out", "res", "patch")

    def out_shape(self, **p):
        r = p["res"] // p["patch"]
        return (p["c_out"], r, r)

    def _layers(self, p):
        c, d, k = p["c_in"], p["c_out"], p["patch"]
        r = p["res"] // k
        n_in, n_out = c * p["res"] ** 2, d * r * r
        return [(k * k * c * d * r * r, k * k * c * d + d, 0, n_in + n_out + k * k * c * d + d),
                (0, 2 * d, 0, 2 * n_out + 2 * d)]

    def build(self, **p):
        return nn.Sequential(nn.Conv2d(p["c_in"], p["c_out"], p["patch"], p["patch"]),
                             LayerNorm2d(p["c_out"], eps=1e-6))


@register_op_kind("convnext_down")
class ConvNeXtDownOp(LayeredOpKind):
    """Downsampling between stages: LayerNorm, 2x2 conv with stride 2 and bias."""

    required = ("c_in", "c_out", "res")

    def out_shape(self, **p):
        r = p["res"] // 2
        return (p["c_out"], r, r)

    def _layers(self, p):
        c, d, r = p["c_in"], p["c_out"], p["res"]
        ro = r // 2
        n_in, n_out = c * r * r, d * ro * ro
        return [(0, 2 * c, 0, 2 * n_in + 2 * c),
                (4 * c * d * ro * ro, 4 * c * d + d, 0, n_in + n_out + 4 * c * d + d)]

    def build(self, **p):
        return nn.Sequential(LayerNorm2d(p["c_in"], eps=1e-6), nn.Conv2d(p["c_in"], p["c_out"], 2, 2))


@register_op_kind("convnext_block")
class ConvNeXtBlockOp(LayeredOpKind):
    """A whole ConvNeXt block (see the module docstring), costed as one op."""

    defaults = {"k": 7, "e": 4}
    required = ("c_in", "res")

    def _layers(self, p):
        d, r, k, e = p["c_in"], p["res"], p["k"], p["e"]
        n, hw = d * r * r, r * r
        return [(k * k * d * hw, k * k * d + d, 0, 2 * n + k * k * d + d),  # depthwise conv
                (0, 2 * d, 0, 2 * n + 2 * d),  # LayerNorm
                (e * d * d * hw, e * d * d + e * d, e * n, n + e * n + e * d * d + e * d),  # linear, GELU
                (e * d * d * hw, e * d * d + d, 0, e * n + n + e * d * d + d),  # linear
                (0, d, 0, 3 * n + d)]  # layer scale and residual addition

    def build(self, **p):
        return ConvNeXtBlock(p["c_in"], p["k"], p["e"])


@register_op_kind("convnext_head")
class ConvNeXtHeadOp(LayeredOpKind):
    """Global average pool, LayerNorm, linear classifier."""

    required = ("c_in", "res", "c_out")

    def out_shape(self, **p):
        return (p["c_out"],)

    def _layers(self, p):
        d, c = p["c_in"], p["c_out"]
        return [(0, 2 * d, 0, 2 * d + 2 * d), (d * c, d * c + c, 0, d + c + d * c + c)]

    def build(self, **p):
        return ConvNeXtHead(p["c_in"], p["c_out"])


@register_space("convnext_scaled")
class ConvNeXtScaledSpace(Space):
    """ConvNeXt scaled by width and depth multipliers (RAN-i), at 224x224 and 1000 classes by
    default, where RAN-i's budgets and Table 7 apply (so the input fields do not follow the
    data set). For the embedded data sets use a smaller base, e.g. ``resolution=28
    stem_stride=2 base_dims=[16,32,64,128] base_depths=[1,1,3,1] num_classes=10
    in_channels=1``. The default grid: 37 widths 0.25..1.6 in steps of 0.0375 plus Table 7's,
    17 depths 0.6..2.56 in steps of 0.1225 plus 1.0, 1.65, 2.30 (800 candidates)."""

    data_fields = ()

    def __init__(self, resolution: int = 224, num_classes: int = 1000, in_channels: int = 3,
                 base_dims: list = (96, 192, 384, 768), base_depths: list = (3, 3, 9, 3), stem_stride: int = 4,
                 expansion: int = 4, kernel: int = 7, width_mults: list = DEFAULT_WIDTH_MULTS,
                 depth_mults: list = DEFAULT_DEPTH_MULTS):
        super().__init__(resolution, num_classes, in_channels)
        self.base_dims = number_list(base_dims, "convnext_scaled", "base_dims")
        self.base_depths = number_list(base_depths, "convnext_scaled", "base_depths")
        if len(self.base_dims) != len(self.base_depths):
            raise NASError(f"convnext_scaled has {len(self.base_dims)} base_dims but {len(self.base_depths)} "
                           "base_depths; give one width and one depth per stage")
        self.stem_stride = int(stem_stride)
        self.expansion = int(expansion)
        self.kernel = int(kernel)
        if self.stem_stride < 1 or self.expansion < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise NASError("convnext_scaled needs stem_stride >= 1, expansion >= 1 and an odd kernel, got "
                           f"{stem_stride}, {expansion}, {kernel}")
        final = self.resolution // self.stem_stride // 2 ** (len(self.base_dims) - 1)
        if final < 1:
            raise NASError(f"convnext_scaled: resolution {self.resolution} is too small for a stem of stride "
                           f"{self.stem_stride} and {len(self.base_dims) - 1} downsamplings (needs >= "
                           f"{self.stem_stride * 2 ** (len(self.base_dims) - 1)})")
        self.width_mults = number_list(width_mults, "convnext_scaled", "width_mults", float, 1e-9, True)
        self.depth_mults = number_list(depth_mults, "convnext_scaled", "depth_mults", float, 1e-9, True)

    def config(self):
        cfg = super().config()
        for k in ("base_dims", "base_depths", "width_mults", "depth_mults"):
            cfg[k] = list(cfg[k])
        return cfg

    def _make_decisions(self):
        return [Decision("width_mult", self.width_mults, tag="coarse"),
                Decision("depth_mult", self.depth_mults, tag="coarse")]

    def shape(self, arch: Arch) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(stage widths, stage depths) of ``arch``."""
        wm, dm = arch["width_mult"], arch["depth_mult"]
        return (tuple(max(1, round_half_up(d * wm)) for d in self.base_dims),
                tuple(max(1, round_half_up(n * dm)) for n in self.base_depths))

    def ops(self, arch: Arch):
        widths, depths = self.shape(arch)
        stem = OpSpec.make("convnext_stem", "stem", c_in=self.in_channels, c_out=widths[0], res=self.resolution,
                           patch=self.stem_stride)
        ops = [stem]
        c, r = widths[0], stem.out_shape()[1]
        for s, (width, depth) in enumerate(zip(widths, depths), start=1):
            if s > 1:
                down = OpSpec.make("convnext_down", f"stage{s}.down", c_in=c, c_out=width, res=r)
                ops.append(down)
                c, r = width, down.out_shape()[1]
            block = OpSpec.make("convnext_block", f"stage{s}.block", c_in=c, res=r, k=self.kernel, e=self.expansion)
            ops.extend([block] * depth)
        ops.append(OpSpec.make("convnext_head", "head", c_in=c, res=r, c_out=self.num_classes))
        return ops

    def build(self, arch):
        return build_sequential(self.ops(self.validate(arch)))

    def block_topologies(self, arch: Arch):
        widths, depths = self.shape(arch)
        e = self.expansion
        blocks = []
        for d, n in zip(widths, depths):
            blocks += [residual_chain((d, d, e * d, d), nonlinear=e * d)] * n  # one object per stage: mass once
        return blocks

    def _presets(self):
        presets = {"convnext_t": (1.0, 1.0), "ran_i_t": (0.666, 1.65), "ran_i_s": (0.789, 1.65),
                   "ran_i_b": (0.9105, 2.3)}
        return {name: {"width_mult": wm, "depth_mult": dm} for name, (wm, dm) in presets.items()
                if wm in self.width_mults and dm in self.depth_mults}

    def min_cost(self, cost_model, n_samples=0, seed=0):
        # Every cost grows with width and depth: the smallest multipliers are the cheapest.
        arch = Arch({"width_mult": self.width_mults[0], "depth_mult": self.depth_mults[0]})
        return cost_model.cost(self.ops(arch)), arch, True
