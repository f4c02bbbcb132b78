"""DeepReShape's space: ResNet-style networks for private inference, where ReLUs are the cost.

Skeleton (DeepReShape's Table 7, HybReNet): a 3x3 stem with ``m`` channels, BN, ReLU; four
stages of basic blocks with ``m``, ``alpha m``, ``alpha beta m`` and ``alpha beta gamma m``
channels, strides 1, 2, 2, 2 and depths ``phi1`` .. ``phi4``; global pooling and a linear
classifier. Decisions: ``m``, ``alpha``, ``beta``, ``gamma``, ``phi1`` .. ``phi4``, and per
block the treatment of its two ReLUs (``s{k}_b{j}_relu``):

- ``keep``: conv-BN-ReLU-conv-BN, shortcut, ReLU (the basic block);
- ``thin``: the inner ReLU dropped (DeepReDuce's thinning of alternate ReLU layers);
- ``cull``: both dropped (DeepReDuce's culling, applied to every block of a stage);
- ``reuse2`` .. ``reuse16``: both ReLUs replaced by ReLU-reuse with reduction factor N
  (App. E): the channels are split into a fixed three groups, whatever N: a quarter kept
  as they are (feature reuse), a 1/N fraction through a 3x3 conv, BN and ReLU, and the
  rest through a 3x3 conv and BN; each group's output is added to the next group's input
  (on the channels they share: a shortcut from one feature subspace to the next). Shapes
  are kept and the ReLUs fall by exactly N; the width must be divisible by 4 and by N;
- ``thin_reuse2`` .. ``thin_reuse16``: thinned, and ReLU-reuse in place of the ReLU that
  thinning keeps (Algorithm 2 applies ReLU-reuse to the thinned network).

ReLU counts (:meth:`ReLUReuseSpace.stage_relus`) follow the paper: per image, stage 1
includes the stem's ReLU. Presets at ``grid=published``: ResNet18 with m = 16, 32, 64
(``resnet18_m16`` ..), the HRN networks of Table 5 (``hrn_5x7x2x``: alpha 5, beta 7, gamma
2, m 16, phi 2), StageCh (``stagech_3x``: alpha = beta = gamma = 3, m 16) and BaseCh
(``basech_m32``: alpha = beta = gamma = 2). :func:`relu_equalization` is Algorithm 1.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from nas import Arch, Decision, NASError, OpSpec, Space, register_op_kind, register_space
from nas.ops import LayeredOpKind, build_sequential, conv_out
from nas.space import number_list

TREATMENTS = ("keep", "thin", "cull", "reuse2", "reuse4", "reuse8", "reuse16", "thin_reuse2", "thin_reuse4",
              "thin_reuse8", "thin_reuse16")
STAGE_STRIDES = (1, 2, 2, 2)
#: Table 5's HRN networks (alpha, beta, gamma), all with m = 16 and phi = 2.
HRN_TABLE5 = ((2, 7, 2), (3, 7, 2), (4, 7, 2), (5, 7, 2), (6, 7, 2), (7, 7, 2), (2, 6, 2), (3, 6, 2), (4, 6, 2),
              (5, 6, 2), (6, 6, 2), (7, 6, 2), (2, 5, 2), (3, 5, 2), (4, 5, 2), (5, 5, 2), (6, 5, 2), (7, 5, 2),
              (2, 5, 3), (3, 5, 3), (4, 5, 3), (5, 5, 3), (6, 5, 3), (7, 5, 3), (2, 9, 2), (2, 6, 3))


def reuse_factor(treatment: str) -> int:
    """N of a ReLU-reuse treatment (``reuse8``, ``thin_reuse8``); 1 for the others."""
    _, found, factor = treatment.partition("reuse")
    return int(factor) if found else 1


def drops_relu(treatment: str, inner: bool) -> bool:
    """Whether ``treatment`` removes the block's inner (or its outer) ReLU."""
    return treatment == "cull" or (inner and treatment.startswith("thin"))


def reuse_groups(channels: int, factor: int) -> tuple[int, int, int]:
    """(kept, with ReLU, rest) channels of a ReLU-reuse unit."""
    kept, relu = channels // 4, channels // factor
    return kept, relu, channels - kept - relu


