"""NAS-Bench-201: the cell space of 5 operations on the 6 edges of a 4-node cell.

15,625 cells, each a real trainable network (Dong & Yang, 2020: a 3x3 conv stem, three
stages of ``cells_per_stage`` cells at C, 2C and 4C channels joined by ResNet basic
blocks with stride 2, then BN-ReLU, global pooling and a linear classifier) and each
with its CIFAR-10 test accuracy after 200 epochs from NATS-Bench (``hp=200``, mean over
seeds), shipped with the package as ``spaces/data/nb201_cifar10.csv.gz`` (MIT licensed).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from torch import nn

from nas import Arch, Decision, NASError, OpSpec, Space, register_space
from nas.evaluators import BenchmarkTable
from nas.ops import LayeredOpKind, activation, register_op_kind

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (to node, from node) in the order of the benchmark's arch string
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
EDGE_NAMES = tuple(f"edge_{j}_{i}" for j, i in EDGES)


class ResNetBasicBlock(nn.Module):
    """NAS-Bench-201's reduction block: two ReLU-Conv-BN 3x3 (the first strided) plus an
    average-pool and 1x1 conv shortcut."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv_a = nn.Sequential(activation("relu"), nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out))
        self.conv_b = nn.Sequential(activation("relu"), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2, 0), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


