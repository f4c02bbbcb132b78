"""HANT's space: every layer of a trained teacher replaced by one of 197 candidate ops.

The teacher is an Arch of another space whose OpSpecs run one after the other (e.g. the
EfficientNet-style ``mbconv`` space), or a list of OpSpecs given from Python. Its first
op (the stem) and its head (global pooling, classifier) stay; every op in between is a
*layer* with one decision over the candidate pool. Each candidate maps the teacher
layer's input shape to its output shape (the stride is taken by the candidate's first
spatial op; the attention ops pool after attending).

The candidate registry (:data:`CANDIDATES`) maps a name to a constructor
``f(c_in, c_out, stride, res) -> OpSpec``; plug-ins may register more with
:func:`register_candidate`. The paper's pool (Sec. 3, "Candidate operations") gives the
families and grids but not which grid points make up its 197; this module's choice,
:data:`HANT_POOL`:

========================  ====================================================  =====
family                    grid                                                  ops
========================  ====================================================  =====
``teacher``               the teacher layer itself                                  1
``identity``              identity; a 1x1 conv + BN where shapes differ             1
``efn`` (MBConv)          kernel {1,3,5} x expansion {1,3,6} x SE {none,.04,.025}  27
``efnv2`` (Fused-MBConv)  kernel {1,3,5} x expansion {1,3,6} x SE {none,.04,.025}  27
``cb_stack`` (CBRCB)      kernel {1,3,5,7} x width {1/16,1/10,1/8,1/5,1/4,1/2,     40
                          1,2,3,4}
``conv_cs`` (CBR pair)    kernel {1,3,5,7} x the same 10 widths                    40
``cb_bottle`` (CBR-CBR-   kernel {1,3,5,7} x width {1/4, 1/2}                       8
CB, residual)
``cb_res`` (CB pair)      kernel {1,3,5,7}                                          4
``repvgg``                3x3 + 1x1 + identity branches                             1
``vit``                   depth {1,2} x dim {32,...,1024} x heads {4,8,16}         36
``bot_trans``             expansion {1/4,1/2,1,2,3,4}, 4 heads                      6
``lambda``                expansion {1/4,1/2,1,2,3,4}, 4 heads, key depth 16        6
========================  ====================================================  =====

SE ratios are of the block's input channels (EfficientNet's convention; the paper's
``se1.00`` is "no SE"). Widths are of the teacher layer's output channels. Attention
(``vit``, ``bot_trans``) is global over the feature map with keys and values average
pooled to at most 16x16 positions (exact global attention on maps up to 16x16, the
small teacher's; bounded memory on an EfficientNet's 112x112 maps). Where the teacher
layer keeps its shape, ``efn``, ``efnv2``, ``cb_bottle``, ``cb_res``, ``bot_trans`` and
``lambda`` add an identity shortcut; ``cb_bottle``, ``cb_res``, ``bot_trans`` and
``lambda`` project the shortcut (1x1 conv + BN) otherwise.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas import Arch, Decision, NASError, OpSpec, Space, register_op_kind, register_space
from nas.errors import one_of
from nas.ops import TracedOpKind, activation, build_sequential, conv_out

# --------------------------------------------------------------------------- modules


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, act: str | None = None, groups: int = 1) -> nn.Sequential:
    """Conv (no bias), BatchNorm, optional activation: C-B(-R) in the paper's notation."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out),
                         activation(act))