def _add_shared(x, y):
    """``x`` with ``y`` added to the channels they share (the first ``min`` of them)."""
    n = min(x.shape[1], y.shape[1])
    if n == x.shape[1]:
        return x + y[:, :n]
    return torch.cat([x[:, :n] + y[:, :n], x[:, n:]], 1)


class ReLUReuse(nn.Module):
    """ReLU-reuse with reduction factor N in place of one ReLU (see the module docstring)."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.kept, self.relu_channels, self.rest = reuse_groups(channels, factor)
        self.relu_branch = nn.Sequential(nn.Conv2d(self.relu_channels, self.relu_channels, 3, padding=1, bias=False),
                                         nn.BatchNorm2d(self.relu_channels), nn.ReLU())
        self.rest_branch = nn.Sequential(nn.Conv2d(self.rest, self.rest, 3, padding=1, bias=False),
                                         nn.BatchNorm2d(self.rest))

    def forward(self, x):
        kept, a, b = torch.split(x, [self.kept, self.relu_channels, self.rest], 1)
        y_a = self.relu_branch(_add_shared(a, kept))
        y_b = self.rest_branch(_add_shared(b, y_a))
        return torch.cat([kept, y_a, y_b], 1)


def relu_unit(channels: int, treatment: str, inner: bool) -> nn.Module:
    if drops_relu(treatment, inner):
        return nn.Identity()
    factor = reuse_factor(treatment)
    return ReLUReuse(channels, factor) if factor > 1 else nn.ReLU()


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, treatment):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out))
        self.act1 = relu_unit(c_out, treatment, inner=True)
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act2 = relu_unit(c_out, treatment, inner=False)

    def forward(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x))) + self.shortcut(x))


@register_op_kind("basic_block")
class BasicBlockOp(LayeredOpKind):
    """A ResNet basic block with a ReLU treatment, costed as one op."""

    defaults = {"stride": 1, "relu": "keep"}
    required = ("c_in", "c_out", "res")

    def out_shape(self, **p):
        r = conv_out(p["res"], 3, p["stride"], 1)
        return (p["c_out"], r, r)

    @staticmethod
    def _relu_rows(c, hw, treatment, inner):
        if drops_relu(treatment, inner):
            return []
        factor = reuse_factor(treatment)
        if factor == 1:
            return [(0, 0, c * hw, 2 * c * hw)]
        _, a, b = reuse_groups(c, factor)
        return [(9 * a * a * hw, 9 * a * a + 2 * a, a * hw, 2 * a * hw + 9 * a * a + 2 * a),
                (9 * b * b * hw, 9 * b * b + 2 * b, 0, 2 * b * hw + 9 * b * b + 2 * b)]

    def _layers(self, p):
        c, co, r, s, t = p["c_in"], p["c_out"], p["res"], p["stride"], p["relu"]
        ro = conv_out(r, 3, s, 1)
        hw, n_in, n_out = ro * ro, c * r * r, co * ro * ro
        rows = [(9 * c * co * hw, 9 * c * co + 2 * co, 0, n_in + n_out + 9 * c * co + 2 * co)]
        rows += self._relu_rows(co, hw, t, inner=True)
        rows.append((9 * co * co * hw, 9 * co * co + 2 * co, 0, 2 * n_out + 9 * co * co + 2 * co))
        if not (s == 1 and c == co):
            rows.append((c * co * hw, c * co + 2 * co, 0, n_in + n_out + c * co + 2 * co))
        rows.append((0, 0, 0, 3 * n_out))  # the residual addition
        rows += self._relu_rows(co, hw, t, inner=False)
        return rows

    def build(self, **p):
        return BasicBlock(p["c_in"], p["c_out"], p["stride"], p["relu"])


GRIDS = {
    # For the embedded data sets; small enough that a LUT lists every layer. m = 8 is
    # DeepReDuce's channel scaling (by 0.5) of the m = 16 networks.
    "small": {"ms": (8, 16), "alphas": (2, 4), "betas": (2, 4), "gammas": (2,), "phis": (1, 2),
              "treatments": TREATMENTS},
    # Table 5's HRNs, ResNet18 BaseCh (m up to 256) and StageCh (factors up to 7).
    "published": {"ms": (16, 32, 64, 128, 256), "alphas": (2, 3, 4, 5, 6, 7), "betas": (2, 3, 4, 5, 6, 7, 9),
                  "gammas": (2, 3, 4, 5, 6, 7), "phis": (1, 2, 3, 4), "treatments": TREATMENTS},
}


@register_space("relu_reuse")
class ReLUReuseSpace(Space):
    """DeepReShape's space: ResNet-style stages of basic blocks with stagewise channel factors
    alpha, beta, gamma, depths phi1..phi4 and a ReLU treatment per block (keep, thin, cull,
    ReLU-reuse by 2, 4, 8 or 16). ``grid``: ``small`` (for the embedded data sets; the shipped
    CPU LUT covers it) or ``published`` (ResNet18, Table 5's HRNs, StageCh and BaseCh as
    presets, e.g. ``grid=published resolution=32 num_classes=100``); a list given replaces the grid's."""

    def __init__(self, resolution: int = 32, num_classes: int = 10, in_channels: int = 3, grid: str = "small",
                 ms: list | None = None, alphas: list | None = None, betas: list | None = None,
                 gammas: list | None = None, phis: list | None = None, treatments: list | None = None):
        super().__init__(resolution, num_classes, in_channels)
        if grid not in GRIDS:
            raise NASError(f"relu_reuse: unknown grid {grid!r}; accepted: {', '.join(map(repr, GRIDS))}")
        self.grid = grid
        given = {"ms": ms, "alphas": alphas, "betas": betas, "gammas": gammas, "phis": phis, "treatments": treatments}
        cfg = {k: GRIDS[grid][k] if v is None else v for k, v in given.items()}
        self.ms = number_list(cfg["ms"], "relu_reuse", "ms", distinct_sorted=True)
        self.alphas, self.betas, self.gammas = (number_list(cfg[k], "relu_reuse", k, distinct_sorted=True) for k in ("alphas", "betas", "gammas"))
        self.phis = number_list(cfg["phis"], "relu_reuse", "phis", distinct_sorted=True)
        unknown = [t for t in cfg["treatments"] if t not in TREATMENTS]
        if unknown or not cfg["treatments"]:
            raise NASError(f"relu_reuse: unknown ReLU treatment {unknown[0] if unknown else None!r}; accepted: "
                           f"{', '.join(TREATMENTS)}")
        self.treatments = tuple(t for t in TREATMENTS if t in cfg["treatments"])

    def config(self):
        cfg = super().config()
        for k in ("ms", "alphas", "betas", "gammas", "phis", "treatments"):
            cfg[k] = list(cfg[k])
        return cfg

    def _make_decisions(self):
        ds = [Decision("m", self.ms, tag="width"), Decision("alpha", self.alphas, tag="width"),
              Decision("beta", self.betas, tag="width"), Decision("gamma", self.gammas, tag="width")]
        ds += [Decision(f"phi{k}", self.phis, tag="depth") for k in range(1, 5)]
        ds += [Decision(f"s{k}_b{j}_relu", self.treatments, tag="relu")
               for k in range(1, 5) for j in range(1, max(self.phis) + 1)]
        return ds

    def canonicalize(self, arch):
        # Blocks beyond a stage's depth do not exist: one key per network.
        changes = {f"s{k}_b{j}_relu": self.treatments[0] for k in range(1, 5)
                   for j in range(arch[f"phi{k}"] + 1, max(self.phis) + 1)}
        return arch.replace(**changes) if changes else arch

    def stage_widths(self, arch) -> tuple[int, int, int, int]:
        m, a, b, g = arch["m"], arch["alpha"], arch["beta"], arch["gamma"]
        return (m, a * m, a * b * m, a * b * g * m)

    def check(self, arch):
        for k, width in enumerate(self.stage_widths(arch), start=1):
            for j in range(1, arch[f"phi{k}"] + 1):
                factor = reuse_factor(arch[f"s{k}_b{j}_relu"])
                if factor > 1 and (width % factor or width % 4):
                    raise NASError(f"relu_reuse: ReLU-reuse with factor {factor} needs a width divisible by 4 and "
                                   f"by {factor}, but stage {k} has {width} channels (block {j})")

    def ops(self, arch: Arch):
        stem = OpSpec.make("conv", "stem", c_in=self.in_channels, c_out=arch["m"], res=self.resolution, k=3,
                           act="relu")
        ops, c, r = [stem], arch["m"], self.resolution
        for k, (width, stride) in enumerate(zip(self.stage_widths(arch), STAGE_STRIDES), start=1):
            for j in range(1, arch[f"phi{k}"] + 1):
                op = OpSpec.make("basic_block", f"stage{k}.block{j}", c_in=c, c_out=width, res=r,
                                 stride=stride if j == 1 else 1, relu=arch[f"s{k}_b{j}_relu"])
                ops.append(op)
                c, r = width, op.out_shape()[1]
        ops += [OpSpec.make("gap", "pool", c_in=c, res=r), OpSpec.make("linear", "classifier", c_in=c,
                                                                         c_out=self.num_classes)]
        return ops

    def build(self, arch):
        return build_sequential(self.ops(self.validate(arch)))

    def all_ops(self, samples=0, seed=0):
        # Complete: per width choice, each stage's first block (from the previous stage's
        # width) and its later blocks, under every treatment its width admits.
        ops = {}
        for m, a, b, g in itertools.product(self.ms, self.alphas, self.betas, self.gammas):
            arch = self.default_arch().replace(m=m, alpha=a, beta=b, gamma=g)
            widths, r = self.stage_widths(arch), self.resolution
            stem = OpSpec.make("conv", "stem", c_in=self.in_channels, c_out=m, res=r, k=3, act="relu")
            ops.setdefault(stem.key, stem)
            c = m
            for width, stride in zip(widths, STAGE_STRIDES):
                for t in self.treatments:
                    factor = reuse_factor(t)
                    if factor > 1 and (width % factor or width % 4):
                        continue
                    first = OpSpec.make("basic_block", "block", c_in=c, c_out=width, res=r, stride=stride, relu=t)
                    later = OpSpec.make("basic_block", "block", c_in=width, c_out=width, res=first.out_shape()[1],
                                        relu=t)
                    ops.setdefault(first.key, first)
                    if max(self.phis) > 1:
                        ops.setdefault(later.key, later)
                c, r = width, first.out_shape()[1]
            for op in (OpSpec.make("gap", "pool", c_in=c, res=r),
                       OpSpec.make("linear", "classifier", c_in=c, c_out=self.num_classes)):
                ops.setdefault(op.key, op)
        return list(ops.values())

    def min_cost(self, cost_model, n_samples=0, seed=0):
        # Costs add up over blocks and grow with width and depth; a treatment keeps the
        # block's shape, so each block takes its cheapest admissible treatment.
        arch = self.default_arch().replace(m=self.ms[0], alpha=self.alphas[0], beta=self.betas[0],
                                           gamma=self.gammas[0], **{f"phi{k}": self.phis[0] for k in range(1, 5)})
        ops = self.ops(arch)
        best = {}
        for op in ops:
            if op.kind != "basic_block":
                continue
            options = []
            for t in self.treatments:
                factor = reuse_factor(t)
                if factor > 1 and (op["c_out"] % factor or op["c_out"] % 4):
                    continue
                options.append((cost_model.op_cost(OpSpec.make("basic_block", **{**op.p, "relu": t})), t))
            best[op.name] = min(options)[1]
        arch = arch.replace(**{f"s{name[5]}_b{name.split('block')[-1]}_relu": t for name, t in best.items()})
        return cost_model.cost(self.ops(arch)), arch, True

    def stage_relus(self, arch) -> list[int]:
        """ReLUs per image of each stage, the stem's counted in stage 1 (as Table 5 does)."""
        counts = [0, 0, 0, 0]
        for op in self.ops(arch):
            if op.name == "stem":
                counts[0] += op.nonlinear()
            elif op.name.startswith("stage"):
                counts[int(op.name[5]) - 1] += op.nonlinear()
        return counts

    def treat_stages(self, arch, stages, treatment: str) -> Arch:
        """``arch`` with every block of ``stages`` (1-based) under ``treatment``."""
        if treatment not in self.treatments:
            raise NASError(f"relu_reuse: treatment {treatment!r} is not among this space's treatments: "
                           f"{', '.join(self.treatments)}")
        return self.validate(arch.replace(**{f"s{k}_b{j}_relu": treatment for k in stages
                                             for j in range(1, arch[f"phi{k}"] + 1)}))

    def scale_channels(self, arch, factor: float) -> Arch:
        """``arch`` with every stage's width scaled by ``factor`` (through ``m``; DeepReDuce's
        channel scaling), which must give one of the space's ``ms``."""
        m = arch["m"] * factor
        if m != int(m) or int(m) not in self.ms:
            raise NASError(f"relu_reuse: scaling m = {arch['m']} by {factor:g} gives {m:g}, which is not among "
                           f"space.ms ({', '.join(map(str, self.ms))}); add it to space.ms")
        return self.validate(arch.replace(m=int(m)))

    def _presets(self):
        def net(m, a, b, g, phi=2):
            values = {"m": m, "alpha": a, "beta": b, "gamma": g, **{f"phi{k}": phi for k in range(1, 5)}}
            values.update({d.name: "keep" for d in self.decisions("relu")})
            return values

        table = {f"resnet18_m{m}": net(m, 2, 2, 2) for m in (16, 32, 64)}
        table.update({f"hrn_{a}x{b}x{g}x": net(16, a, b, g) for a, b, g in HRN_TABLE5})
        table.update({f"stagech_{k}x": net(16, k, k, k) for k in range(2, 8)})
        table.update({f"basech_m{m}": net(m, 2, 2, 2) for m in (16, 32, 64, 128, 256)})
        decisions = {d.name: d.options for d in self.decisions()}
        return {n: a for n, a in table.items() if all(v in decisions[k] for k, v in a.items())}