@register_op_kind("nb201_resblock")
class NB201ResBlock(LayeredOpKind):
    required = ("c_in", "c_out", "res")

    def out_shape(self, **p):
        return (p["c_out"], p["res"] // 2, p["res"] // 2)

    def _layers(self, p):
        ci, co, r = p["c_in"], p["c_out"], p["res"]
        ro = r // 2
        # (macs, params, nonlinear, memory elements) of conv_a, conv_b, shortcut
        return [(9 * ci * co * ro * ro, 9 * ci * co + 2 * co, ci * r * r, ci * r * r + co * ro * ro + 9 * ci * co),
                (9 * co * co * ro * ro, 9 * co * co + 2 * co, co * ro * ro, 2 * co * ro * ro + 9 * co * co),
                (ci * co * ro * ro, ci * co, 0, ci * r * r + co * ro * ro + ci * co)]

    def build(self, **p):
        return ResNetBasicBlock(p["c_in"], p["c_out"])


@lru_cache(maxsize=4096)
def edge_op(op: str, c: int, res: int, name: str) -> OpSpec:
    if op == "none":
        return OpSpec.make("zero", name, c_in=c, res=res)
    if op == "skip_connect":
        return OpSpec.make("identity", name, c_in=c, res=res)
    if op == "avg_pool_3x3":
        return OpSpec.make("pool", name, c_in=c, res=res, mode="avg", k=3, stride=1)
    k = 1 if op == "nor_conv_1x1" else 3
    return OpSpec.make("conv", name, c_in=c, c_out=c, res=res, k=k, act="relu", pre_act=True)


class Cell(nn.Module):
    """Node j is the sum over i < j of edge (j, i) applied to node i; node 3 is the output."""

    def __init__(self, edge_ops: dict[str, OpSpec]):
        super().__init__()
        self.edges = nn.ModuleDict({name: spec.build() for name, spec in edge_ops.items()})

    def forward(self, x):
        nodes = [x]
        for j in (1, 2, 3):
            nodes.append(sum(self.edges[f"edge_{j}_{i}"](nodes[i]) for i in range(j)))
        return nodes[3]


class NB201Network(nn.Module):
    def __init__(self, layers: list[tuple[str, object]]):
        super().__init__()
        self.layers = nn.ModuleList(module for _, module in layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


#: the shipped table's columns; NAS-Bench-201 reports accuracies in percent
TABLE_KEY_COLUMN, TABLE_COLUMN, TABLE_SCALE = "arch", "cifar10_test_acc", 0.01


@lru_cache(maxsize=None)
def _load_table(path: str | None, key_column: str, column: str, scale: float) -> BenchmarkTable:
    if path is None:
        ref = resources.files("spaces") / "data" / "nb201_cifar10.csv.gz"
        with resources.as_file(ref) as file:
            table = BenchmarkTable.from_csv(file, key_column, column, scale=scale)
    else:
        table = BenchmarkTable.from_csv(path, key_column, column, scale=scale)
    table.metric = "accuracy" if column == TABLE_COLUMN else column
    return table


@register_space("nb201")
class NB201Space(Space):
    """NAS-Bench-201 cells (15,625); quality from the CIFAR-10 table or from real training.

    The table holds CIFAR-10 accuracy at 32x32 and 10 classes, so the input fields keep their
    values whatever the data set (``evaluator=table`` for the tabular benchmark,
    ``evaluator=train`` to train the cells)."""

    data_fields = ()

    def __init__(self, resolution: int = 32, num_classes: int = 10, in_channels: int = 3,
                 channels: int = 16, cells_per_stage: int = 5):
        super().__init__(resolution, num_classes, in_channels)
        if resolution % 4:
            raise NASError(f"nb201 needs a resolution divisible by 4 (two stride-2 stages), got {resolution}")
        if channels < 1 or cells_per_stage < 1:
            raise NASError("nb201 needs channels >= 1 and cells_per_stage >= 1")
        self.channels = channels
        self.cells_per_stage = cells_per_stage

    def _make_decisions(self):
        return [Decision(name, OPS, tag="cell") for name in EDGE_NAMES]

    def _presets(self):
        # NAS-Bench-201's ResNet cell: node 2 is two 3x3 convs in sequence, the output adds the input.
        resnet = {"edge_1_0": "nor_conv_3x3", "edge_2_0": "none", "edge_2_1": "nor_conv_3x3",
                  "edge_3_0": "skip_connect", "edge_3_1": "none", "edge_3_2": "skip_connect"}
        return {"resnet": resnet}

    def table_key(self, arch: Arch) -> str:
        nodes = []
        for j in (1, 2, 3):
            nodes.append("|" + "|".join(f"{arch[f'edge_{j}_{i}']}~{i}" for i in range(j)) + "|")
        return "+".join(nodes)

    def arch_from_table_key(self, key: str) -> Arch:
        try:
            values = {}
            for j, node in enumerate(key.split("+"), start=1):
                for item in node.strip("|").split("|"):
                    op, i = item.split("~")
                    values[f"edge_{j}_{i}"] = op
        except ValueError:
            raise NASError(f"{key!r} is not a NAS-Bench-201 arch string like '|op~0|+|op~0|op~1|+|...|'") from None
        return self.validate(Arch(values))

    def benchmark_table(self, path=None, column=TABLE_COLUMN, key_column=TABLE_KEY_COLUMN, scale=TABLE_SCALE):
        """The CIFAR-10 table shipped with the package, or the CSV at ``path``; ``column``
        another of its columns (accuracies in percent: ``scale`` 0.01 makes them fractions)."""
        if (self.channels, self.cells_per_stage) != (16, 5):
            raise NASError("the NAS-Bench-201 table holds networks with channels=16 and cells_per_stage=5 only")
        return _load_table(None if path is None else str(path), key_column, column, float(scale))

    def _layout(self, arch: Arch):
        """(name, OpSpec or dict of edge OpSpecs) for each layer, in order."""
        c, r, n = self.channels, self.resolution, self.cells_per_stage
        layout = [("stem", OpSpec.make("conv", "stem", c_in=self.in_channels, c_out=c, res=r, k=3))]
        for stage in range(3):
            if stage:
                layout.append((f"reduce{stage}", OpSpec.make("nb201_resblock", f"reduce{stage}", c_in=c, c_out=2 * c, res=r)))
                c, r = 2 * c, r // 2
            for b in range(n):
                cell = f"stage{stage}.cell{b}"
                layout.append((cell, {e: edge_op(arch[e], c, r, f"{cell}.{e}") for e in EDGE_NAMES}))
        layout.append(("lastact", OpSpec.make("norm", "lastact", c_in=c, res=r, act="relu")))
        layout.append(("pool", OpSpec.make("gap", "pool", c_in=c, res=r)))
        layout.append(("classifier", OpSpec.make("linear", "classifier", c_in=c, c_out=self.num_classes)))
        return layout

    def ops(self, arch):
        out = []
        for _, item in self._layout(arch):
            out.extend(item.values() if isinstance(item, dict) else [item])
        return out

    def build(self, arch):
        arch = self.validate(arch)
        layers = [(name, Cell(item) if isinstance(item, dict) else item.build()) for name, item in self._layout(arch)]
        return NB201Network(layers)

    def all_ops(self, samples=0, seed=0):
        # An edge's OpSpec depends only on its op and its stage: the five uniform cells
        # produce every OpSpec of the space (exact).
        unique = {}
        for op in OPS:
            for spec in self.ops(Arch({e: op for e in EDGE_NAMES})):
                unique.setdefault(spec.key, spec)
        return list(unique.values())

    def min_cost(self, cost_model, n_samples=0, seed=0):
        # The cost is a sum over edges, each edge's op repeated in every cell: the cheapest
        # network takes the cheapest op on every edge independently (exact).
        base = Arch({e: OPS[0] for e in EDGE_NAMES})
        best = {}
        for e in EDGE_NAMES:
            costs = {op: cost_model.cost(self.ops(base.replace(**{e: op}))) for op in OPS}
            best[e] = min(OPS, key=costs.__getitem__)
        arch = Arch(best)
        return cost_model.cost(self.ops(arch)), arch, True
