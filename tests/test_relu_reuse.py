"""DeepReShape's space: ReLU counts against Table 5, ReLU equalization, ReLU-reuse."""

import re

import numpy as np
import pytest
import torch

import nas
from nas import NASError
from spaces.relu_reuse import HRN_TABLE5, ReLUReuse, relu_equalization

# Table 5 (CIFAR-100, 32x32): stagewise ReLUs in thousands, as printed (two decimals).
TABLE5 = """
HRN-2x7x2x 81.92 32.77 57.34 28.67
HRN-3x7x2x 81.92 49.15 86.02 43.01
HRN-4x7x2x 81.92 65.54 114.69 57.34
HRN-5x7x2x 81.92 81.92 143.36 71.68
HRN-6x7x2x 81.92 98.30 172.03 86.02
HRN-7x7x2x 81.92 114.69 200.70 100.35
HRN-2x6x2x 81.92 32.77 49.15 24.58
HRN-3x6x2x 81.92 49.15 73.73 36.86
HRN-4x6x2x 81.92 65.54 98.30 49.15
HRN-5x6x2x 81.92 81.92 122.88 61.44
HRN-6x6x2x 81.92 98.30 147.46 73.73
HRN-7x6x2x 81.92 114.69 172.03 86.02
HRN-2x5x2x 81.92 32.77 40.96 20.48
HRN-3x5x2x 81.92 49.15 61.44 30.72
HRN-4x5x2x 81.92 65.54 81.92 40.96
HRN-5x5x2x 81.92 81.92 102.40 51.20
HRN-6x5x2x 81.92 98.30 122.88 61.44
HRN-7x5x2x 81.92 114.69 143.36 71.68
HRN-2x5x3x 81.92 32.77 40.96 30.72
HRN-3x5x3x 81.92 49.15 61.44 46.08
HRN-4x5x3x 81.92 65.54 81.92 61.44
HRN-5x5x3x 81.92 81.92 102.40 76.80
HRN-6x5x3x 81.92 98.30 122.88 92.16
HRN-7x5x3x 81.92 114.69 143.36 107.52
HRN-2x9x2x 81.92 32.77 73.73 36.86
HRN-2x6x3x 81.92 32.77 49.15 36.86
"""


def published_space():
    return nas.get_space("relu_reuse", grid="published", resolution=32, num_classes=100)


def test_stagewise_relus_equal_table5():
    space = published_space()
    rows = [line.split() for line in TABLE5.strip().splitlines()]
    assert len(rows) == len(HRN_TABLE5) == 26
    for name, *counts in rows:
        a, b, g = map(int, re.findall(r"\d+", name))
        arch = space.preset(f"hrn_{a}x{b}x{g}x")
        got = space.stage_relus(arch)
        assert [round(c / 1000, 2) for c in got] == [float(c) for c in counts], name
        assert sum(got) == nas.get_cost_model("relu").cost(space.ops(arch))  # the relu cost model agrees
    # the spec's worked example, exactly
    assert space.stage_relus(space.preset("hrn_5x7x2x")) == [81_920, 81_920, 143_360, 71_680]
    # StageCh and BaseCh rows of Table 6
    assert [round(c / 1000, 2) for c in space.stage_relus(space.preset("stagech_7x"))] == [81.92, 114.69, 200.70,
                                                                                            351.23]
    assert [round(c / 1000, 2) for c in space.stage_relus(space.preset("basech_m256"))] == [1310.72, 524.29, 262.14,
                                                                                             131.07]