def relu_equalization(order=(3, 2, 4, 1), phis=(2, 2, 2, 2), factors=None, values=range(1, 17)) -> list[tuple]:
    """DeepReShape's Algorithm 1 for a network whose stage k has ReLUs proportional to
    ``phi_k * prod(lambda_1 .. lambda_{k-1}) / 4**(k-1)`` (the channels grow by the
    factors, the resolution halves per stage): the assignments under which the stages'
    ReLU counts strictly follow ``order`` (most critical first), each pair of consecutive
    stages giving one inequality.

    Exactly one of ``phis`` and ``factors`` may hold ``None`` entries, the unknowns, which
    range over ``values`` (factors at least 2, depths at least 1). Returns the minimal
    solutions as tuples of the unknowns (no other solution is <= in every unknown), e.g.
    for widths with phi = 2 and the order S3 > S2 > S4 > S1 the (alpha, beta, gamma) of
    HRN-7x5x2x, HRN-5x5x3x, HRN-6x6x2x and HRN-5x7x2x (App. B.1).
    """
    stages = len(order)
    if sorted(order) != list(range(1, stages + 1)):
        raise NASError(f"order must list the stages 1..{stages} once each, most critical first; got {list(order)}")
    phis = list(phis) if phis is not None else [None] * stages
    factors = list(factors) if factors is not None else [None] * (stages - 1)
    if len(phis) != stages or len(factors) != stages - 1:
        raise NASError(f"a {stages}-stage network needs {stages} phis and {stages - 1} factors")
    unknown = [("phi", i) for i, v in enumerate(phis) if v is None] + \
              [("factor", i) for i, v in enumerate(factors) if v is None]
    if not unknown:
        raise NASError("give at least one unknown (None) among phis and factors")
    ranges = [[v for v in values if v >= (2 if kind == "factor" else 1)] for kind, _ in unknown]
    solutions = []
    for combo in itertools.product(*ranges):
        phi, lam = list(phis), list(factors)
        for (kind, i), v in zip(unknown, combo):
            (phi if kind == "phi" else lam)[i] = v
        relus = [phi[k] * math.prod(lam[:k]) / 4 ** k for k in range(stages)]
        if all(relus[a - 1] > relus[b - 1] for a, b in zip(order, order[1:])):
            solutions.append(combo)
    return [s for s in solutions if not any(o != s and all(x <= y for x, y in zip(o, s)) for o in solutions)]
