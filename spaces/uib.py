"""MobileNetV4's Universal Inverted Bottleneck (UIB) space.

A network is a stem, an optional fixed prefix of blocks, searchable stages of UIB
blocks, a fixed suffix, and MobileNetV4's head. Per stage, the width and the depth are
``coarse`` decisions; per block slot, the start depthwise kernel (0 = none), the middle
depthwise kernel (0 = none), the expansion ratio and whether the block is a Fused-IB are
``fine`` decisions. The four named UIB instantiations are points of this space:

    ExtraDW  start > 0, middle > 0        IB   start = 0, middle > 0
    ConvNeXt-like  start > 0, middle = 0  FFN  start = 0, middle = 0

Block definitions follow ``shared/specs/architectures.md`` (MobileNetV4 section):

- ``conv(k, s, c)``: kxk conv, BN, ReLU.
- ``fused(k, s, e, c)``: kxk conv to ``mid = make_divisible(in*e)`` with stride s, BN,
  ReLU; 1x1 conv to c, BN. A Fused-IB slot uses the middle kernel as its k (3 if none).
- ``uib(a, m, s, e, c)``: if a, axk depthwise on ``in``, BN; 1x1 to mid, BN, ReLU; if m,
  mxm depthwise on mid with stride s, BN, ReLU; 1x1 to c, BN. The stride sits in the
  middle depthwise when there is one, else in the start one; an FFN in a strided slot
  (no depthwise to carry the stride) is read as an IB with a 3x3 middle depthwise.
- Residual when s = 1 and in = c.

The skeleton is chosen by the ``skeleton`` field: ``small`` (the default, for 28-32 px
data: four stages of at most 2-3 blocks) or ``mnv4_conv_small`` / ``mnv4_conv_medium``
(MobileNetV4's own prefix, suffix and head, with choices around its published stage
widths and depths; their presets are the published networks).

Costs are per layer: every conv, and every residual addition, is its own OpSpec, so a LUT
needs one entry per layer shape rather than one per block configuration.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas import Arch, Decision, NASError, OpSpec, Space, register_space
from nas.ops import LayeredOpKind, activation, make_divisible, register_op_kind
from nas.space import number_list
from nas.training.relax import Relaxation, gumbel_hard, ops_cost
from nas.training.supernet import Pieces, SharedConv, SliceSGD

# ---------------------------------------------------------------------------- block specs

BLOCK_RE = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(conv|fused|uib)\(([\d,\s]+)\)\s*$")
ARITY = {"conv": 3, "fused": 4, "uib": 5}


def parse_blocks(text: str) -> list[tuple]:
    """``"conv(3, 2, 32), 4 x uib(0, 3, 1, 2, 96)"`` -> ``[("conv", 3, 2, 32), ("uib", 0, 3, 1, 2, 96), ...]``."""
    blocks = []
    for part in re.split(r",\s*(?=(?:\d+\s*x\s*)?(?:conv|fused|uib)\()", text.strip()):
        m = BLOCK_RE.match(part)
        if not m:
            raise NASError(f"{part!r} is not a block spec; use conv(k, s, c), fused(k, s, e, c), "
                           "uib(a, m, s, e, c), optionally prefixed by 'N x '")
        kind, args = m.group(2), tuple(int(a) for a in m.group(3).split(","))
        if len(args) != ARITY[kind]:
            raise NASError(f"{part!r}: {kind} takes {ARITY[kind]} numbers, got {len(args)}")
        blocks += [(kind, *args)] * int(m.group(1) or 1)
    return blocks


def block_layers(block: tuple, c_in: int, res: int, name: str) -> tuple[list[OpSpec], bool]:
    """The layers of one block as OpSpecs (in order), and whether it has a residual."""
    kind = block[0]
    conv = lambda suffix, **p: OpSpec.make("conv", f"{name}.{suffix}", **p)  # noqa: E731
    if kind == "conv":
        _, k, s, c = block
        return [conv("conv", c_in=c_in, c_out=c, res=res, k=k, stride=s, act="relu")], False
    if kind == "fused":
        _, k, s, e, c = block
        mid = make_divisible(c_in * e)
        first = conv("fused", c_in=c_in, c_out=mid, res=res, k=k, stride=s, act="relu")
        r = first.out_shape()[1]
        return [first, conv("proj", c_in=mid, c_out=c, res=r, k=1)], s == 1 and c_in == c
    _, a, m, s, e, c = block
    mid = make_divisible(c_in * e)
    layers, r = [], res
    if a:
        layers.append(conv("start_dw", c_in=c_in, c_out=c_in, res=r, k=a, stride=1 if m else s, groups=c_in))
        r = layers[-1].out_shape()[1]
    layers.append(conv("expand", c_in=c_in, c_out=mid, res=r, k=1, act="relu"))
    if m:
        layers.append(conv("mid_dw", c_in=mid, c_out=mid, res=r, k=m, stride=s, groups=mid, act="relu"))
        r = layers[-1].out_shape()[1]
    layers.append(conv("proj", c_in=mid, c_out=c, res=r, k=1))
    return layers, s == 1 and c_in == c


def canonical_block(block: dict, stride: int) -> dict:
    """The form a block slot's choices are built as: a Fused-IB ignores the start
    depthwise and reads "no middle kernel" as 3; an FFN in a strided slot, having no
    depthwise to carry the stride, is the IB with a 3x3 middle depthwise."""
    if block.get("fused"):
        return dict(block, start_dw=0, mid_dw=block["mid_dw"] or 3)
    if stride > 1 and not block["start_dw"] and not block["mid_dw"]:
        return dict(block, mid_dw=3)
    return block


def residual_add(layers: list[OpSpec], name: str) -> OpSpec:
    """The OpSpec of the addition that closes a residual block."""
    c, r, _ = layers[-1].out_shape()
    return OpSpec.make("add", f"{name}.add", c_in=c, res=r)


class UIBBlock(nn.Module):
    """Layers built from a block's OpSpecs, run in sequence, plus the residual."""

    def __init__(self, layers: list[OpSpec], residual: bool):
        super().__init__()
        self.layers = nn.Sequential(*(op.build() for op in layers))
        self.residual = residual

    def forward(self, x):
        y = self.layers(x)
        return x + y if self.residual else y


