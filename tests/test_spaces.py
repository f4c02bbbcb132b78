import numpy as np
import pytest

import nas
from nas import Arch, NASError


def test_nb201_space_and_table():
    space = nas.get_space("nb201")
    assert len(space.decisions()) == 6 and space.size() == 15_625
    table = space.benchmark_table()
    assert len(table) == 15_625
    key, best = table.best()
    assert best == pytest.approx(0.943733)  # index 6111 of the NATS-Bench export
    arch = space.arch_from_table_key(key)
    assert space.table_key(arch) == key
    # every table entry maps to a distinct arch of the space and back
    keys = {space.table_key(a) for a in space.enumerate()}
    assert keys == set(table.rows)


def test_nb201_resnet_preset():
    space = nas.get_space("nb201")
    assert space.presets() == ["resnet"]
    arch = space.preset("resnet")
    assert space.table_key(arch) == "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
    # NAS-Bench-201 reports 93.97% (200 epochs, CIFAR-10 test) for its ResNet cell
    assert space.benchmark_table().lookup(space.table_key(arch)) == pytest.approx(0.9397, abs=0.003)
    with pytest.raises(NASError, match="presets: 'resnet'"):
        space.preset("vgg")


def test_nb201_table_matches_shared_reference_data():
    from conftest import SHARED

    path = SHARED / "data" / "nb201_cifar10.csv"
    if not path.exists():
        pytest.skip("../shared/data not beside the checkout")
    space = nas.get_space("nb201")
    shipped = space.benchmark_table()
    reference = space.benchmark_table(path)
    assert shipped.rows == reference.rows


def test_nb201_rejects_odd_resolution_and_other_table_sizes():
    with pytest.raises(NASError, match="divisible by 4"):
        nas.get_space("nb201", resolution=30)
    with pytest.raises(NASError, match="channels=16"):
        nas.get_space("nb201", channels=8).benchmark_table()


def test_sampling_is_seeded_and_valid():
    for name in nas.list_spaces():
        space = nas.get_space(name)
        a = [space.sample(np.random.default_rng(7)) for _ in range(2)]
        assert a[0] == a[1]
        assert space.validate(a[0]) == a[0]


def test_sampling_rejects_archs_that_check_refuses():
    space = nas.get_space("relu_reuse", ms=[16], alphas=[2], betas=[2], gammas=[2], phis=[1],
                          treatments=["keep", "reuse16"])
    # Stage 1 has 16 channels (reuse16 fits), stage 2 32, ...: every sample must pass check.
    for seed in range(20):
        space.check(space.sample(np.random.default_rng(seed)))
    narrow = nas.get_space("relu_reuse", ms=[8], alphas=[2], betas=[2], gammas=[2], phis=[1], treatments=["reuse16"])
    with pytest.raises(NASError, match="no valid arch in 5 samples; the last was refused with: .*divisible"):
        narrow.sample(np.random.default_rng(0), attempts=5)

def test_validate_names_what_is_wrong():
    space = nas.get_space("mbconv")
    arch = space.sample(np.random.default_rng(0))
    with pytest.raises(NASError, match="has no option 4; options are: 3, 5, 7"):
        space.validate(arch.replace(s1_b1_kernel=4))
    with pytest.raises(NASError, match="does not have"):
        space.validate(arch.replace(bogus=1))
    values = dict(arch)
    values.pop("s2_depth")
    with pytest.raises(NASError, match="lacks decision 's2_depth'"):
        space.validate(Arch(values))


def test_mbconv_canonical_form_ignores_missing_blocks():
    space = nas.get_space("mbconv")
    arch = space.sample(np.random.default_rng(0)).replace(s1_depth=1)
    other = arch.replace(s1_b3_kernel=7, s1_b3_expansion=6)
    assert space.validate(arch) == space.validate(other)
    assert len(space.decisions("coarse")) == 6 and len(space.decisions("fine")) == 18


def test_mbconv_resolution_classes_channels_are_config():
    space = nas.get_space("mbconv", resolution=28, num_classes=7, in_channels=1)
    arch = space.sample(np.random.default_rng(0))
    import torch

    assert space.build(arch)(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    with pytest.raises(NASError, match="positive integer"):
        nas.get_space("mbconv", resolution=0)


def test_min_cost_is_the_minimum():
    for name in ("nb201", "mbconv"):
        space = nas.get_space(name)
        cm = nas.get_cost_model("macs")
        cheapest, arch, exact = space.min_cost(cm)
        assert exact and cm.cost(space.ops(arch)) == cheapest
        rng = np.random.default_rng(0)
        assert all(cm.cost(space.ops(space.sample(rng))) >= cheapest for _ in range(200))
