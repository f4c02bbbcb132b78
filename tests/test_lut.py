"""Latency harness and LUT files (fast settings, a tiny space)."""

import json

import pytest
import torch
from torch import nn

import nas
import nas.lut as lut_mod
from nas import Decision, NASError, OpSpec, Space
from nas.latency import HarnessSettings, measure
from nas.lut import LUTCost, LUTFile, build_lut, lut_path, validation_metrics

FAST = HarnessSettings(warmup=1, threshold=0.2, min_run_time=0.005, max_run_time=0.05)


class TwoConvs(Space):
    """Two decisions, four distinct OpSpecs plus a head: quick to measure."""

    name = "test_two_convs"

    def __init__(self, resolution: int = 8, num_classes: int = 3, in_channels: int = 2):
        super().__init__(resolution, num_classes, in_channels)

    def _make_decisions(self):
        return [Decision("w", (4, 8)), Decision("k", (1, 3))]

    def ops(self, arch):
        w, k, r = arch["w"], arch["k"], self.resolution
        return [OpSpec.make("conv", "conv", c_in=self.in_channels, c_out=w, res=r, k=k, act="relu"),
                OpSpec.make("gap", "gap", c_in=w, res=r),
                OpSpec.make("linear", "fc", c_in=w, c_out=self.num_classes)]

    def build(self, arch):
        return nn.Sequential(*(op.build() for op in self.ops(arch)))


def test_slow_op_measures_slower_than_fast_op():
    slow = measure(nn.Conv2d(32, 32, 3, padding=1), (32, 32, 32), FAST)
    fast = measure(nn.Conv2d(4, 4, 1), (4, 4, 4), FAST)
    assert slow.median_ms > 5 * fast.median_ms
    assert slow.repeats >= 1 and slow.iqr_ms >= 0


def test_harness_settings_are_checked():
    with pytest.raises(NASError, match="dtype 'float64'"):
        HarnessSettings(dtype="float64")
    with pytest.raises(NASError, match="threads >= 1"):
        HarnessSettings(threads=0)


def count_measurements(monkeypatch):
    calls = []
    real = lut_mod.measure_op

    def counting(op, settings):
        calls.append(op.key)
        return real(op, settings)

    monkeypatch.setattr(lut_mod, "measure_op", counting)
    return calls


def test_build_round_trip_and_incremental(tmp_path, monkeypatch):
    space = TwoConvs()
    calls = count_measurements(monkeypatch)
    lut = build_lut(space, "t", FAST, tmp_path, overhead_models=2, progress=False)
    expected = {op.key for op in space.all_ops()}
    assert set(calls) == expected and set(lut.entries) == expected
    loaded = LUTFile.load(lut_path("t", space.name, tmp_path))
    assert loaded.entries == lut.entries and loaded.overhead_ms == lut.overhead_ms
    assert loaded.meta["threads"] == 1 and loaded.meta["batch"] == 1 and loaded.meta["dtype"] == "float32"
    assert loaded.meta["torch"] == torch.__version__ and loaded.meta["processor"]
    # nothing new: nothing measured; one entry lost (an interrupted build): only it is measured
    calls.clear()
    build_lut(space, "t", FAST, tmp_path, overhead_models=2, progress=False)
    assert calls == []
    dropped = sorted(expected)[0]
    del loaded.entries[dropped]
    loaded.save()
    build_lut(space, "t", FAST, tmp_path, overhead_models=2, progress=False)
    assert calls == [dropped]


def test_overhead_is_fitted_from_whole_models(tmp_path, monkeypatch):
    space = TwoConvs()
    lut = build_lut(space, "t", FAST, tmp_path, overhead_models=0, progress=False)

    def fake_model_latency(space_, arch, settings):
        total = sum(lut.entries[op.key]["median_ms"] for op in space_.ops(arch))
        return lut_mod.Timing(total + 0.7, 0.0, 1)

    monkeypatch.setattr(lut_mod, "measure_model", fake_model_latency)
    assert lut_mod.fit_overhead(lut, space, FAST, 5, seed=0, progress=False) == pytest.approx(0.7)
    lut.save()
    cost = LUTCost("t", space.name, str(tmp_path))
    arch = nas.Arch(w=8, k=3)
    assert cost.cost(space.ops(arch)) == pytest.approx(
        sum(lut.entries[op.key]["median_ms"] for op in space.ops(arch)) + 0.7)