@register_op_kind("mnv4_head")
class MNv4Head(LayeredOpKind):
    """Global average pooling, an optional 1x1 conv to ``c_feat`` (no bias) with BN and
    ReLU (``c_feat`` = 0: none), and the linear classifier (with bias)."""

    defaults = {"c_feat": 0}
    required = ("c_in", "res", "classes")

    def out_shape(self, **p):
        return (p["classes"],)

    def _layers(self, p):
        c, f, n, r = p["c_in"], p["c_feat"], p["classes"], p["res"]
        rows = [(0, 0, 0, c * r * r + c)]
        if f:
            rows.append((c * f, c * f + 2 * f, f, c + f + c * f))
        width = f or c
        rows.append((width * n, width * n + n, 0, width + n + width * n))
        return rows

    def build(self, **p):
        c, f = p["c_in"], p["c_feat"]
        layers = [nn.AdaptiveAvgPool2d(1)]
        if f:
            layers += [nn.Conv2d(c, f, 1, bias=False), nn.BatchNorm2d(f), activation("relu")]
        layers += [nn.Flatten(1), nn.Linear(f or c, p["classes"])]
        return nn.Sequential(*layers)


# ---------------------------------------------------------------------------- skeletons


@dataclass(frozen=True)
class Stage:
    widths: tuple  # options of the stage's output width
    depths: tuple  # options of its number of blocks
    stride: int  # of its first block


@dataclass(frozen=True)
class Skeleton:
    stem: tuple  # (k, s, c) of the stem conv
    prefix: str  # fixed blocks after the stem (block specs)
    stages: tuple  # searchable Stages
    suffix: str  # fixed blocks after the stages
    feature: int  # the head's 1x1 conv width after pooling (0: none)
    presets: tuple = ()  # (name, per-stage block specs) of published networks in this skeleton