def downsample(stride: int) -> nn.Module:
    """Average pooling with the output size of a stride-``stride`` conv with 'same' padding."""
    if stride == 1:
        return nn.Identity()
    return nn.AvgPool2d(2 * (stride // 2) + 1, stride, stride // 2, count_include_pad=False)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int, act: str = "silu"):
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = activation(act)
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


class ResidualCandidate(nn.Module):
    """``post(body(x) + shortcut(x))``; no shortcut when it is None."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None, post: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.post = post if post is not None else nn.Identity()

    def forward(self, x):
        y = self.body(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.post(y)


class Branches(nn.Module):
    """The sum of parallel branches (RepVGG's training-time form)."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        out = self.branches[0](x)
        for b in self.branches[1:]:
            out = out + b(x)
        return out


def shortcut(c_in: int, c_out: int, stride: int, project: bool) -> nn.Module | None:
    """Identity where shapes match; else a 1x1 conv + BN (``project``) or no shortcut."""
    if c_in == c_out and stride == 1:
        return nn.Identity()
    return conv_bn(c_in, c_out, 1, stride) if project else None


class Attention(nn.Module):
    """Multi-head self-attention over the positions of a feature map (tokens ``(B, H*W,
    C)``); keys and values from the map average-pooled to at most ``max_kv`` x ``max_kv``."""

    def __init__(self, dim: int, heads: int, max_kv: int = 16):
        super().__init__()
        if dim % heads:
            raise NASError(f"attention dim {dim} is not divisible by {heads} heads")
        self.heads, self.max_kv = heads, max_kv
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens, h: int, w: int):
        b, n, c = tokens.shape
        source = tokens
        if max(h, w) > self.max_kv:
            grid = tokens.transpose(1, 2).reshape(b, c, h, w)
            source = F.adaptive_avg_pool2d(grid, (min(h, self.max_kv), min(w, self.max_kv))).flatten(2).transpose(1, 2)
        d = c // self.heads
        q = self.q(tokens).reshape(b, n, self.heads, d).transpose(1, 2)
        k, v = self.kv(source).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * d ** -0.5, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: attention and an MLP (ratio 4, GELU), each with a residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, tokens, h, w):
        tokens = tokens + self.attn(self.norm1(tokens), h, w)
        return tokens + self.mlp(self.norm2(tokens))


class ViTOp(nn.Module):
    """Pixels as tokens: a strided 1x1 embedding to ``dim`` plus a learned position
    embedding, ``depth`` transformer blocks, a 1x1 conv + BN to the output channels."""

    def __init__(self, c_in, c_out, stride, res_out, dim, heads, depth):
        super().__init__()
        self.embed = nn.Conv2d(c_in, dim, 1, stride)
        self.pos = nn.Parameter(torch.zeros(1, dim, res_out, res_out))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.out = conv_bn(dim, c_out, 1)

    def forward(self, x):
        z = self.embed(x) + self.pos
        b, c, h, w = z.shape
        tokens = z.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens, h, w)
        return self.out(tokens.transpose(1, 2).reshape(b, c, h, w))


class MHSA2d(nn.Module):
    """BoTNet's all-to-all attention on a feature map, with a learned position embedding."""

    def __init__(self, dim, heads, res):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, dim, res, res))
        self.attn = Attention(dim, heads)

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = (x + self.pos).flatten(2).transpose(1, 2)
        return self.attn(tokens, h, w).transpose(1, 2).reshape(b, c, h, w)


