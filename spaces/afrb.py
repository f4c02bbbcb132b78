"""RAN-e's space of Activation Function Restructuring Blocks (AFRB).

Restructurable Activation Networks (Bhardwaj et al.) search which inverted bottlenecks
(IBN) of a network can lose their non-linearity: an IBN whose layers are all linear
collapses into one small regular convolution, which accelerators run far better. The
network is the SuperNet of the paper's Table 5 with Table 6's top, read as in
``shared/specs/architectures.md``:

    stem 3x3 conv 3->16 s2, then 17 units, then 1x1 conv to 1344, 7x7 depthwise,
    global pooling and a 1000-way classifier (each conv with BN and the activation).

Each unit is searched: its form, ``I`` (an IBN: 1x1 expansion, kxk depthwise, 1x1
projection, each with BN, activations after the first two) or ``R`` (the collapsed form:
BN, activation, one kxk convolution with bias), and its kernel k (the fine-tuning stages
of Fig. 4 e-f change some kernels to 5 or 7). AFRB-2 rows carry a residual; the AFRB-3
row is two units, n -> n/2 and n/2 -> n (both expanding the row's input width n by e),
with one residual around the pair, so collapsed it is a residual-like block of two
regular convs with half the channels in between.

The presets are Fig. 4's networks; at 224 px and 1000 classes their MACs and parameters
are those of Table 1. ``width_mult`` scales every width (``make_divisible`` by 8), the
reduced-width variant for small data (0.91 is the paper's SubNetwork-W).

For the search, :meth:`AFRBSpace.relaxed` builds the PReLU SuperNet: every unit an AFRB
(Fig. 2a) whose two PReLUs share one trainable alpha, PReLU(1 - alpha) before the
expansion and PReLU(alpha) after the depthwise conv. At alpha = 0 the unit is an IBN
without its first activation; at alpha = 1 everything after the first ReLU is linear and
:func:`collapse` turns it into the ``R`` form's convolution, exactly.

One detail makes the collapse exact at the borders: the depthwise conv of an AFRB pads
its input with the value the preceding BN gives a zero input (its effective bias) rather
than with zeros, as DBB's "BN and pad" layer does. With zero padding, the expansion's BN
bias would reach border pixels of the collapsed conv only partially, and no single conv
with a bias could reproduce the block.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from nas import Arch, Decision, NASError, OpSpec, Space, register_space
from nas.ops import ACTIVATIONS, conv_out, make_divisible
from nas.training.relax import Relaxation, ops_cost

#: Table 5: (block, input width, output width, expansion, stride) of each row after the
#: stem. An ``A3`` row is two units with a residual around the pair.
ROWS = (
    ("A1", 16, 32, 6, 1), ("A1", 32, 48, 6, 2), ("A1", 48, 64, 6, 2), ("A1", 64, 80, 6, 1),
    ("A1", 80, 80, 6, 2), ("A2", 80, 80, 6, 1), ("A1", 80, 96, 4, 1), ("A2", 96, 96, 4, 1),
    ("A1", 96, 128, 6, 1), ("A3", 128, 128, 6, 1), ("A1", 128, 160, 6, 2), ("A1", 160, 176, 4, 1),
    ("A2", 176, 176, 4, 1), ("A2", 176, 176, 4, 1), ("A1", 176, 224, 6, 1), ("A2", 224, 224, 6, 1),
)
STEM = (3, 2, 16)  # kernel, stride, width
TOP_WIDTH, TOP_KERNEL = 1344, 7  # Table 6

#: Fig. 4's networks, one token per unit: kernel, then R (collapsed) or I (IBN).
PRESETS = {
    "supernet_all_ibn": "3I " * 17,
    "subnetwork_a": "3I 3I 3I 3R 3I 3R 3I 3R 3I 3I 3I 3R 3I 3I 3R 3I 3I",
    "subnetwork_b": "3R 3R 3I 3R 3I 3R 3I 3R 3I 3I 3I 3R 3I 3I 3R 3I 3I",
    "subnetwork_c": "3R 3R 3I 3R 5I 3R 5I 3R 3I 3I 3I 3R 7I 3I 3R 5I 5I",
    "ground_truth": "3R 3R 3R 3R 5I 5I 3I 3I 3R 3R 3R 7I 3I 3I 3I 5I 5I",
}
FORMS = ("I", "R")


class Unit:
    """One searchable unit: widths, expansion width, stride, input resolution."""

    def __init__(self, index: int, c_in: int, c_out: int, mid: int, stride: int, res: int):
        self.index, self.c_in, self.c_out, self.mid, self.stride, self.res = index, c_in, c_out, mid, stride, res

    @property
    def out_res(self) -> int:
        return conv_out(self.res, 3, self.stride, 1)  # the same for every odd kernel with k // 2 padding


class Row:
    """A row of Table 5: its units and whether a residual spans them."""

    def __init__(self, kind: str, units: list[Unit]):
        self.kind, self.units = kind, units

    @property
    def residual(self) -> bool:
        return self.kind in ("A2", "A3")


class Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def _row_module(row: Row, units: list[nn.Module]) -> nn.Module:
    body = units[0] if len(units) == 1 else nn.Sequential(*units)
    return Residual(body) if row.residual else body


class AFRBNet(nn.Module):
    def __init__(self, stem: nn.Module, rows: list[nn.Module], top: nn.Module):
        super().__init__()
        self.stem, self.rows, self.top = stem, nn.Sequential(*rows), top

    def forward(self, x):
        return self.top(self.rows(self.stem(x)))


@register_space("afrb")
class AFRBSpace(Space):
    """The RAN-e SuperNet's units (Tables 5-6), each an IBN (I) or its collapsed regular
    convolution (R), and the kernel. ``width_mult`` 1.0 at 224 px and 1000 classes is the
    published SuperNet (Table 1's counts); the default 0.5 is the reduced-width variant for
    small data."""

    def __init__(self, resolution: int = 224, num_classes: int = 1000, in_channels: int = 3,
                 width_mult: float = 0.5, act: str = "hswish", kernels: list = (3, 5, 7)):
        super().__init__(resolution, num_classes, in_channels)
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not 0 < width_mult <= 4:
            raise NASError(f"afrb field width_mult must be a number in (0, 4], got {width_mult!r}")
        if act not in ACTIVATIONS:
            raise NASError(f"afrb field act must be one of {', '.join(map(repr, sorted(ACTIVATIONS)))}, got {act!r}")
        try:
            self.kernels = tuple(int(k) for k in kernels)
        except (TypeError, ValueError):
            raise NASError(f"afrb field kernels must be a list of odd integers, got {kernels!r}") from None
        if not self.kernels or any(k < 1 or k % 2 == 0 for k in self.kernels) or 3 not in self.kernels:
            raise NASError(f"afrb field kernels must be odd integers including 3 (the SuperNet's), got {kernels!r}")
        self.width_mult, self.act = float(width_mult), act
        self.rows = self._make_rows()
        self.units = [u for row in self.rows for u in row.units]

    def config(self):
        cfg = super().config()
        cfg["kernels"] = list(self.kernels)
        return cfg

    def width(self, c: int) -> int:
        return c if self.width_mult == 1 else make_divisible(c * self.width_mult)

    def _stem(self) -> OpSpec:
        k, s, c = STEM
        return OpSpec.make("conv", "stem", c_in=self.in_channels, c_out=self.width(c), res=self.resolution, k=k,
                           stride=s, act=self.act)

    def _make_rows(self) -> list[Row]:
        res = self._stem().out_shape()[1]
        rows, index = [], 1
        for kind, c_in, c_out, e, stride in ROWS:
            n, out = self.width(c_in), self.width(c_out)
            if kind == "A3":
                half = self.width(c_in // 2)
                units = [Unit(index, n, half, e * n, 1, res), Unit(index + 1, half, out, e * n, 1, res)]
            else:
                units = [Unit(index, n, out, e * n, stride, res)]
            rows.append(Row(kind, units))
            index += len(units)
            res = units[-1].out_res
        return rows

    # ------------------------------------------------------------------ decisions
    def _make_decisions(self):
        ds = []
        for u in self.units:
            ds.append(Decision(f"u{u.index}_form", FORMS, tag="form"))
            ds.append(Decision(f"u{u.index}_kernel", self.kernels, tag="kernel"))
        return ds

    def _presets(self):
        table = {}
        for name, text in PRESETS.items():
            tokens = text.split()
            values = {}
            for u, token in zip(self.units, tokens):
                values[f"u{u.index}_form"], values[f"u{u.index}_kernel"] = token[-1], int(token[:-1])
            if all(v in self.kernels for k, v in values.items() if k.endswith("_kernel")):
                table[name] = values
        return table


    # ------------------------------------------------------------------ layers and models
    def unit_ops(self, u: Unit, form: str, k: int) -> list[OpSpec]:
        """The layers of unit ``u`` in ``form`` with kernel ``k``."""
        name = f"u{u.index}"
        if form == "R":
            return [OpSpec.make("norm", f"{name}.pre", c_in=u.c_in, res=u.res, act=self.act),
                    OpSpec.make("conv", f"{name}.conv", c_in=u.c_in, c_out=u.c_out, res=u.res, k=k, stride=u.stride,
                                bias=True, bn=False)]
        return [OpSpec.make("conv", f"{name}.expand", c_in=u.c_in, c_out=u.mid, res=u.res, k=1, act=self.act),
                OpSpec.make("conv", f"{name}.dw", c_in=u.mid, c_out=u.mid, res=u.res, k=k, stride=u.stride,
                            groups=u.mid, act=self.act),
                OpSpec.make("conv", f"{name}.proj", c_in=u.mid, c_out=u.c_out, res=u.out_res, k=1)]

    def row_add(self, row: Row) -> OpSpec:
        return OpSpec.make("add", f"u{row.units[-1].index}.add", c_in=row.units[0].c_in, res=row.units[0].res)

    def top_ops(self) -> list[OpSpec]:
        last = self.units[-1]
        c, r, feat = last.c_out, last.out_res, self.width(TOP_WIDTH)
        return [OpSpec.make("conv", "top.expand", c_in=c, c_out=feat, res=r, k=1, act=self.act),
                OpSpec.make("conv", "top.dw", c_in=feat, c_out=feat, res=r, k=TOP_KERNEL, groups=feat, act=self.act),
                OpSpec.make("gap", "top.pool", c_in=feat, res=r),
                OpSpec.make("linear", "top.classifier", c_in=feat, c_out=self.num_classes)]

    def choice(self, arch: Arch, u: Unit) -> tuple[str, int]:
        return arch[f"u{u.index}_form"], arch[f"u{u.index}_kernel"]

    def ops(self, arch):
        out = [self._stem()]
        for row in self.rows:
            for u in row.units:
                out += self.unit_ops(u, *self.choice(arch, u))
            if row.residual:
                out.append(self.row_add(row))
        return out + self.top_ops()

    def build(self, arch):
        arch = self.validate(arch)
        rows = [_row_module(row, [nn.Sequential(*(op.build() for op in self.unit_ops(u, *self.choice(arch, u))))
                                  for u in row.units]) for row in self.rows]
        top = nn.Sequential(*(op.build() for op in self.top_ops()))
        return AFRBNet(self._stem().build(), rows, top)

    def summary(self, arch: Arch) -> dict:
        forms = [arch[f"u{u.index}_form"] for u in self.units]
        return {"units": len(forms), "collapsed": forms.count("R"), "ibn": forms.count("I")}

    # ------------------------------------------------------------------ LUT support
    def all_ops(self, samples=0, seed=0):
        # Exact: a unit's input width and resolution do not depend on the other units.
        ops = {}
        for op in [self._stem(), *self.top_ops(), *(self.row_add(r) for r in self.rows if r.residual)]:
            ops.setdefault(op.key, op)
        for u in self.units:
            for form in FORMS:
                for k in self.kernels:
                    for op in self.unit_ops(u, form, k):
                        ops.setdefault(op.key, op)
        return list(ops.values())

    def min_cost(self, cost_model, n_samples=0, seed=0):
        # Exact: the cost is a sum over units whose choices are independent.
        values = {}
        for u in self.units:
            form, k = min(((f, k) for f in FORMS for k in self.kernels),
                          key=lambda c: ops_cost(cost_model, self.unit_ops(u, *c)))
            values[f"u{u.index}_form"], values[f"u{u.index}_kernel"] = form, k
        arch = Arch(values)
        return cost_model.cost(self.ops(arch)), arch, True

    # ------------------------------------------------------------------ search
    def relaxed(self, base: Arch | None = None, seed: int = 0, alpha_init: float = 0.0, cost_sigma: float = 0.25,
                **_) -> "AFRBSupernet":
        """The PReLU SuperNet, one alpha per unit, kernels from ``base`` (default: the
        all-IBN SuperNet). Deterministic given torch's seed (``seed`` is not needed)."""
        return AFRBSupernet(self, self.validate(base) if base is not None else self.default_arch(), alpha_init,
                            cost_sigma)


# ---------------------------------------------------------------------------- AFRB


def _prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return F.prelu(x, slope.reshape(1))


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of ``bn`` in inference: ``bn(x) = scale * x + shift`` per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class AFRB(nn.Module):
    """One unit of the PReLU SuperNet (Fig. 2a): BN, PReLU(1 - alpha), 1x1 expansion, BN,
    kxk depthwise (stride s, input padded with the BN's bias), BN, PReLU(alpha), 1x1
    projection, BN. Both PReLUs share the trainable ``alpha``."""

    def __init__(self, c_in: int, c_out: int, mid: int, k: int, stride: int, alpha_init: float = 0.0):
        super().__init__()
        self.k, self.stride = k, stride
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.bn_in = nn.BatchNorm2d(c_in)
        self.expand = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, k, stride, 0, groups=mid, bias=False)
        self.bn_dw = nn.BatchNorm2d(mid)
        self.proj = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn_proj = nn.BatchNorm2d(c_out)

    def forward(self, x):
        x = _prelu(self.bn_in(x), 1 - self.alpha)
        z = self.bn_expand(self.expand(x))
        # Pad with what the BN gives a zero input, so that a zero-padded input of the
        # collapsed conv sees the same border values (see the module docstring).
        _, shift = _bn_scale_shift(self.bn_expand)
        shift = shift.view(1, -1, 1, 1)
        p = self.k // 2
        z = F.pad(z - shift, (p, p, p, p)) + shift
        z = _prelu(self.bn_dw(self.dw(z)), self.alpha)
        return self.bn_proj(self.proj(z))


