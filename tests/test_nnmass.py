"""ReXNet's channel space, ConvNeXt scaling, NN-Mass and the nnmass searcher (issue 7)."""

import itertools

import numpy as np
import pytest

import nas
from nas import Arch, NASError
from nas.nnmass import BlockTopology, bottleneck_mass, convnext_block_mass, nn_mass, nonlinear_per_mass, nonlinear_units


def published(value, table_value, rel, digits):
    """``value`` matches a published figure given to ``digits`` decimals: within ``rel`` of
    it, or equal once rounded as the table rounds (e.g. ReXNet x2.0's "16M")."""
    return abs(value / table_value - 1) <= rel or round(value, digits) == table_value


# ReXNet Table 5 (params in M, FLOPs (MACs) in G; x1.5's 0.86G from Table A1), and
# MobileNetV2 1.0 (3.5M, 0.30G).
REXNET_TABLE = {"rexnet_0_9": (4.1, 0.35), "rexnet_1_0": (4.8, 0.40), "rexnet_1_3": (7.6, 0.66),
                "rexnet_1_5": (9.7, 0.86), "rexnet_2_0": (16, 1.5), "mobilenetv2_1_0": (3.5, 0.30)}


def test_rexnet_presets_match_table5():
    space = nas.get_space("rexnet", grid="published", resolution=224, num_classes=1000)
    assert set(space.presets()) == set(REXNET_TABLE)
    for name, (params, macs) in REXNET_TABLE.items():
        ops = space.ops(space.preset(name))
        p = sum(op.num_params() for op in ops) / 1e6
        m = sum(op.macs() for op in ops) / 1e9
        assert published(p, params, 0.01, 0 if params >= 10 else 1), (name, p)
        assert published(m, macs, 0.03, 1 if macs >= 1 else 2), (name, m)
    # the spec's channel list for x1.0, and MobileNetV2's stage-wise widths
    assert space.block_channels(space.preset("rexnet_1_0")) == [16, 27, 38, 50, 61, 72, 84, 95, 106, 117, 128, 140,
                                                                151, 162, 174, 185]
    assert space.block_channels(space.preset("mobilenetv2_1_0")) == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96,
                                                                     96, 160, 160, 160, 320]


def test_rexnet_validate_enforces_monotone_channels():
    space = nas.get_space("rexnet", break_rises=[0.0, 0.5, 1.5])
    arch = space.default_arch().replace(channels="linear", break_at=0.5, break_rise=1.5, rise=180)
    with pytest.raises(NASError, match="must not decrease"):
        space.validate(arch)
    rng = np.random.default_rng(0)
    for _ in range(200):  # sampling only ever proposes archs that satisfy Eq. 1
        channels = space.block_channels(space.sample(rng))
        assert channels == sorted(channels)
    # flat-then-linear, a straight line and the canonical form of straight lines
    space = nas.get_space("rexnet", grid="published")
    base = space.preset("rexnet_1_0")
    flat = space.block_channels(base.replace(break_at=0.5, break_rise=0.0))
    assert flat[:9] == [16] * 9 and flat[9:] == sorted(flat[9:]) and flat[-1] > flat[9]
    assert space.validate(base.replace(break_at=0.25, break_rise=0.25)) == base


def test_convnext_presets_match_ran_i_table7():
    space = nas.get_space("convnext_scaled", resolution=224, num_classes=1000)
    table = {"convnext_t": ((96, 192, 384, 768), (3, 3, 9, 3), 28.6, 4.47),
             "ran_i_t": ((64, 128, 256, 511), (5, 5, 15, 5), 20.76, 3.3),
             "ran_i_s": ((76, 151, 303, 606), (5, 5, 15, 5), 28.93, 4.59),
             "ran_i_b": ((87, 175, 350, 699), (7, 7, 21, 7), 52.89, 8.45)}
    assert space.presets() == list(table)
    for name, (widths, depths, params, macs) in table.items():
        arch = space.preset(name)
        assert space.shape(arch) == (widths, depths)
        ops = space.ops(arch)
        assert sum(op.num_params() for op in ops) / 1e6 == pytest.approx(params, rel=0.01)
        assert sum(op.macs() for op in ops) / 1e9 == pytest.approx(macs, rel=0.03)
    assert space.size() == 800


def direct_mass(block: BlockTopology) -> float:
    """Definition 1 by enumerating the block graph's node pairs (not the class's formula)."""
    c = block.channels
    nodes = range(len(c))
    possible = sum(c[i] for i, j in itertools.product(nodes, nodes) if j >= i + 2)
    actual = sum(c[i] for i, j in block.skips)
    inputs = sum(c[t - 1] for t in range(1, len(c)))
    return inputs * actual / possible


@pytest.mark.parametrize("w1,e", [(64, 4), (96, 4), (16, 0.25), (256, 1), (40, 6)])
def test_nn_mass_closed_forms_equal_direct_count(w1, e):
    w2 = e * w1
    bottleneck = BlockTopology((w1, w2, w2, w1), ((0, 3),), nonlinear=int(2 * w2))
    convnext = BlockTopology((w1, w1, w2, w1), ((0, 3),), nonlinear=int(w2))
    assert direct_mass(bottleneck) == pytest.approx(bottleneck_mass(w1, e))
    assert direct_mass(convnext) == pytest.approx(convnext_block_mass(w1, e))
    assert bottleneck.mass == pytest.approx(bottleneck_mass(w1, e))
    # Prop. 3: X = k * NN-Mass
    assert bottleneck.nonlinear == pytest.approx(nonlinear_per_mass("bottleneck", e) * bottleneck.mass)
    assert convnext.nonlinear == pytest.approx(nonlinear_per_mass("convnext", e) * convnext.mass)