SKELETONS = {
    # For 28-32 px data: the stem and three strided stages bring 32 px to 2x2.
    "small": Skeleton(
        stem=(3, 2, 16), prefix="",
        stages=(Stage((16, 24, 32), (1, 2), 1), Stage((24, 32, 48), (1, 2, 3), 2),
                Stage((48, 64, 80), (1, 2, 3), 2), Stage((64, 96, 128), (1, 2, 3), 2)),
        suffix="conv(1, 1, 256)", feature=0),
    "mnv4_conv_small": Skeleton(
        stem=(3, 2, 32), prefix="conv(3, 2, 32), conv(1, 1, 32), conv(3, 2, 96), conv(1, 1, 64)",
        stages=(Stage((64, 80, 96, 112, 128), (4, 5, 6, 7, 8), 2),
                Stage((96, 112, 128, 160, 192), (4, 5, 6, 7, 8), 2)),
        suffix="conv(1, 1, 960)", feature=1280,
        presets=(("mnv4_conv_small", (
            "uib(5, 5, 2, 3, 96), 4 x uib(0, 3, 1, 2, 96), uib(3, 0, 1, 4, 96)",
            "uib(3, 3, 2, 6, 128), uib(5, 5, 1, 4, 128), uib(0, 5, 1, 4, 128), uib(0, 5, 1, 3, 128), "
            "2 x uib(0, 3, 1, 4, 128)")),)),
    "mnv4_conv_medium": Skeleton(
        stem=(3, 2, 32), prefix="fused(3, 2, 4, 48)",
        stages=(Stage((64, 80, 96), (1, 2, 3, 4), 2),
                Stage((128, 160, 192), (6, 7, 8, 9, 10), 2),
                Stage((192, 224, 256, 288), (9, 10, 11, 12, 13), 2)),
        suffix="conv(1, 1, 960)", feature=1280,
        presets=(("mnv4_conv_medium", (
            "uib(3, 5, 2, 4, 80), uib(3, 3, 1, 2, 80)",
            "uib(3, 5, 2, 6, 160), 2 x uib(3, 3, 1, 4, 160), uib(3, 5, 1, 4, 160), uib(3, 3, 1, 4, 160), "
            "uib(3, 0, 1, 4, 160), uib(0, 0, 1, 2, 160), uib(3, 0, 1, 4, 160)",
            "uib(5, 5, 2, 6, 256), uib(5, 5, 1, 4, 256), 2 x uib(3, 5, 1, 4, 256), uib(0, 0, 1, 4, 256), "
            "uib(3, 0, 1, 4, 256), uib(3, 5, 1, 2, 256), uib(5, 5, 1, 4, 256), 2 x uib(0, 0, 1, 4, 256), "
            "uib(5, 0, 1, 2, 256)")),)),
}

#: The block every slot holds in stage 1 of the two-stage search, and beyond a stage's
#: depth: an inverted bottleneck with expansion 4 and a 3x3 middle depthwise.
DEFAULT_BLOCK = {"start_dw": 0, "mid_dw": 3, "expansion": 4, "fused": False}
#: The depthwise kernels stage 2 of MobileNetV4's search chooses from (0: the layer absent).
STAGE2_KERNELS = (0, 3, 5)