@torch.no_grad()
def collapse_afrb(block: AFRB, tolerance: float = 1e-6) -> nn.Sequential:
    """The ``R`` form of an AFRB whose alpha is 1: BN, ReLU, and one kxk convolution with
    bias that computes exactly what the expansion, depthwise and projection layers and
    their BatchNorms (in inference) compute together."""
    alpha = float(block.alpha.detach())
    if abs(alpha - 1) > tolerance:
        raise NASError(f"an AFRB collapses only when alpha = 1 (its layers are then linear); this one has alpha "
                       f"{alpha:.4g}")
    s1, t1 = _bn_scale_shift(block.bn_expand)
    s2, t2 = _bn_scale_shift(block.bn_dw)
    s3, t3 = _bn_scale_shift(block.bn_proj)
    expand = block.expand.weight[:, :, 0, 0] * s1[:, None]  # (mid, c_in)
    dw = block.dw.weight[:, 0] * s2[:, None, None]  # (mid, k, k)
    proj = block.proj.weight[:, :, 0, 0] * s3[:, None]  # (c_out, mid)
    weight = torch.einsum("om,muv,mi->oiuv", proj, dw, expand)
    bias = proj @ (t1 * dw.sum((1, 2)) + t2) + t3
    conv = nn.Conv2d(expand.shape[1], proj.shape[0], block.k, block.stride, block.k // 2, bias=True)
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)
    bn = nn.BatchNorm2d(expand.shape[1])
    bn.load_state_dict(block.bn_in.state_dict())
    return nn.Sequential(bn, nn.ReLU(), conv).train(block.training)