def test_nn_mass_of_spaces_against_direct_count_and_prop3():
    space = nas.get_space("convnext_scaled", resolution=224, num_classes=1000)
    for name in space.presets():
        blocks = space.block_topologies(space.preset(name))
        widths, depths = space.shape(space.preset(name))
        assert len(blocks) == sum(depths)
        assert nn_mass(blocks) == pytest.approx(sum(direct_mass(b) for b in blocks))
        assert nn_mass(blocks) == pytest.approx(sum(n * convnext_block_mass(d, 4) for d, n in zip(widths, depths)))
        assert nonlinear_units(blocks) == pytest.approx(nonlinear_per_mass("convnext", 4) * nn_mass(blocks))
    assert nn_mass(space.block_topologies(space.preset("convnext_t"))) == 13248  # 2 * sum(depth * width)
    rex = nas.get_space("rexnet", grid="published")
    blocks = rex.block_topologies(rex.preset("rexnet_1_0"))
    assert nn_mass(blocks) == pytest.approx(sum(direct_mass(b) for b in blocks if b.skips))
    # ReXNet's shortcuts: 16 blocks less 4 with stride 2 and the first (stem 32 -> 16 channels)
    assert sum(1 for b in blocks if b.skips) == 11
    with pytest.raises(ValueError, match="non-adjacent"):
        BlockTopology((4, 4, 4), ((0, 1),))


def test_nnmass_evaluator_needs_topology():
    ev = nas.get_evaluator("nnmass")
    with pytest.raises(NASError, match="'topology'"):
        ev.bind(nas.get_space("nb201"))
    space = nas.get_space("convnext_scaled")
    ev.bind(space)
    score = ev.evaluate(space, space.preset("convnext_t"))
    assert score.quality == 13248 and score.metrics["nonlinear_channels"] == 3 * 13248 * 4 // 6


def test_nnmass_searcher_ranks_each_budget():
    space = nas.get_space("convnext_scaled", resolution=224, num_classes=1000)
    result = nas.search(space, "nnmass", cost_model="macs", evaluator="nnmass")
    budgets = result.extras["budgets"]
    assert [b["budget"] for b in budgets] == [{"macs": 3.3e9, "params": 21e6}, {"macs": 4.5e9, "params": 28e6},
                                              {"macs": 8.5e9, "params": 50e6}]
    assert result.extras["candidates"] == len({tuple(space.ops(a)) for a in space.enumerate()})
    for b in budgets:
        ranked = b["ranked"]
        assert 1 <= len(ranked) <= 5 and b["matches"] >= len(ranked)
        assert [r["nn_mass"] for r in ranked] == sorted((r["nn_mass"] for r in ranked), reverse=True)
        for r in ranked:
            assert abs(r["macs"] / b["budget"]["macs"] - 1) <= 0.06
            assert abs(r["params"] / b["budget"]["params"] - 1) <= 0.06
        # the top is the highest NN-Mass of every arch of the space within the budget
        best = max(nn_mass(space.block_topologies(a)) for a in space.enumerate()
                   if all(abs(v / b["budget"][k] - 1) <= 0.06 for k, v in
                          (("macs", sum(o.macs() for o in space.ops(a))),
                           ("params", sum(o.num_params() for o in space.ops(a))))))
        assert ranked[0]["nn_mass"] == best
    # RAN-i-B is among the highest NN-Mass networks of its budget
    assert {"width_mult": 0.9105, "depth_mult": 2.3} in [r["arch"] for r in budgets[2]["ranked"]]
    assert result.best.quality == budgets[2]["ranked"][0]["nn_mass"]


def test_nnmass_searcher_errors():
    with pytest.raises(NASError, match="accepted: macs, params, cost"):
        nas.get_searcher("nnmass", budgets=[{"flops": 1e9}])
    with pytest.raises(NASError, match="at least one"):
        nas.get_searcher("nnmass", budgets=[])
    space = nas.get_space("convnext_scaled", resolution=224, num_classes=1000)
    with pytest.raises(NASError, match="no candidate .* within"):
        nas.search(space, nas.get_searcher("nnmass", budgets=[{"macs": 1e6}]), cost_model="macs", evaluator="nnmass")
    with pytest.raises(NASError, match="needs a space with 'topology'"):
        nas.search("nb201", "nnmass", cost_model="macs", evaluator="table")


def test_convnext_rejects_resolution_too_small():
    with pytest.raises(NASError, match="too small"):
        nas.get_space("convnext_scaled", resolution=16)
    space = nas.get_space("convnext_scaled", resolution=28, stem_stride=2, base_dims=[16, 32, 64, 128],
                          base_depths=[1, 1, 3, 1], in_channels=1)
    assert space.shape(Arch({"width_mult": 1.0, "depth_mult": 1.0})) == ((16, 32, 64, 128), (1, 1, 3, 1))