@register_space("uib")
class UIBSpace(Space):
    """UIB blocks in a MobileNetV4 skeleton; ``coarse`` stage shapes, ``fine`` blocks.

    ``skeleton``: ``small`` (28-32 px data), ``mnv4_conv_small`` or ``mnv4_conv_medium``
    (presets of the same names; 224 px, 1000 classes). ``kernels``: the depthwise kernels of
    the start and middle layers (0: none); ``expansions``; ``fused``: offer Fused-IB per block."""

    def __init__(self, resolution: int = 224, num_classes: int = 1000, in_channels: int = 3,
                 skeleton: str = "small", kernels: list = (0, 3, 5, 7), expansions: list = (2, 3, 4, 6),
                 fused: bool = True):
        super().__init__(resolution, num_classes, in_channels)
        if skeleton not in SKELETONS:
            raise NASError(f"uib skeleton {skeleton!r} is not one of {', '.join(map(repr, SKELETONS))}")
        self.skeleton = skeleton
        self.kernels = number_list(kernels, "uib", "kernels", minimum=0)
        if any(k % 2 == 0 for k in self.kernels if k):
            raise NASError(f"uib kernels must be 0 (none) or odd, got {list(self.kernels)}")
        self.expansions = number_list(expansions, "uib", "expansions")
        if not isinstance(fused, bool):
            raise NASError(f"uib field fused must be true or false, got {fused!r}")
        self.fused = fused
        for field, options in (("kernels", self.kernels), ("expansions", self.expansions)):
            key = "mid_dw" if field == "kernels" else "expansion"
            if DEFAULT_BLOCK[key] not in options or (field == "kernels" and 0 not in options):
                raise NASError(f"uib {field} must include {DEFAULT_BLOCK[key]}"
                               f"{' and 0' if field == 'kernels' else ''} (the default block), got {list(options)}")
        sk = SKELETONS[skeleton]
        self.sk = sk
        self.prefix = parse_blocks(sk.prefix) if sk.prefix else []
        self.suffix = parse_blocks(sk.suffix) if sk.suffix else []

    def config(self):
        cfg = super().config()
        cfg["kernels"], cfg["expansions"] = list(self.kernels), list(self.expansions)
        return cfg

    # ------------------------------------------------------------------ decisions
    @property
    def stages(self) -> tuple:
        return self.sk.stages

    def slot(self, s: int, b: int, field: str) -> str:
        return f"s{s}_b{b}_{field}"

    def _make_decisions(self):
        ds = []
        for s, stage in enumerate(self.stages, start=1):
            ds.append(Decision(f"s{s}_width", stage.widths, tag="coarse"))
            ds.append(Decision(f"s{s}_depth", stage.depths, tag="coarse"))
            for b in range(1, max(stage.depths) + 1):
                ds.append(Decision(self.slot(s, b, "start_dw"), self.kernels, tag="fine"))
                ds.append(Decision(self.slot(s, b, "mid_dw"), self.kernels, tag="fine"))
                ds.append(Decision(self.slot(s, b, "expansion"), self.expansions, tag="fine"))
                if self.fused:
                    ds.append(Decision(self.slot(s, b, "fused"), (False, True), tag="fine"))
        return ds

    def default_arch(self):
        # Stage 1 of MobileNetV4's search: every block an IB with expansion 4 and a 3x3
        # depthwise (the stage shapes take their first options).
        values = {d.name: d.options[0] for d in self.decisions()}
        for s, stage in enumerate(self.stages, start=1):
            for b in range(1, max(stage.depths) + 1):
                for field, value in DEFAULT_BLOCK.items():
                    if field != "fused" or self.fused:
                        values[self.slot(s, b, field)] = value
        return self.canonicalize(Arch(values))

    def two_stage_search(self) -> list[tuple[str, list[Decision]]]:
        """MobileNetV4's two stages as (name, decisions searched with their options): the
        stage widths and depths with every block at :data:`DEFAULT_BLOCK`, then each block's
        two depthwise layers, absent, 3x3 or 5x5 (those of the space's ``kernels``), with the
        expansion held at 4 and no Fused-IB. The space's other choices (kernel 7, other
        expansions, Fused-IB) are for one-stage and black-box searches."""
        depthwise = [Decision(d.name, tuple(k for k in d.options if k in STAGE2_KERNELS), tag=d.tag)
                     for d in self.decisions("fine") if d.name.endswith(("_start_dw", "_mid_dw"))]
        return [("stage1-coarse", self.decisions("coarse")), ("stage2-depthwise", depthwise)]

    def slot_block(self, arch: Arch, s: int, b: int) -> dict:
        fields = ("start_dw", "mid_dw", "expansion") + (("fused",) if self.fused else ())
        return {f: arch[self.slot(s, b, f)] for f in fields}

    def canonicalize(self, arch):
        # One key per network: slots beyond a stage's depth hold the default block, a
        # Fused-IB ignores the start depthwise (and reads "no middle kernel" as 3), and an
        # FFN in a strided slot is the IB it is built as.
        changes = {}
        for s, stage in enumerate(self.stages, start=1):
            for b in range(1, max(stage.depths) + 1):
                block = self.slot_block(arch, s, b)
                if b > arch[f"s{s}_depth"]:
                    want = {k: v for k, v in DEFAULT_BLOCK.items() if k in block}
                else:
                    want = canonical_block(block, stage.stride if b == 1 else 1)
                for field, value in want.items():
                    if block[field] != value:
                        changes[self.slot(s, b, field)] = value
        return arch.replace(**changes) if changes else arch

    def block_spec(self, block: dict, stride: int, width: int) -> tuple:
        if block.get("fused"):
            return ("fused", block["mid_dw"] or 3, stride, block["expansion"], width)
        return ("uib", block["start_dw"], block["mid_dw"], stride, block["expansion"], width)

    def blocks(self, arch: Arch) -> list[tuple[str, tuple]]:
        """(name, block spec) of every block of the network, in order."""
        out = [(f"prefix{i}", b) for i, b in enumerate(self.prefix)]
        for s, stage in enumerate(self.stages, start=1):
            for b in range(1, arch[f"s{s}_depth"] + 1):
                spec = self.block_spec(self.slot_block(arch, s, b), stage.stride if b == 1 else 1, arch[f"s{s}_width"])
                out.append((f"stage{s}.block{b}", spec))
        out += [(f"suffix{i}", b) for i, b in enumerate(self.suffix)]
        return out

    # ------------------------------------------------------------------ layers and models
    def _stem(self) -> OpSpec:
        k, s, c = self.sk.stem
        return OpSpec.make("conv", "stem", c_in=self.in_channels, c_out=c, res=self.resolution, k=k, stride=s,
                           act="relu")

    def layout(self, arch: Arch) -> list[tuple[str, list[OpSpec], bool]]:
        """(block name, layer OpSpecs, residual) from stem to head."""
        stem = self._stem()
        out = [("stem", [stem], False)]
        c, r = stem.out_shape()[0], stem.out_shape()[1]
        for name, spec in self.blocks(arch):
            layers, residual = block_layers(spec, c, r, name)
            out.append((name, layers, residual))
            c, r = layers[-1].out_shape()[0], layers[-1].out_shape()[1]
        out.append(("head", [OpSpec.make("mnv4_head", "head", c_in=c, res=r, c_feat=self.sk.feature,
                                         classes=self.num_classes)], False))
        return out

    def ops(self, arch):
        out = []
        for name, layers, residual in self.layout(arch):
            out += layers
            if residual:
                out.append(residual_add(layers, name))
        return out

    def build(self, arch):
        arch = self.validate(arch)
        return nn.Sequential(*(UIBBlock(layers, residual) for _, layers, residual in self.layout(arch)))

    # ------------------------------------------------------------------ presets
    def _presets(self):
        table = {}
        for name, stage_specs in self.sk.presets:
            values = {}
            for s, text in enumerate(stage_specs, start=1):
                blocks = parse_blocks(text)
                values[f"s{s}_width"] = blocks[0][-1]
                values[f"s{s}_depth"] = len(blocks)
                for b in range(1, max(self.stages[s - 1].depths) + 1):
                    fields = dict(DEFAULT_BLOCK)
                    if b <= len(blocks):
                        _, a, m, _, e, _ = blocks[b - 1]
                        fields = {"start_dw": a, "mid_dw": m, "expansion": e, "fused": False}
                    for f, v in fields.items():
                        if f != "fused" or self.fused:
                            values[self.slot(s, b, f)] = v
            table[name] = values
        return table


    # ------------------------------------------------------------------ LUT support
    def all_ops(self, samples=0, seed=0):
        # Complete: every block slot's layers for every input width it can see (the
        # previous stage's widths for a first block, its own stage's after), every block
        # choice, at the stage's resolution.
        stem = self._stem()
        ops = {stem.key: stem}
        c_options, r = [stem.out_shape()[0]], stem.out_shape()[1]
        for name, spec in [(f"prefix{i}", b) for i, b in enumerate(self.prefix)]:
            layers, residual = block_layers(spec, c_options[0], r, name)
            self._collect(ops, layers, residual)
            c_options, r = [layers[-1].out_shape()[0]], layers[-1].out_shape()[1]
        choices = [dict(zip(("start_dw", "mid_dw", "expansion", "fused"), (a, m, e, f)))
                   for a in self.kernels for m in self.kernels for e in self.expansions
                   for f in ((False, True) if self.fused else (False,))]
        for s, stage in enumerate(self.stages, start=1):
            r_next = r
            for width in stage.widths:
                contexts = [(c, r, stage.stride) for c in c_options]
                if max(stage.depths) > 1:
                    contexts.append((width, None, 1))
                for c_in, res, stride in contexts:
                    for block in choices:
                        block = canonical_block(block, stride)
                        layers, residual = block_layers(self.block_spec(block, stride, width), c_in,
                                                        r_next if res is None else res, f"stage{s}")
                        self._collect(ops, layers, residual)
                        if res is not None:
                            r_next = layers[-1].out_shape()[1]
            c_options, r = list(stage.widths), r_next
        for c_in in c_options:
            c, rr = c_in, r
            for name, spec in [(f"suffix{i}", b) for i, b in enumerate(self.suffix)]:
                layers, residual = block_layers(spec, c, rr, name)
                self._collect(ops, layers, residual)
                c, rr = layers[-1].out_shape()[0], layers[-1].out_shape()[1]
            head = OpSpec.make("mnv4_head", "head", c_in=c, res=rr, c_feat=self.sk.feature, classes=self.num_classes)
            ops.setdefault(head.key, head)
        return list(ops.values())

    @staticmethod
    def _collect(ops: dict, layers: list[OpSpec], residual: bool) -> None:
        for op in layers:
            ops.setdefault(op.key, op)
        if residual:
            add = residual_add(layers, "block")
            ops.setdefault(add.key, add)

    # ------------------------------------------------------------------ supernet
    def supernet(self) -> "UIBSupernet":
        return UIBSupernet(self)

    def relaxed(self, base: Arch | None = None, tau: float = 1.0, seed: int = 0, **_) -> "UIBRelaxation":
        """Mixed operations over the ``fine`` decisions of ``base``'s blocks (default: the
        space's default arch), its stage shapes held."""
        return UIBRelaxation(self, self.validate(base) if base is not None else self.default_arch(), tau, seed)