def test_lut_errors(tmp_path):
    space = TwoConvs()
    with pytest.raises(NASError, match="python -m nas.lut build space=test_two_convs target=t"):
        LUTCost("t", space.name, str(tmp_path))
    build_lut(space, "t", FAST, tmp_path, overhead_models=0, progress=False)
    path = lut_path("t", space.name, tmp_path)
    doc = json.loads(path.read_text())
    key = next(iter(doc["entries"]))
    del doc["entries"][key]
    path.write_text(json.dumps(doc))
    cost = LUTCost("t", space.name, str(tmp_path))
    missing = next(op for a in space.enumerate() for op in space.ops(a) if op.key == key)
    with pytest.raises(NASError, match="has no entry for .*measure_missing=true"):
        cost.op_cost(missing)
    # measured on the spot on the LUT's own machine, and saved
    on_the_spot = LUTCost("t", space.name, str(tmp_path), measure_missing=True)
    assert on_the_spot.op_cost(missing) > 0 and key in LUTFile.load(path).entries
    with pytest.raises(NASError, match="measured with other settings: threads=1 \\(asked 2\\)"):
        LUTCost("t", space.name, str(tmp_path), threads=2)
    with pytest.raises(NASError, match="is for space 'test_two_convs', not 'other'"):
        LUTCost("t", "other", file=str(path))
    path.write_text("{ not json")
    with pytest.raises(NASError, match="corrupted"):
        LUTCost("t", space.name, str(tmp_path))
    path.write_text(json.dumps({"format": "hwnas-lut/1", "meta": {}, "entries": {}, "overhead": {}}))
    with pytest.raises(NASError, match="corrupted"):
        LUTCost("t", space.name, str(tmp_path))


def test_validation_metrics():
    m = validation_metrics([1.0, 2.0, 3.3, 4.0], [1.0, 2.1, 3.0, 4.5])
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)
    assert m["within_10pct"] == 75.0 and m["within_5pct"] == 50.0
    assert m["mape"] == pytest.approx(100 * (0 + 0.1 / 2.1 + 0.1 + 0.5 / 4.5) / 4)


def test_every_space_lists_all_its_ops():
    import numpy as np

    for name in nas.list_spaces():
        space = nas.get_space(name)
        keys = {op.key for op in space.all_ops()}
        rng = np.random.default_rng(0)
        for _ in range(50):
            assert {op.key for op in space.ops(space.sample(rng))} <= keys


def test_validate_measures_whole_models_and_plots(tmp_path):
    space = TwoConvs()
    build_lut(space, "t", FAST, tmp_path, overhead_models=2, progress=False)
    cost = LUTCost("t", space.name, str(tmp_path))
    m = lut_mod.validate_lut(space, cost, FAST, n=6, seed=1, plot_path=tmp_path / "v.png", progress=False)
    assert m["n"] == 6 and len(m["measured_ms"]) == 6 and all(x > 0 for x in m["measured_ms"])
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"


def test_lut_cli_refuses_analytic_targets_and_missing_luts(tmp_path, cli_env):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "nas.lut", *args], cwd=tmp_path, env=cli_env,
                              capture_output=True, text=True, timeout=120)

    out = run("build", "space=nb201", "evaluator=table", "target=macs")
    assert out.returncode == 2 and "target 'macs' is analytic" in out.stderr
    out = run("validate", "space=nb201", "evaluator=table", "target=cpu", f"target.options.lut_dir={tmp_path}")
    assert out.returncode == 2 and "build it with: python -m nas.lut build space=nb201 target=cpu" in out.stderr
    out = run("measure", "space=nb201")
    assert out.returncode == 2 and "unknown command 'measure'" in out.stderr
