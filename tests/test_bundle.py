"""A LUT for a device that cannot run hwnas: export a bundle here, time it with its runner
in a Python that has only numpy and onnxruntime (no torch, no hwnas), import the timings,
and search for that device by its target name."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import nas
import nas.lut as lut_mod
from nas import NASError
from nas.lut import LUTCost, LUTFile

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SMALL_NB201 = ["space=nb201", "space.channels=8", "space.cells_per_stage=1"]


def bare_python(folder: Path) -> Path:
    """A virtual environment that sees numpy and onnxruntime only: the packages are linked
    into one folder on its path (no network needed, and nothing else is importable)."""
    import numpy
    import onnxruntime

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    only = folder / "only"
    only.mkdir()
    for module in (numpy, onnxruntime):
        package = Path(module.__file__).parent
        (only / package.name).symlink_to(package)
        libs = package.parent / f"{package.name}.libs"  # compiled libraries of manylinux wheels
        if libs.exists():
            (only / libs.name).symlink_to(libs)
    python = folder / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "only.pth").write_text(str(only) + "\n")
    return python


def test_export_time_elsewhere_import_and_search(tmp_path, cli_env):
    cli_env = dict(cli_env, **{lut_mod.LUT_DIR_ENV: str(tmp_path / "luts")})
    bundle = tmp_path / "bundle"
    out = subprocess.run([sys.executable, "-m", "nas.lut", "export", *SMALL_NB201, "--out", str(bundle), "n=6",
                          "overhead_models=4", "rounds=2", "min_run_time=0.003", "progress=false"],
                         cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    space = nas.get_space("nb201", channels=8, cells_per_stage=1)
    ops = [item for item in manifest["items"] if item["kind"] == "op"]
    assert sorted(item["key"] for item in ops) == sorted(op.key for op in space.all_ops())
    assert [item["kind"] for item in manifest["items"]].count("validation") == 6
    assert all((bundle / item["file"]).is_file() for item in manifest["items"])

    # the device: a Python with numpy and onnxruntime, without torch or hwnas
    python = bare_python(tmp_path)
    bare_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    script = ("import numpy, onnxruntime\ntry:\n import torch\nexcept ImportError:\n print('no torch')\n"
              "try:\n import nas\nexcept ImportError:\n print('no hwnas')")
    probe = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=bare_env, capture_output=True, text=True)
    assert probe.stdout.split() == ["no", "torch", "no", "hwnas"], probe.stderr
    # one round, then the rest: a stopped run continues where it stopped
    ran = subprocess.run([str(python), "run_bundle.py", "--quiet", "--rounds", "1"], cwd=bundle, env=bare_env,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    first = json.loads((bundle / "timings.json").read_text())["timings"]
    ran = subprocess.run([str(python), "run_bundle.py", "--quiet"], cwd=bundle, env=bare_env, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    timings = json.loads((bundle / "timings.json").read_text())
    assert all(t["rounds_ms"][:1] == first[k]["rounds_ms"] and len(t["rounds_ms"]) == 2
               for k, t in timings["timings"].items())
    assert timings["fingerprint"]["torch"] is None and timings["fingerprint"]["backend"].startswith("onnxruntime")

    # back here: the device's LUT, with its fingerprint, calibration and validation
    out = subprocess.run([sys.executable, "-m", "nas.lut", "import", str(bundle / "timings.json"), "target=mydevice"],
                         cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "validation on 6 whole models timed on the device: Spearman" in out.stdout
    [path] = (tmp_path / "luts" / "mydevice" / "nb201").glob("*.json")
    lut = LUTFile.load(path)
    assert not lut.on_this_machine() and lut.fingerprint.backend.startswith("onnxruntime")
    assert lut.settings.backend == "onnxruntime" and len(lut.entries) == len(ops)
    assert len(lut.overhead["models"]) == 4 and lut.meta["validation"]["n"] == 6
    # each layer's timing less the call overhead of its input shape, timed in the same round
    by_key = {item["key"]: item for item in ops}
    overhead = {tuple(item["input_shape"]): timings["timings"][item["id"]]["rounds_ms"]
                for item in manifest["items"] if item["kind"] == "baseline"}
    assert set(overhead) == {tuple(item["input_shape"]) for item in ops}
    for key, entry in lut.entries.items():
        raw = timings["timings"][by_key[key]["id"]]["rounds_ms"]
        base = overhead[tuple(by_key[key]["input_shape"])]
        assert entry["rounds_ms"] == [max(t - b, 0.05 * t) for t, b in zip(raw, base)]
        assert entry["session_ms"] == pytest.approx(sum(raw) / len(raw))
    cost = LUTCost("mydevice", space, file=str(path), backend="onnxruntime")
    arch = space.default_arch()
    assert cost.cost(space.ops(arch)) == pytest.approx(lut.overhead_ms + lut.scale * lut.layer_sum(space.ops(arch)))
    # target=mydevice prices a search for that device, labelled as another machine's
    out = run_cli([*SMALL_NB201, "target=mydevice", "searcher=random", "searcher.n_evals=2", "data=synthetic",
                   "data.n=64", "evaluator.epochs=1", "progress=false", "save_model=false", "run_name=d"], tmp_path,
                  cli_env)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "runs" / "d" / "result.json").read_text())
    assert result["lut"]["file"] == str(path.resolve()) and result["lut"]["this_machine"] is False
    assert "mydevice" in run_cli(["--help"], tmp_path, cli_env).stdout


def test_import_errors(tmp_path):
    from nas.lut.bundle import export_bundle, import_timings

    space = nas.get_space("nb201", channels=4, cells_per_stage=1)
    export_bundle(space, tmp_path / "b", nas.latency.HarnessSettings(rounds=1), overhead_models=2,
                  validation_models=2, progress=False)
    with pytest.raises(NASError, match="timings file .* does not exist"):
        import_timings(tmp_path / "b" / "timings.json", "dev", tmp_path / "luts")
    (tmp_path / "b" / "timings.json").write_text(json.dumps({"format": "hwnas-timings/1", "bundle_id": "other"}))
    with pytest.raises(NASError, match="times bundle other, but the manifest beside it is bundle"):
        import_timings(tmp_path / "b" / "timings.json", "dev", tmp_path / "luts")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    (tmp_path / "b" / "timings.json").write_text(json.dumps(
        {"format": "hwnas-timings/1", "bundle_id": manifest["bundle_id"], "rounds": 1, "threads": 1,
         "fingerprint": {}, "timings": {}}))
    with pytest.raises(NASError, match="is unfinished .* run run_bundle.py again on the device"):
        import_timings(tmp_path / "b" / "timings.json", "dev", tmp_path / "luts")


def test_the_per_layer_rest_of_a_session_call_is_fitted_and_taken_off():
    """Entries that each hold c ms of their own session call, and networks that do not pay
    it: the fit finds c from the calibration models, and without them (or with one layer
    count) nothing is taken off."""
    from nas.latency import Timing
    from nas.lut.bundle import layer_entries, residual_call_overhead

    rng = np.random.default_rng(0)
    true = {f"op{i}": float(v) for i, v in enumerate(rng.uniform(0.01, 0.2, 60))}
    c = 0.003
    items = [{"id": key, "kind": "op", "key": key, "input_shape": [8, 4, 4]} for key in true]
    timings = {key: Timing([ms + c] * 3, 30) for key, ms in true.items()}
    entries = layer_entries(items, timings)
    models = []
    for n in rng.integers(10, 40, 20):
        keys = list(rng.choice(list(true), int(n), replace=False))
        models.append((keys, 0.02 + 1.1 * sum(true[k] for k in keys)))  # overhead and in-context scale
    fitted = residual_call_overhead(entries, models)
    assert fitted == pytest.approx(c, rel=1e-6)
    corrected = layer_entries(items, timings, fitted)
    assert all(corrected[k]["ms"] == pytest.approx(v) for k, v in true.items())
    assert corrected["op0"]["call_overhead_ms"] == pytest.approx(c) and corrected["op0"]["session_ms"] > true["op0"]
    assert residual_call_overhead(entries, models[:3]) == 0.0
    same_count = [(keys[:10], ms) for keys, ms in models]
    assert residual_call_overhead(entries, same_count) == 0.0
    slower_inside = [(keys, ms + 0.01 * len(keys)) for keys, ms in models]  # not a rest of a call
    assert residual_call_overhead(entries, slower_inside) == 0.0
