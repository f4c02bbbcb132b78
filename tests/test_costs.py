"""Analytic counts from OpSpecs against the built models, for every registered space."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import nas
from nas import NASError, OpSpec
from nas.ops import NONLINEAR_MODULES


def measured_counts(model, input_shape):
    """(MACs by torch's flop counter, parameters, non-linear units by forward hooks)."""
    model.eval()
    units = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: units.append(out.numel()))
             for m in model.modules() if isinstance(m, NONLINEAR_MODULES)]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, *input_shape))
    for h in hooks:
        h.remove()
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters()), sum(units)


def archs_of(space, n=4):
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(n)]
    archs += [space.preset(p) for p in space.presets()]
    ds = space.decisions()
    archs.append(space.canonicalize(nas.Arch({d.name: d.options[-1] for d in ds})))
    archs.append(space.canonicalize(nas.Arch({d.name: d.options[0] for d in ds})))
    return archs


@pytest.mark.parametrize("space_name", nas.list_spaces())
def test_counts_match_built_model(space_name):
    space = nas.get_space(space_name)
    macs, params, relu = (nas.get_cost_model(n) for n in ("macs", "params", "relu"))
    for arch in archs_of(space):
        ops = space.ops(arch)
        model = space.build(arch)
        m_macs, m_params, m_units = measured_counts(model, space.input_shape)
        assert macs.cost(ops) == m_macs, arch
        assert params.cost(ops) == m_params, arch
        assert relu.cost(ops) == m_units, arch
        out = model(torch.randn(2, *space.input_shape))
        assert out.shape == (2, space.num_classes)


@pytest.mark.parametrize("space_name", nas.list_spaces())
def test_each_op_builds_alone_with_its_shapes(space_name):
    space = nas.get_space(space_name)
    arch = space.sample(np.random.default_rng(1))
    for op in space.ops(arch):
        module = op.build().eval()
        with torch.no_grad():
            out = module(torch.randn(1, *op.in_shape()))
        assert tuple(out.shape[1:]) == tuple(op.out_shape()), op.key


def test_nb201_sizes_match_published_extremes():
    # NAS-Bench-201 reports 0.07M to 1.53M parameters and up to 220M FLOPs (MACs) at C=16, N=5
    space = nas.get_space("nb201")
    all_conv = nas.Arch({d.name: "nor_conv_3x3" for d in space.decisions()})
    ops = space.ops(all_conv)
    assert sum(o.num_params() for o in ops) == 1_531_546
    assert round(sum(o.macs() for o in ops) / 1e6, 1) == 220.1


def test_roofline_forms():
    op = OpSpec.make("conv", c_in=8, c_out=16, res=10, k=3)
    macs = 9 * 8 * 16 * 100
    nbytes = 4 * (8 * 100 + 16 * 100 + 9 * 8 * 16 + 2 * 16)
    assert op.macs() == macs
    peak = nas.get_cost_model("roofline", peak_macs=1e9, peak_bw=1e8)
    assert peak.op_cost(op) == pytest.approx(1e3 * max(macs / 1e9, nbytes / 1e8))
    assert peak.unit == "ms"
    rp = nas.get_cost_model("roofline", ridge_point=50.0)
    assert rp.op_cost(op) == max(macs, 50.0 * nbytes)
    assert nas.get_cost_model("roofline", ridge_point=0.0).op_cost(op) == macs  # MACs only
    int8 = nas.get_cost_model("roofline", ridge_point=50.0, bytes_per_element=1)
    assert int8.op_cost(op) == max(macs, 50.0 * nbytes / 4)


def test_roofline_orders_like_peaks_with_same_ridge_point():
    space = nas.get_space("nb201")
    rng = np.random.default_rng(3)
    archs = [space.sample(rng) for _ in range(20)]
    peak = nas.get_cost_model("roofline", peak_macs=2e10, peak_bw=1e9)  # ridge point 20
    rp = nas.get_cost_model("roofline", ridge_point=20.0)
    a = [peak.cost(space.ops(x)) for x in archs]
    b = [rp.cost(space.ops(x)) for x in archs]
    assert np.allclose(np.array(a) / np.array(b), a[0] / b[0])


@pytest.mark.parametrize("cfg", [{}, {"peak_macs": 1e9}, {"ridge_point": -1.0},
                                 {"peak_macs": 1e9, "peak_bw": 1e8, "ridge_point": 5.0}])
def test_roofline_bad_config(cfg):
    with pytest.raises(NASError):
        nas.get_cost_model("roofline", **cfg)


def test_memory_of_mbconv_block_sums_its_layers():
    op = OpSpec.make("mbconv", c_in=8, c_out=8, res=6, k=3, e=2)
    mid = 16
    expected = (8 * 36 + mid * 36 + 8 * mid) + (mid * 36 * 2 + 9 * mid) + (mid * 36 + 8 * 36 + mid * 8)
    assert op.memory_elements() == expected


def test_roofline_rejects_non_numbers():
    with pytest.raises(NASError, match="ridge_point must be a number"):
        nas.get_cost_model("roofline", ridge_point="fast")


def test_private_inference_latency_is_relus_and_macs_weighted():
    space = nas.get_space("relu_reuse", grid="published", num_classes=100)
    arch = space.preset("hrn_5x7x2x")
    ops = space.ops(arch)
    relus, macs = sum(op.nonlinear() for op in ops), sum(op.macs() for op in ops)
    pi = nas.get_cost_model("pi", relu_ms=2e-4, mac_ms=3e-9)
    assert pi.cost(ops) == pytest.approx(2e-4 * relus + 3e-9 * macs) and pi.unit == "ms"
    assert relus == sum(space.stage_relus(arch))


def test_private_inference_coefficients_fitted_from_measurements(tmp_path):
    rng = np.random.default_rng(0)
    relus = rng.uniform(1e4, 5e5, 12)
    macs = rng.uniform(1e7, 2e9, 12)
    ms = (4e-4 * relus + 2e-9 * macs) * rng.uniform(0.99, 1.01, 12)
    path = tmp_path / "pi.csv"
    path.write_text("relus,macs,ms\n" + "".join(f"{r},{m},{t}\n" for r, m, t in zip(relus, macs, ms)))
    pi = nas.get_cost_model("pi", measurements=str(path))
    assert pi.relu_ms == pytest.approx(4e-4, rel=0.02) and pi.mac_ms == pytest.approx(2e-9, rel=0.05)
    assert pi.fit_error < 0.01


@pytest.mark.parametrize("cfg, message", [
    ({}, "needs relu_ms and mac_ms"),
    ({"relu_ms": 1e-4}, "needs relu_ms and mac_ms"),
    ({"relu_ms": -1.0, "mac_ms": 0.0}, "relu_ms must be a number >= 0"),
    ({"relu_ms": 1e-4, "mac_ms": 1e-9, "measurements": "x.csv"}, "not both"),
    ({"measurements": "missing.csv"}, "does not exist"),
])
def test_private_inference_bad_config(cfg, message):
    with pytest.raises(NASError, match=message):
        nas.get_cost_model("pi", **cfg)


def test_private_inference_measurements_must_separate_the_coefficients(tmp_path):
    path = tmp_path / "pi.csv"
    path.write_text("relus,macs,ms\n1000,2000000,1.0\n2000,4000000,2.0\n")
    with pytest.raises(NASError, match="not proportional"):
        nas.get_cost_model("pi", measurements=str(path))
    path.write_text("relus,ms\n1000,1.0\n")
    with pytest.raises(NASError, match="lacks macs"):
        nas.get_cost_model("pi", measurements=str(path))
