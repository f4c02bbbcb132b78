"""Latency harness and LUT files (fast settings, a tiny space)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import nas
import nas.lut as lut_mod
from nas import Decision, NASError, OpSpec, Space
from nas.latency import HarnessSettings, Timing, measure, measure_interleaved
from nas.lut import LUTCost, LUTFile, build_lut, machine_lut_path, validation_metrics

#: tests that compare measured latencies run alone, not beside other tests (README: the serial part)
serial = pytest.mark.serial

FAST = HarnessSettings(warmup=1, rounds=2, min_run_time=0.005)


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


@serial
def test_slow_op_measures_slower_than_fast_op():
    slow = measure(nn.Conv2d(32, 32, 3, padding=1), (32, 32, 32), FAST)
    fast = measure(nn.Conv2d(4, 4, 1), (4, 4, 4), FAST)
    assert slow.ms > 5 * fast.ms and slow.median_ms > 5 * fast.median_ms
    assert len(slow.rounds_ms) == FAST.rounds and slow.runs >= FAST.rounds and slow.iqr_ms >= 0


def test_interleaved_rounds_resume_and_report_every_timing():
    seen = []
    builders = {name: (lambda c=c: (nn.Conv2d(c, c, 1), (c, 4, 4))) for name, c in (("a", 2), ("b", 4))}
    earlier = {"a": Timing([0.5, 0.25], 7)}
    out = measure_interleaved(builders, HarnessSettings(warmup=0, rounds=3, min_run_time=0.002), done=earlier,
                              on_measured=lambda k, t: seen.append((k, len(t.rounds_ms))))
    # "a" had two rounds and gets one more; "b" gets all three, in rounds
    assert sorted(seen) == [("a", 3), ("b", 1), ("b", 2), ("b", 3)]
    assert out["a"].rounds_ms[:2] == [0.5, 0.25] and out["a"].runs > 7 and len(out["b"].rounds_ms) == 3
    assert earlier["a"].rounds_ms == [0.5, 0.25]  # the caller's record is not changed
    t = Timing([1.0, 2.0, 6.0], 3)
    assert (t.ms, t.median_ms) == (3.0, 2.0)
    assert Timing.from_dict(t.to_dict()) == t


@serial
def test_onnxruntime_backend_times_the_exported_module(tmp_path):
    pytest.importorskip("onnxruntime")
    ort = HarnessSettings(warmup=1, rounds=2, min_run_time=0.005, backend="onnxruntime")
    slow = measure(nn.Conv2d(32, 32, 3, padding=1), (32, 32, 32), ort)
    fast = measure(nn.Conv2d(4, 4, 1), (4, 4, 4), ort)
    assert slow.ms > 5 * fast.ms
    space = TwoConvs()
    build_lut(space, "t", ort, tmp_path, overhead_models=0, progress=False)
    assert LUTCost("t", space, str(tmp_path), backend="onnxruntime", build="none").cost(space.ops(nas.Arch(w=4, k=1))) > 0
    with pytest.raises(NASError, match="backend='onnxruntime' \\(asked 'torch'\\)"):
        LUTCost("t", space, file=str(machine_lut_path("t", space, ort, tmp_path)))


def test_harness_settings_are_checked():
    with pytest.raises(NASError, match="dtype 'float64'"):
        HarnessSettings(dtype="float64")
    with pytest.raises(NASError, match="threads >= 1"):
        HarnessSettings(threads=0)
    with pytest.raises(NASError, match="rounds >= 1"):
        HarnessSettings(rounds=0)
    with pytest.raises(NASError, match="backend 'tvm' is not one of 'torch', 'onnxruntime'"):
        HarnessSettings(backend="tvm")
    with pytest.raises(NASError, match="onnxruntime latency backend measures device='cpu' with dtype='float32'"):
        HarnessSettings(backend="onnxruntime", dtype="bfloat16")


def count_measurements(monkeypatch):
    """Keys of the ops timed by build_lut, once per round."""
    calls = []
    real = lut_mod.op_builder

    def counting(op):
        build = real(op)

        def counted():
            calls.append(op.key)
            return build()
        return counted

    monkeypatch.setattr(lut_mod, "op_builder", counting)
    return calls


def test_build_round_trip_and_incremental(tmp_path, monkeypatch):
    space = TwoConvs()
    calls = count_measurements(monkeypatch)
    lut = build_lut(space, "t", FAST, tmp_path, overhead_models=2, progress=False)
    expected = {op.key for op in space.all_ops()}
    assert sorted(calls) == sorted(list(expected) * FAST.rounds) and set(lut.entries) == expected
    loaded = LUTFile.load(machine_lut_path("t", space, FAST, tmp_path))
    assert loaded.entries == lut.entries and loaded.overhead == lut.overhead
    assert loaded.meta["threads"] == 1 and loaded.meta["batch"] == 1 and loaded.meta["dtype"] == "float32"
    assert loaded.meta["torch"] == torch.__version__ and loaded.meta["processor"]
    # nothing new: nothing measured; one entry lost (an interrupted build): only it is measured
    calls.clear()
    build_lut(space, "t", FAST, tmp_path, overhead_models=2, progress=False)
    assert calls == []
    dropped, cut_short = sorted(expected)[:2]
    del loaded.entries[dropped]
    loaded.entries[cut_short]["rounds_ms"] = loaded.entries[cut_short]["rounds_ms"][:1]
    loaded.save()
    build_lut(space, "t", FAST, tmp_path, overhead_models=2, progress=False)
    assert sorted(calls) == sorted([dropped, dropped, cut_short])


def test_overhead_and_scale_are_fitted_from_whole_models(tmp_path, monkeypatch):
    space = TwoConvs()
    lut = build_lut(space, "t", FAST, tmp_path, overhead_models=0, progress=False)

    def fake_models(space_, archs, settings, **kwargs):  # whole models: 1.25x their layers, plus 0.7 ms
        return [Timing([0.7 + 1.25 * lut.layer_sum(space_.ops(a))], 1) for a in archs]

    monkeypatch.setattr(lut_mod, "measure_models", fake_models)
    overhead, scale = lut_mod.fit_overhead(lut, space, FAST, 8, seed=0, progress=False)
    assert (overhead, scale) == (pytest.approx(0.7), pytest.approx(1.25))
    lut.save()
    cost = LUTCost("t", space, str(tmp_path), build="none")
    arch = nas.Arch(w=8, k=3)
    assert cost.cost(space.ops(arch)) == pytest.approx(0.7 + 1.25 * lut.layer_sum(space.ops(arch)))
    assert cost.op_cost(space.ops(arch)[0]) == pytest.approx(1.25 * lut.entries[space.ops(arch)[0].key]["ms"])


def test_calibration_falls_back_to_a_constant():
    # too few models for a line, or a fit with a non-physical slope: scale 1, median offset
    assert lut_mod.fit_calibration([1.0, 2.0], [1.5, 2.7]) == (pytest.approx(0.6), 1.0)
    assert lut_mod.fit_calibration([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == (pytest.approx(0.0), 1.0)
    assert lut_mod.fit_calibration([2.0, 1.0], [1.0, 0.5]) == (0.0, 1.0)  # never a negative overhead


def test_calibration_never_fits_a_negative_overhead():
    # whole models faster than their layers by a constant (the per-call cost of timing each
    # layer alone): the free fit's overhead is negative; the scale alone is fitted instead
    sums = np.array([1.0, 2.0, 4.0, 8.0])
    overhead, scale = lut_mod.fit_calibration(sums, 1.1 * sums - 0.2)
    ratio = sums / (1.1 * sums - 0.2)
    assert overhead == 0.0 and scale == pytest.approx(ratio.sum() / (ratio ** 2).sum())


def test_lut_errors(tmp_path):
    space = TwoConvs()
    with pytest.raises(NASError, match=r"python -m nas.lut build 'plugins=\[test_lut\]' space=test_two_convs target=t"):
        LUTCost("t", space, str(tmp_path), build="none")
    build_lut(space, "t", FAST, tmp_path, overhead_models=0, progress=False)
    path = machine_lut_path("t", space, FAST, tmp_path)
    doc = json.loads(path.read_text())
    key = next(iter(doc["entries"]))
    del doc["entries"][key]
    path.write_text(json.dumps(doc))
    cost = LUTCost("t", space, str(tmp_path), build="none")
    missing = next(op for a in space.enumerate() for op in space.ops(a) if op.key == key)
    with pytest.raises(NASError, match="has no entry for .*measure_missing=true"):
        cost.op_cost(missing)
    # measured on the spot on the LUT's own machine, and saved
    on_the_spot = LUTCost("t", space, str(tmp_path), measure_missing=True, build="none")
    assert on_the_spot.op_cost(missing) > 0 and key in LUTFile.load(path).entries
    with pytest.raises(NASError, match="measured with other settings: threads=1 \\(asked 2\\)"):
        LUTCost("t", space, file=str(path), threads=2)
    with pytest.raises(NASError, match="is for space 'test_two_convs', not 'nb201'"):
        LUTCost("t", "nb201", file=str(path))
    path.write_text("{ not json")
    with pytest.raises(NASError, match="corrupted"):
        LUTCost("t", space, str(tmp_path), build="none")
    path.write_text(json.dumps({"format": lut_mod.FORMAT, "meta": {}, "entries": {}, "overhead": {}}))
    with pytest.raises(NASError, match="corrupted"):
        LUTCost("t", space, str(tmp_path), build="none")
    path.write_text(json.dumps({"format": "hwnas-lut/1", "meta": {}, "entries": {}, "overhead": {}}))
    with pytest.raises(NASError, match="is not a hwnas-lut/2 file"):
        LUTCost("t", space, str(tmp_path), build="none")


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
    cost = LUTCost("t", space, str(tmp_path), build="none")
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


def test_lut_cli_builds_and_validates(tmp_path, cli_env):
    import subprocess
    import sys

    quick = ["space=nb201", "evaluator=table", "target=cpu", f"target.options.lut_dir={tmp_path / 'luts'}",
             "rounds=1", "min_run_time=0.002", "progress=false", f"output_dir={tmp_path / 'out'}"]
    out = subprocess.run([sys.executable, "-m", "nas.lut", "build", *quick, "overhead_models=3"], cwd=tmp_path,
                         env=cli_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    [path] = (tmp_path / "luts" / "cpu" / "nb201").glob("*.json")  # this machine's, by fingerprint
    lut = LUTFile.load(path)
    assert lut.on_this_machine() and lut.meta["machine_id"] == path.name.split("-")[0]
    assert len(lut.entries) == len(nas.get_space("nb201").all_ops()) and len(lut.overhead["models"]) == 3
    assert lut.settings.rounds == 1 and lut.meta["space_config"]["resolution"] == 32
    out = subprocess.run([sys.executable, "-m", "nas.lut", "validate", *quick, "n=3"], cwd=tmp_path, env=cli_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Spearman" in out.stdout and "within ±10%" in out.stdout
    record = json.loads((tmp_path / "out" / "lut-validate-cpu-nb201.json").read_text())
    assert record["n"] == 3 and len(record["archs"]) == 3 and record["scale"] == lut.scale
    assert (tmp_path / "out" / "lut-validate-cpu-nb201.png").read_bytes()[:4] == b"\x89PNG"