class Lambda2d(nn.Module):
    """Lambda layer (Bello, 2021): content lambda from softmax-normalised keys and values,
    position lambdas from an ``r`` x ``r`` local context (a 3-D convolution over the
    values), applied to ``heads`` queries of depth ``k``; output channels ``dim``."""

    def __init__(self, dim, heads=4, k=16, r=7):
        super().__init__()
        if dim % heads:
            raise NASError(f"lambda layer dim {dim} is not divisible by {heads} heads")
        self.heads, self.k, self.v = heads, k, dim // heads
        self.to_q = conv_bn(dim, k * heads, 1)
        self.to_k = nn.Conv2d(dim, k, 1, bias=False)
        self.to_v = conv_bn(dim, self.v, 1)
        # The 1 x r x r kernel of a 3-D convolution, held as a 4-D tensor so that the
        # module converts to channels-last like every other (5-D tensors cannot).
        self.pos_weight = nn.Parameter(torch.empty(k, 1, r, r))
        self.pos_bias = nn.Parameter(torch.zeros(k))
        nn.init.kaiming_uniform_(self.pos_weight, a=math.sqrt(5))
        self.r = r

    def forward(self, x):
        b, _, h, w = x.shape
        n = h * w
        q = self.to_q(x).reshape(b, self.heads, self.k, n)
        keys = torch.softmax(self.to_k(x).reshape(b, self.k, n), dim=-1)
        v = self.to_v(x)
        content = torch.einsum("bkn,bvn->bkv", keys, v.reshape(b, self.v, n))
        position = F.conv3d(v.unsqueeze(1), self.pos_weight.unsqueeze(2), self.pos_bias,
                            padding=(0, self.r // 2, self.r // 2)).reshape(b, self.k, self.v, n)
        y = torch.einsum("bhkn,bkv->bhvn", q, content) + torch.einsum("bhkn,bkvn->bhvn", q, position)
        return y.reshape(b, self.heads * self.v, h, w)


# --------------------------------------------------------------------------- op kinds


class CandidateKind(TracedOpKind):
    """A candidate op: input ``(c_in, res, res)``, output ``(c_out, res_out, res_out)``
    with ``res_out`` that of a stride-``stride`` conv with 'same' padding."""

    defaults = {"stride": 1}
    required = ("c_in", "c_out", "res")

    def out_shape(self, **p):
        r = conv_out(p["res"], 1, p["stride"], 0)
        return (p["c_out"], r, r)


def _mid(p) -> int:
    return max(1, round(p["w"] * p["c_out"]))


@register_op_kind("efn")
class EfnKind(CandidateKind):
    """MBConv: 1x1 expand (e > 1), kxk depthwise (stride), SE, 1x1 project; SiLU."""

    def build(self, **p):
        c_in, c_out, k, e, s = p["c_in"], p["c_out"], p["k"], p["e"], p["stride"]
        m = c_in * e
        layers = [conv_bn(c_in, m, 1, act="silu")] if e != 1 else []
        layers.append(conv_bn(m, m, k, s, "silu", groups=m))
        if p["se"]:
            layers.append(SqueezeExcite(m, max(1, round(c_in * p["se"]))))
        layers.append(conv_bn(m, c_out, 1))
        return ResidualCandidate(nn.Sequential(*layers), shortcut(c_in, c_out, s, project=False))


@register_op_kind("efnv2")
class Efnv2Kind(CandidateKind):
    """Fused-MBConv: kxk conv (stride) to ``e`` x channels, SE, 1x1 project; with e = 1
    the kxk conv alone (with SE). SiLU."""

    def build(self, **p):
        c_in, c_out, k, e, s = p["c_in"], p["c_out"], p["k"], p["e"], p["stride"]
        m = c_in * e if e != 1 else c_out
        layers = [conv_bn(c_in, m, k, s, "silu")]
        if p["se"]:
            layers.append(SqueezeExcite(m, max(1, round(c_in * p["se"]))))
        if e != 1:
            layers.append(conv_bn(m, c_out, 1))
        return ResidualCandidate(nn.Sequential(*layers), shortcut(c_in, c_out, s, project=False))


@register_op_kind("cb_stack")
class CbStackKind(CandidateKind):
    """CBRCB: kxk conv (stride) to ``w`` x out channels, BN, ReLU, kxk conv, BN."""

    def build(self, **p):
        m = _mid(p)
        return nn.Sequential(conv_bn(p["c_in"], m, p["k"], p["stride"], "relu"), conv_bn(m, p["c_out"], p["k"]))


@register_op_kind("conv_cs")
class ConvCsKind(CandidateKind):
    """A CBR pair: kxk conv (stride) to ``w`` x out channels, BN, ReLU; 1x1 conv, BN, ReLU."""

    def build(self, **p):
        m = _mid(p)
        return nn.Sequential(conv_bn(p["c_in"], m, p["k"], p["stride"], "relu"), conv_bn(m, p["c_out"], 1, act="relu"))


@register_op_kind("cb_bottle")
class CbBottleKind(CandidateKind):
    """ResNet bottleneck CBR-CBR-CB (1x1, kxk with stride, 1x1; ``w`` x out channels in
    the middle), shortcut, ReLU."""

    def build(self, **p):
        m, s = _mid(p), p["stride"]
        body = nn.Sequential(conv_bn(p["c_in"], m, 1, act="relu"), conv_bn(m, m, p["k"], s, "relu"),
                             conv_bn(m, p["c_out"], 1))
        return ResidualCandidate(body, shortcut(p["c_in"], p["c_out"], s, project=True), nn.ReLU())


@register_op_kind("cb_res")
class CbResKind(CandidateKind):
    """A CB pair: kxk conv + BN on the main path, identity (or 1x1 conv + BN) on the
    shortcut, ReLU after the sum."""

    def build(self, **p):
        s = p["stride"]
        return ResidualCandidate(conv_bn(p["c_in"], p["c_out"], p["k"], s), shortcut(p["c_in"], p["c_out"], s, project=True),
                     nn.ReLU())


@register_op_kind("repvgg")
class RepVGGKind(CandidateKind):
    """RepVGG block as trained: kxk conv + BN, 1x1 conv + BN and (shapes permitting) BN
    alone, summed, ReLU."""

    def build(self, **p):
        c_in, c_out, s = p["c_in"], p["c_out"], p["stride"]
        branches = [conv_bn(c_in, c_out, p["k"], s), conv_bn(c_in, c_out, 1, s)]
        if c_in == c_out and s == 1:
            branches.append(nn.BatchNorm2d(c_in))
        return nn.Sequential(Branches(*branches), nn.ReLU())


@register_op_kind("vit")
class ViTKind(CandidateKind):
    """ViT blocks on the map's positions (see :class:`ViTOp`)."""

    def build(self, **p):
        return ViTOp(p["c_in"], p["c_out"], p["stride"], self.out_shape(**p)[1], p["dim"], p["heads"], p["depth"])


def _attn_mid(p) -> int:
    return max(4, 4 * round(p["e"] * p["c_out"] / 4))


@register_op_kind("bot_trans")
class BotTransKind(CandidateKind):
    """Bottleneck transformer: 1x1 CBR to ``e`` x out channels, 4-head MHSA (then average
    pooling for the stride), BN, ReLU, 1x1 CB; shortcut, ReLU."""

    def build(self, **p):
        m, s = _attn_mid(p), p["stride"]
        body = nn.Sequential(conv_bn(p["c_in"], m, 1, act="relu"), MHSA2d(m, 4, p["res"]), downsample(s),
                             nn.BatchNorm2d(m), nn.ReLU(), conv_bn(m, p["c_out"], 1))
        return ResidualCandidate(body, shortcut(p["c_in"], p["c_out"], s, project=True), nn.ReLU())


@register_op_kind("lambda")
class LambdaKind(CandidateKind):
    """Lambda bottleneck: 1x1 CBR to ``e`` x out channels, lambda layer (then average
    pooling for the stride), BN, ReLU, 1x1 CB; shortcut, ReLU."""

    def build(self, **p):
        m, s, r = _attn_mid(p), p["stride"], p["res"]
        context = min(7, r if r % 2 else r - 1)
        body = nn.Sequential(conv_bn(p["c_in"], m, 1, act="relu"), Lambda2d(m, 4, 16, max(1, context)), downsample(s),
                             nn.BatchNorm2d(m), nn.ReLU(), conv_bn(m, p["c_out"], 1))
        return ResidualCandidate(body, shortcut(p["c_in"], p["c_out"], s, project=True), nn.ReLU())


# --------------------------------------------------------------------------- registry

#: name -> constructor ``f(c_in, c_out, stride, res) -> OpSpec`` (``teacher`` is special:
#: it is the teacher layer's own OpSpec).
CANDIDATES: dict[str, Callable[..., OpSpec]] = {}
TEACHER = "teacher"
IDENTITY = "identity"


def register_candidate(name: str, constructor: Callable[..., OpSpec]) -> None:
    """Add a candidate op: ``constructor(c_in, c_out, stride, res)`` returns its OpSpec."""
    if name in CANDIDATES or name == TEACHER:
        raise NASError(f"candidate op {name!r} is registered already")
    CANDIDATES[name] = constructor


def _family(kind: str, **fixed) -> Callable[..., OpSpec]:
    def make(c_in, c_out, stride, res):
        return OpSpec.make(kind, c_in=c_in, c_out=c_out, stride=stride, res=res, **fixed)

    return make


def _identity(c_in, c_out, stride, res):
    if c_in == c_out and stride == 1:
        return OpSpec.make("identity", c_in=c_in, res=res)
    return OpSpec.make("conv", c_in=c_in, c_out=c_out, res=res, k=1, stride=stride)


def _num(x: float) -> str:
    return f"{x:g}"


WIDTHS = (1 / 16, 1 / 10, 1 / 8, 1 / 5, 1 / 4, 1 / 2, 1, 2, 3, 4)
EXPANSIONS = (1 / 4, 1 / 2, 1, 2, 3, 4)

HANT_POOL: list[str] = [TEACHER, IDENTITY]
register_candidate(IDENTITY, _identity)
for _kind in ("efn", "efnv2"):
    for _k in (1, 3, 5):
        for _e in (1, 3, 6):
            for _se in (0, 0.04, 0.025):
                _name = f"{_kind}_k{_k}_e{_e}" + (f"_se{_num(_se)}" if _se else "")
                register_candidate(_name, _family(_kind, k=_k, e=_e, se=_se))
                HANT_POOL.append(_name)
for _kind in ("cb_stack", "conv_cs"):
    for _k in (1, 3, 5, 7):
        for _w in WIDTHS:
            _name = f"{_kind}_k{_k}_w{_num(round(_w, 4))}"
            register_candidate(_name, _family(_kind, k=_k, w=round(_w, 4)))
            HANT_POOL.append(_name)
for _k in (1, 3, 5, 7):
    for _w in (1 / 4, 1 / 2):
        _name = f"cb_bottle_k{_k}_w{_num(_w)}"
        register_candidate(_name, _family("cb_bottle", k=_k, w=_w))
        HANT_POOL.append(_name)
for _k in (1, 3, 5, 7):
    register_candidate(f"cb_res_k{_k}", _family("cb_res", k=_k))
    HANT_POOL.append(f"cb_res_k{_k}")
register_candidate("repvgg_k3", _family("repvgg", k=3))
HANT_POOL.append("repvgg_k3")
for _d in (1, 2):
    for _dim in (32, 64, 128, 256, 512, 1024):
        for _h in (4, 8, 16):
            _name = f"vit_d{_d}_w{_dim}_h{_h}"
            register_candidate(_name, _family("vit", depth=_d, dim=_dim, heads=_h))
            HANT_POOL.append(_name)
for _kind in ("bot_trans", "lambda"):
    for _e in EXPANSIONS:
        _name = f"{_kind}_e{_num(_e)}"
        register_candidate(_name, _family(_kind, e=_e))
        HANT_POOL.append(_name)
assert len(HANT_POOL) == len(set(HANT_POOL)) == 197


# --------------------------------------------------------------------------- the space


def _teacher_space(name: str, config: dict) -> Space:
    import nas

    if name == "hant":
        raise NASError("space hant's teacher_space cannot be hant itself")
    try:
        return nas.get_space(name, **config)
    except NASError as exc:
        raise NASError(f"space hant's teacher: {exc}") from None


#: the default teacher: a small EfficientNet-style network of the ``mbconv`` space (MBConv
#: blocks, expansion 6, 5x5 kernels; four layers) that trains in a minute on a CPU
EFFICIENTNET_TEACHER = {"s1_width": 16, "s1_b1_kernel": 5, "s1_b1_expansion": 6, "s2_width": 32, "s2_depth": 2,
                        "s2_b1_kernel": 5, "s2_b1_expansion": 6, "s2_b2_kernel": 5, "s2_b2_expansion": 6,
                        "s3_width": 64, "s3_b1_kernel": 5, "s3_b1_expansion": 6}


@register_space("hant")
class HANTSpace(Space):
    """One decision per teacher layer (``layer1`` ... ``layerN``, tag ``layer``) over the
    candidate ``pool`` (default the 197 of :data:`HANT_POOL`); capability ``layerwise``
    (see :mod:`nas.training.layerwise`).

    ``teacher_arch`` is a preset name of ``teacher_space`` or decisions that override its
    default arch (``{}``: that default arch; None: :data:`EFFICIENTNET_TEACHER` when the
    teacher space is ``mbconv``, else that default arch); ``teacher_config`` its space fields (``resolution``, ``num_classes``
    and ``in_channels`` are this space's). From Python, ``teacher_ops`` (a chain of
    OpSpecs: stem, layers, head) replaces the teacher space.
    """

    def __init__(self, resolution: int = 32, num_classes: int = 10, in_channels: int = 3,
                 teacher_space: str = "mbconv", teacher_arch=None, teacher_config: dict | None = None,
                 pool: list | None = None, teacher_ops: list | None = None):
        super().__init__(resolution, num_classes, in_channels)
        self.teacher_space = teacher_space
        if teacher_arch is None and teacher_space == "mbconv" and teacher_ops is None:
            teacher_arch = EFFICIENTNET_TEACHER
        self.teacher_arch = teacher_arch
        self.teacher_config = dict(teacher_config or {})
        self.pool = list(pool) if pool is not None else None
        #: the candidate names of every layer
        self.options = list(pool) if pool is not None else list(HANT_POOL)
        unknown = [n for n in self.options if n != TEACHER and n not in CANDIDATES]
        if unknown:
            raise NASError(f"space hant's pool names unknown candidate op {unknown[0]!r}; registered: "
                           f"{one_of(sorted(CANDIDATES) + [TEACHER])}")
        if TEACHER not in self.options or len(set(self.options)) != len(self.options):
            raise NASError("space hant's pool must contain 'teacher' and name each candidate op once")
        if teacher_ops is not None:
            chain = list(teacher_ops)
        else:
            bad = [k for k in ("resolution", "num_classes", "in_channels") if k in self.teacher_config]
            if bad:
                raise NASError(f"space hant: set {bad[0]} on space hant, not in teacher_config")
            teacher = _teacher_space(teacher_space, {"resolution": resolution, "num_classes": num_classes,
                                                     "in_channels": in_channels, **self.teacher_config})
            if isinstance(teacher_arch, str):
                arch = teacher.preset(teacher_arch)
            else:
                arch = teacher.validate(teacher.default_arch().replace(**dict(teacher_arch or {})))
            chain = teacher.ops(arch)
        self._split(chain)

    def _split(self, chain: list[OpSpec]) -> None:
        """Stem = first op; layers = the following ops with image inputs and outputs; head = the rest."""
        if not chain or tuple(chain[0].in_shape()) != self.input_shape:
            raise NASError(f"space hant: the teacher must start from the input shape {self.input_shape}")
        for prev, nxt in zip(chain, chain[1:]):
            if tuple(prev.out_shape()) != tuple(nxt.in_shape()) or nxt.kind == "add":
                raise NASError(f"space hant needs a teacher whose ops run one after the other; {nxt.name or nxt.key} "
                               f"does not take the output of {prev.name or prev.key} (residual additions and cells "
                               "are not layer chains)")
        end = 1
        while end < len(chain) and len(chain[end].in_shape()) == 3 and len(chain[end].out_shape()) == 3:
            end += 1
        if end == 1:
            raise NASError("space hant: the teacher has no layers between its stem and its head")
        self.prefix, self.layers, self.suffix = chain[:1], chain[1:end], chain[end:]
        if tuple(self.suffix[-1].out_shape()) != (self.num_classes,):
            raise NASError(f"space hant: the teacher must end in {self.num_classes} class scores")

    def config(self):
        cfg = super().config()
        cfg.pop("teacher_ops", None)
        return cfg


    def _make_decisions(self):
        return [Decision(f"layer{i + 1}", tuple(self.options), tag="layer") for i in range(len(self.layers))]

    # ------------------------------------------------------------ layerwise interface
    reference_option = TEACHER

    def layer_decisions(self) -> list[Decision]:
        return self.decisions("layer")

    def teacher_chain(self) -> tuple[list[OpSpec], list[OpSpec], list[OpSpec]]:
        return list(self.prefix), list(self.layers), list(self.suffix)

    def candidate(self, layer: int, option: str) -> OpSpec:
        """The OpSpec of ``option`` in layer ``layer`` (0-based)."""
        t = self.layers[layer]
        name = f"layer{layer + 1}:{option}"
        if option == TEACHER:
            return OpSpec(t.kind, t.params, name)
        c_in, r = t.in_shape()[0], t.in_shape()[1]
        c_out, r_out = t.out_shape()[0], t.out_shape()[1]
        stride = max(1, math.ceil(r / r_out)) if r_out > 0 else 1
        if conv_out(r, 1, stride, 0) != r_out:
            raise NASError(f"space hant: teacher layer {t.name or t.key} maps {r}x{r} to {r_out}x{r_out}, which no "
                           "strided candidate reproduces")
        op = CANDIDATES[option](c_in, c_out, stride, r)
        return OpSpec(op.kind, op.params, name)

    def layer_ops(self, layer: int, option: str) -> list[OpSpec]:
        return [self.candidate(layer, option)]

    def fixed_ops(self) -> list[OpSpec]:
        return self.prefix + self.suffix

    def parameter_free(self, layer: int, option: str) -> bool:
        """Whether ``option`` needs no training in ``layer`` (the teacher's own op, or an
        identity where shapes allow): what zero-shot HANT uses."""
        return option == TEACHER or (option == IDENTITY and self.candidate(layer, option).kind == "identity")

    # ------------------------------------------------------------ space interface
    def ops(self, arch: Arch) -> list[OpSpec]:
        chosen = [self.candidate(i, arch[d.name]) for i, d in enumerate(self.layer_decisions())]
        return self.prefix + chosen + self.suffix

    def build(self, arch):
        return build_sequential(self.ops(self.validate(arch)))

    def _presets(self):
        return {"teacher": {d.name: TEACHER for d in self.decisions()}}

    def all_ops(self, samples=0, seed=0):
        unique = {op.key: op for op in self.fixed_ops()}
        for i in range(len(self.layers)):
            for option in self.options:
                op = self.candidate(i, option)
                unique.setdefault(op.key, op)
        return list(unique.values())

    def min_cost(self, cost_model, n_samples=0, seed=0):
        # Layers are independent: the cheapest op of every layer is the cheapest arch.
        values = {}
        for i, d in enumerate(self.layer_decisions()):
            values[d.name] = min(self.options, key=lambda o: cost_model.op_cost(self.candidate(i, o)))
        arch = Arch(values)
        return cost_model.cost(self.ops(arch)), arch, True