def collapse(module: nn.Module, strict: bool = True) -> nn.Module:
    """``module`` with every AFRB replaced by its collapsed convolution: AFRB-1 is an AFRB,
    AFRB-2 a :class:`Residual` around one, AFRB-3 a Residual around two (collapsed: the
    residual-like block of two regular convolutions). An AFRB whose alpha is not 1 is an
    error, or with ``strict=False`` is kept as it is."""
    if isinstance(module, AFRB):
        if not strict and not math.isclose(float(module.alpha.detach()), 1.0, abs_tol=1e-6):
            return module
        return collapse_afrb(module)
    if isinstance(module, Residual):
        return Residual(collapse(module.body, strict))
    if isinstance(module, nn.Sequential):
        return nn.Sequential(*(collapse(m, strict) for m in module))
    return module


class AFRBSupernet(Relaxation):
    """The PReLU SuperNet of an :class:`AFRBSpace`: RAN-e's relaxation, one alpha per unit.

    Its structural penalty is problem (3)'s ``sum((alpha - 1)^2)``. Its expected cost
    treats a unit as collapsed with probability ``exp(-(alpha - 1)^2 / (2 sigma^2))``
    (1 at alpha = 1), so the cost-aware search pulls hardest on the units whose collapse
    saves the most.
    """

    state_kind = "alpha"

    def __init__(self, space: AFRBSpace, base: Arch, alpha_init: float, cost_sigma: float):
        super().__init__()
        if not cost_sigma > 0:
            raise NASError(f"afrb relaxation cost_sigma must be > 0, got {cost_sigma}")
        self.space, self.base, self.cost_sigma = space, base, cost_sigma
        self.stem = space._stem().build()
        self.afrbs = nn.ModuleDict()
        rows = []
        for row in space.rows:
            units = []
            for u in row.units:
                self.afrbs[f"u{u.index}"] = AFRB(u.c_in, u.c_out, u.mid, base[f"u{u.index}_kernel"], u.stride,
                                                 alpha_init)
                units.append(self.afrbs[f"u{u.index}"])
            rows.append(_row_module(row, units))
        self.rows = nn.Sequential(*rows)
        self.top = nn.Sequential(*(op.build() for op in space.top_ops()))
        self._costs = None

    def forward(self, x):
        return self.top(self.rows(self.stem(x)))

    def arch_parameters(self):
        return {f"{name}_alpha": afrb.alpha for name, afrb in self.afrbs.items()}

    def penalty(self):
        return sum((a - 1) ** 2 for a in self.arch_parameters().values())

    def bind_cost(self, cost_model):
        space, base = self.space, self.base
        per_unit = []
        for u in space.units:
            k = base[f"u{u.index}_kernel"]
            per_unit.append((ops_cost(cost_model, space.unit_ops(u, "I", k)), ops_cost(cost_model, space.unit_ops(u, "R", k))))
        fixed = [space._stem(), *space.top_ops(), *(space.row_add(r) for r in space.rows if r.residual)]
        self._costs = (cost_model.cost(fixed), torch.tensor(per_unit, dtype=torch.float32))

    def collapse_probability(self) -> torch.Tensor:
        alphas = torch.stack(list(self.arch_parameters().values()))
        return torch.exp(-((alphas - 1) ** 2) / (2 * self.cost_sigma ** 2))

    def expected_cost(self):
        if self._costs is None:
            raise NASError("call bind_cost(cost_model) before expected_cost()")
        fixed, table = self._costs
        p = self.collapse_probability()
        return fixed + (p * table[:, 1] + (1 - p) * table[:, 0]).sum()

    def pin(self, arch: Arch) -> None:
        """Set every unit's alpha to the end that stands for its form in ``arch``: 0 for an
        IBN (``I``), 1 for the collapsible form (``R``). The path's kernels must be the
        base's, the only ones this SuperNet holds."""
        arch = self.space.validate(arch)
        wrong = [name for name in self.afrbs if arch[f"{name}_kernel"] != self.base[f"{name}_kernel"]]
        if wrong:
            raise NASError(f"this AFRB SuperNet holds the base's kernels only; the path differs at "
                           f"{', '.join(f'{n}_kernel' for n in wrong)}")
        with torch.no_grad():
            for name, afrb in self.afrbs.items():
                afrb.alpha.fill_(1.0 if arch[f"{name}_form"] == "R" else 0.0)

    def export(self, arch: Arch) -> nn.Module:
        """The network of path ``arch`` with this SuperNet's weights (a copy, alphas pinned
        by :meth:`pin` and frozen), as weight-sharing ranking evaluates it. An ``I`` unit is
        the AFRB at alpha 0, an IBN without the first activation (what the search trained),
        not the space's built IBN; an ``R`` unit computes exactly its collapsed convolution."""
        path = copy.deepcopy(self)
        path.pin(arch)
        for alpha in path.arch_parameters().values():
            alpha.requires_grad_(False)
        return AFRBNet(path.stem, list(path.rows), path.top)

    def derive(self, band=(0.8, 1.3), **_):
        """Units whose alpha lies in ``band`` collapse (``R``); the others are IBNs."""
        lo, hi = band
        forms = {f"{name}_form": "R" if lo <= float(afrb.alpha.detach()) <= hi else "I"
                 for name, afrb in self.afrbs.items()}
        return self.space.canonicalize(self.base.replace(**forms))

    def distributions(self):
        # the expected cost's reading of alpha: R with the collapse probability
        collapse = self.collapse_probability().detach().tolist()
        return {f"{name}_form": (FORMS, [1 - p, p]) for name, p in zip(self.afrbs, collapse)}

    def state(self):
        return {name: float(a.detach()) for name, a in self.arch_parameters().items()}

    def summary(self, arch):
        return self.space.summary(arch)

    def collapsed(self) -> nn.Module:
        """This SuperNet with every unit whose alpha is 1 collapsed (the others kept)."""
        return AFRBNet(self.stem, [collapse(row, strict=False) for row in self.rows], self.top)