# ---------------------------------------------------------------------------- supernet


class UIBSupernet(nn.Module):
    """One set of weights from which every arch of a :class:`UIBSpace` runs.

    Per block slot: a start depthwise, an expansion, a middle depthwise and a projection
    sized for the largest input width, expansion and kernel of the slot, plus a Fused-IB
    conv and projection. Smaller kernels are the centres of the largest, narrower layers
    the first channels. ``forward(x, arch)`` runs the arch's path only, and
    :meth:`optimizer` updates only the slices it used, so a step costs little more than
    training that path alone. :meth:`export` gives the standalone model with the shared
    weights it used.
    """

    def __init__(self, space: UIBSpace):
        super().__init__()
        self.space = space
        kmax = max(space.kernels)
        self.pieces = Pieces()
        # Fixed parts keep their shapes, except that the suffix's first layer (and the
        # head) see the last stage's width: they are built for the largest one.
        self.stem = SharedConv(space.in_channels, space.sk.stem[2], space.sk.stem[0], self.pieces)
        self.prefix = nn.ModuleList()
        c = space.sk.stem[2]
        for spec in space.prefix:
            self.prefix.append(self._block_weights(spec, c))
            c = spec[-1]
        self.slots = nn.ModuleDict()
        emax = max(space.expansions)
        for s, stage in enumerate(space.stages, start=1):
            wmax = max(stage.widths)
            for b in range(1, max(stage.depths) + 1):
                c_in = c if b == 1 else wmax
                mid = make_divisible(c_in * emax)
                self.slots[f"s{s}_b{b}"] = nn.ModuleDict({
                    "start_dw": SharedConv(c_in, c_in, kmax, self.pieces, depthwise=True),
                    "expand": SharedConv(c_in, mid, 1, self.pieces),
                    "mid_dw": SharedConv(mid, mid, kmax, self.pieces, depthwise=True),
                    "proj": SharedConv(mid, wmax, 1, self.pieces),
                    "fused": SharedConv(c_in, mid, kmax, self.pieces),
                    "fused_proj": SharedConv(mid, wmax, 1, self.pieces),
                })
            c = wmax
        self.suffix = nn.ModuleList()
        for spec in space.suffix:
            self.suffix.append(self._block_weights(spec, c))
            c = spec[-1]
        feat = space.sk.feature
        self.head_feat = SharedConv(c, feat, 1, self.pieces) if feat else None
        self.classifier = nn.Linear(feat or c, space.num_classes)

    def _block_weights(self, spec: tuple, c_in: int) -> nn.ModuleDict:
        """Weights of a fixed block, exactly its shape."""
        if spec[0] == "conv":
            return nn.ModuleDict({"conv": SharedConv(c_in, spec[3], spec[1], self.pieces)})
        layers, _ = block_layers(spec, c_in, self.space.resolution, "fixed")
        return nn.ModuleDict({role: SharedConv(op["c_in"], op["c_out"], op["k"], self.pieces,
                                                    depthwise=op["groups"] > 1)
                              for role, op in zip(self._roles(spec), layers)})

    def _roles(self, spec: tuple) -> list[str]:
        """The weights each layer of :func:`block_layers` uses, in its order."""
        if spec[0] == "conv":
            return ["conv"]
        if spec[0] == "fused":
            return ["fused", "fused_proj"]
        _, a, m, *_ = spec
        return (["start_dw"] if a else []) + ["expand"] + (["mid_dw"] if m else []) + ["proj"]

    def _paths(self, arch: Arch):
        """(weights, block spec, layer OpSpecs, residual) of every block of ``arch``."""
        space = self.space
        stem, *blocks, head = space.layout(arch)
        named = dict(space.blocks(arch))
        weights = {f"prefix{i}": w for i, w in enumerate(self.prefix)}
        weights.update({f"suffix{i}": w for i, w in enumerate(self.suffix)})
        for name, layers, residual in blocks:
            if name.startswith("stage"):
                s, b = name[len("stage"):].split(".block")
                w = self.slots[f"s{s}_b{b}"]
            else:
                w = weights[name]
            yield name, w, named[name], layers, residual

    def optimizer(self, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> SliceSGD:
        """The optimizer for training this supernet: it updates the slices each step used."""
        return SliceSGD(self.parameters(), self.pieces, lr, momentum, weight_decay)

    def forward(self, x, arch: Arch, gates: dict | None = None):
        """Logits of ``arch``'s path. ``gates`` (block name -> scalar tensor) scale blocks'
        outputs (their residual branch), how a mixed-op relaxation passes gradients to
        the choices that made the path."""
        self.pieces.recording = self.training
        k, s, c = self.space.sk.stem
        x = self.stem(x, c, k, s, True)
        for name, w, spec, layers, residual in self._paths(arch):
            y = x
            for role, op in zip(self._roles(spec), layers):
                p = op.p
                y = w[role](y, p["c_out"], p["k"], p["stride"], p["act"] == "relu")
            if gates and name in gates:
                y = y * gates[name]
            x = x + y if residual else y
        x = x.mean((2, 3), keepdim=True)
        if self.head_feat is not None:
            x = self.head_feat(x, self.space.sk.feature, 1, 1, True)
        x = x.flatten(1)
        weight = self.pieces.take(self.classifier.weight, (slice(None), slice(0, x.shape[1])))
        return F.linear(x, weight, self.pieces.take(self.classifier.bias, (slice(None),)))

    def export(self, arch: Arch) -> nn.Module:
        """``space.build(arch)`` loaded with the weights this supernet runs ``arch`` with."""
        arch = self.space.validate(arch)
        model = self.space.build(arch)
        blocks = list(model)
        self.stem.export(blocks[0].layers[0][0], blocks[0].layers[0][1])
        for module, (_, w, spec, layers, _) in zip(blocks[1:-1], self._paths(arch)):
            for role, layer in zip(self._roles(spec), module.layers):
                w[role].export(layer[0], layer[1])
        head = blocks[-1].layers[0]
        if self.head_feat is not None:
            self.head_feat.export(head[1], head[2])
        with torch.no_grad():
            head[-1].weight.copy_(self.classifier.weight[:, :head[-1].in_features])
            head[-1].bias.copy_(self.classifier.bias)
        return model


# ---------------------------------------------------------------------------- relaxation


class UIBRelaxation(Relaxation):
    """Mixed operations (GDAS, Dong & Yang 2019) over the ``fine`` decisions of the blocks
    of ``base``, on the weight-sharing :class:`UIBSupernet`.

    Per decision, logits over its options. A training forward pass draws one option per
    decision with the Gumbel-max trick and runs that path only; each block's output is
    scaled by the straight-through one-hot gates of its decisions (exactly 1 forward),
    which carries the loss's gradient to the logits. Evaluation runs the argmax path. The
    expected cost is exact under the independent distributions: per block, the cost of
    every combination of its options times the product of their probabilities.
    """

    state_kind = "probs"

    def __init__(self, space: UIBSpace, base: Arch, tau: float, seed: int):
        super().__init__()
        if not tau > 0:
            raise NASError(f"uib relaxation tau must be > 0, got {tau}")
        self.space, self.base, self.tau = space, base, tau
        self.supernet = UIBSupernet(space)
        self.fields = ("start_dw", "mid_dw", "expansion") + (("fused",) if space.fused else ())
        self.blocks = {}  # block name -> (stage, index, decision names in the order of self.fields)
        for s, stage in enumerate(space.stages, start=1):
            for b in range(1, base[f"s{s}_depth"] + 1):
                self.blocks[f"stage{s}.block{b}"] = (s, b, [space.slot(s, b, f) for f in self.fields])
        self.logits = nn.ParameterDict({name: nn.Parameter(torch.zeros(len(space.decision(name).options)))
                                        for _, _, names in self.blocks.values() for name in names})
        self.generator = torch.Generator().manual_seed(seed)
        self._costs = None

    def arch_parameters(self):
        return dict(self.logits.items())

    def generators(self):
        return [self.generator]

    def weight_parameters(self):
        return list(self.supernet.parameters())

    def weight_optimizer(self, lr, momentum=0.9, weight_decay=0.0):
        return self.supernet.optimizer(lr, momentum, weight_decay)

    def _values(self, indices: dict[str, int]) -> dict:
        return {n: self.space.decision(n).options[i] for n, i in indices.items()}

    def forward(self, x):
        if not self.training:
            return self.supernet(x, self.derive())
        indices, hard = {}, {}
        for name, logits in self.logits.items():
            indices[name], hard[name] = gumbel_hard(logits, self.tau, self.generator)
        values = self._values(indices)
        arch = self.space.canonicalize(self.base.replace(**values))
        gates = {}
        for block, (_, _, names) in self.blocks.items():
            # Only choices the built path honours get credit (a Fused-IB ignores the
            # start depthwise, for one).
            used = [hard[n][indices[n]] for n in names if arch[n] == values[n]]
            if used:
                gates[block] = torch.stack(used).prod()
        return self.supernet(x, arch, gates)

    def bind_cost(self, cost_model):
        space, base = self.space, self.base
        layout = {name: layers for name, layers, _ in space.layout(base)}
        tables, chosen = [], 0.0
        for block, (s, b, names) in self.blocks.items():
            stage = space.stages[s - 1]
            stride, width = stage.stride if b == 1 else 1, base[f"s{s}_width"]
            c_in, res = layout[block][0]["c_in"], layout[block][0]["res"]
            options = [space.decision(n).options for n in names]
            costs = []
            for combo in itertools.product(*options):
                block_choice = canonical_block(dict(zip(self.fields, combo)), stride)
                spec = space.block_spec(block_choice, stride, width)
                layers, residual = block_layers(spec, c_in, res, block)
                costs.append(ops_cost(cost_model, layers + ([residual_add(layers, block)] if residual else [])))
            table = torch.tensor(costs, dtype=torch.float64).reshape([len(o) for o in options])
            tables.append((names, table))
            chosen += float(table[tuple(space.decision(n).index(base[n]) for n in names)])
        fixed = cost_model.cost(space.ops(base)) - chosen
        self._costs = (fixed, tables)

    def expected_cost(self):
        if self._costs is None:
            raise NASError("call bind_cost(cost_model) before expected_cost()")
        fixed, tables = self._costs
        total = torch.tensor(fixed, dtype=torch.float64)
        for names, table in tables:
            expected = table
            for name in reversed(names):  # contract the last axis with its probabilities
                expected = expected @ F.softmax(self.logits[name], 0).double()
            total = total + expected
        return total.float()

    def derive(self, **_):
        values = self._values({n: int(v.detach().argmax()) for n, v in self.logits.items()})
        return self.space.canonicalize(self.base.replace(**values))

    def distributions(self):
        return {n: (self.space.decision(n).options, p) for n, p in self.state().items()}

    def state(self):
        return {n: F.softmax(v.detach(), 0).tolist() for n, v in self.logits.items()}