def test_relu_equalization_gives_app_b1_pairs():
    # through width (phi = 2), order S3 > S2 > S4 > S1: the four HRN baselines
    assert relu_equalization((3, 2, 4, 1), phis=(2, 2, 2, 2)) == [(5, 5, 3), (5, 7, 2), (6, 6, 2), (7, 5, 2)]
    pairs = {(b, g): a for a, b, g in relu_equalization((3, 2, 4, 1), phis=(2, 2, 2, 2))}
    assert pairs == {(5, 2): 7, (5, 3): 5, (6, 2): 6, (7, 2): 5}
    # through depth (alpha = beta = gamma = 2): phi3/4 > phi2/2 > phi4/8 > phi1, checked by brute force
    solutions = relu_equalization((3, 2, 4, 1), phis=None, factors=(2, 2, 2), values=range(1, 12))
    assert solutions == [(1, 3, 7, 9)]
    p1, p2, p3, p4 = solutions[0]
    assert p3 / 4 > p2 / 2 > p4 / 8 > p1
    with pytest.raises(NASError, match="once each"):
        relu_equalization((3, 3, 4, 1))


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_relu_reuse_keeps_shapes_and_divides_relus(factor):
    unit = ReLUReuse(32, factor).eval()
    x = torch.randn(2, 32, 8, 8)
    relus = []
    hook = unit.relu_branch[2].register_forward_hook(lambda m, i, o: relus.append(o[0].numel()))
    with torch.no_grad():
        y = unit(x)
    hook.remove()
    assert y.shape == x.shape and relus == [32 * 8 * 8 // factor]
    # in a network: a block's ReLUs fall by the factor
    space = published_space()
    base = space.preset("hrn_5x7x2x")
    reused = base.replace(s3_b1_relu=f"reuse{factor}", s3_b2_relu=f"reuse{factor}")
    assert space.stage_relus(reused)[2] * factor == space.stage_relus(base)[2]
    assert space.stage_relus(reused)[:2] == space.stage_relus(base)[:2]
    model = space.build(reused)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    # on a thinned network (Algorithm 2): the one ReLU left per block falls by the factor
    thin_reused = space.treat_stages(base, [3], f"thin_reuse{factor}")
    assert space.stage_relus(thin_reused)[2] * factor * 2 == space.stage_relus(base)[2]
    assert space.build(thin_reused)(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_thin_cull_and_invalid_reuse_width():
    space = published_space()
    base = space.preset("resnet18_m16")
    thin = base.replace(s2_b1_relu="thin", s2_b2_relu="thin")
    cull = base.replace(s2_b1_relu="cull", s2_b2_relu="cull")
    assert space.stage_relus(thin)[1] * 2 == space.stage_relus(base)[1]
    assert space.stage_relus(cull)[1] == 0 and space.stage_relus(cull)[2] == space.stage_relus(base)[2]
    odd = nas.get_space("relu_reuse", grid="published", ms=[24])
    arch = odd.default_arch().replace(m=24, s1_b1_relu="reuse16")
    with pytest.raises(NASError, match="divisible by 4 and by 16"):
        odd.validate(arch)
    rng = np.random.default_rng(0)
    for _ in range(50):
        odd.check(odd.sample(rng))
    small = nas.get_space("relu_reuse")  # its ms hold 8: DeepReDuce's channel scaling of m = 16
    halved = small.scale_channels(small.preset("resnet18_m16"), 0.5)
    assert small.stage_relus(halved) == [c // 2 for c in small.stage_relus(small.preset("resnet18_m16"))]
    with pytest.raises(NASError, match=r"gives 8, which is not among space.ms \(16, 32, 64, 128, 256\)"):
        space.scale_channels(base, 0.5)
    with pytest.raises(NASError, match="not among this space's treatments"):
        nas.get_space("relu_reuse", treatments=["keep", "thin"]).treat_stages(base, [1], "cull")


def test_any_searcher_under_a_relu_budget():
    data = nas.get_dataset("synthetic")
    space = nas.get_space("relu_reuse", resolution=data.resolution, in_channels=data.in_channels,
                          num_classes=data.num_classes)
    budget = 20_000
    result = nas.search(space, nas.get_searcher("random", n_evals=3), cost_model="relu", evaluator="train",
                        data=data, budget=budget, seed=0)
    assert result.n_evals == 3 and all(e.cost <= budget for e in result.history)
    cost, arch, exact = space.min_cost(nas.get_cost_model("relu"))
    assert exact and cost == min(space.ms) * data.resolution ** 2  # only the narrowest stem's ReLUs are left
