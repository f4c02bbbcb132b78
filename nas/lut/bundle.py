"""LUTs of a device that cannot run hwnas: export a bundle here, time it there, import.

:func:`export_bundle` writes every OpSpec of a space (at its configuration) and whole
calibration and validation models as ONNX files, a ``manifest.json`` and ``run_bundle.py``
(:mod:`nas.lut.bundle_runner`: Python, numpy and onnxruntime only). On the device,
``python run_bundle.py`` writes ``timings.json`` with the device's fingerprint, in
hwnas's interleaved rounds. :func:`import_timings` turns that file into a LUT of the
device (its fingerprint, the onnxruntime backend): entries from the layers' timings, the
overhead and in-context scale fitted on the calibration models, and a validation report
from the validation models, which the LUT never saw. The import also registers the LUT as
a target of that name (``<lut_dir>/targets/<name>.json``), so ``target=<name>`` prices
searches for the device.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from nas.arch import Arch
from nas.checks import read_json, write_json_atomic
from nas.errors import NASError
from nas.latency import HarnessSettings, Timing
from nas.lut import (
    CALIBRATION_MODELS,
    LUTFile,
    _now,
    calibrate_lut,
    calibration_archs,
    config_id,
    default_lut_dir,
    validation_metrics,
)
from nas.lut.bundle_runner import FORMAT as TIMINGS_FORMAT  # the runner writes it
from nas.machine import Fingerprint
from nas.registry import plugin_module

BUNDLE_FORMAT = "hwnas-bundle/1"
TARGET_FORMAT = "hwnas-target/1"
#: validation models in a bundle unless asked otherwise
VALIDATION_MODELS = 30


class CallOverhead(torch.nn.Module):
    """The least a layer's own model does: read its input, write an output (x * 1)."""

    def forward(self, x):
        return x * 1.0


def _onnx_file(module: torch.nn.Module, input_shape: tuple, batch: int, path: Path, what: str) -> None:
    from nas.export import onnx_bytes

    module = module.eval()
    try:
        with torch.inference_mode():
            data = onnx_bytes(module, torch.randn(batch, *input_shape))
    except Exception as exc:  # the exporter raises many kinds; one line says which item
        raise NASError(f"cannot export {what} to ONNX ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                       "the bundle needs the onnx package: pip install 'hwnas[onnx]'") from None
    path.write_bytes(data)


def export_bundle(space, out, settings: HarnessSettings | None = None, samples: int = 2000,
                  overhead_models: int = CALIBRATION_MODELS, validation_models: int = VALIDATION_MODELS,
                  seed: int = 0, progress: bool = True) -> dict:
    """Write the bundle of ``space`` into the folder ``out`` (made when needed; an existing
    bundle there is replaced); return its manifest."""
    from tqdm.auto import tqdm

    settings = settings or HarnessSettings()
    if settings.device != "cpu" or settings.dtype != "float32":
        raise NASError("a bundle is timed by onnxruntime on the device's CPU in float32; "
                       f"got device={settings.device!r}, dtype={settings.dtype!r}")
    out = Path(out).expanduser()
    for sub in ("ops", "models"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)
    for stale in ("timings.json", "timings.json.tmp"):
        (out / stale).unlink(missing_ok=True)
    ops = space.all_ops(samples=samples, seed=seed)
    calibration = calibration_archs(space, overhead_models, seed + 1_000_003)
    rng = np.random.default_rng(seed + 7919)
    validation = [space.sample(rng) for _ in range(validation_models)]
    items = []
    with tqdm(total=len(ops) + len(calibration) + len(validation), desc=f"bundle {space.name}", unit="file",
              disable=not progress) as bar:
        for i, op in enumerate(ops):
            torch.manual_seed(0)
            path = f"ops/op{i:05d}.onnx"
            _onnx_file(op.build(), tuple(op.in_shape()), settings.batch, out / path, f"op {op.key}")
            items.append({"id": f"op{i:05d}", "kind": "op", "file": path, "key": op.key,
                          "input_shape": list(op.in_shape())})
            bar.update()
        # The runner times each layer as a model of its own, and one session run costs ~10 us
        # more than the layer inside a whole network (binding, output copy): an identity model
        # per input shape, timed in the same rounds, measures that cost, and the import takes
        # it off each layer's timing.
        for j, shape in enumerate(sorted({tuple(op.in_shape()) for op in ops})):
            path = f"ops/base{j:03d}.onnx"
            _onnx_file(CallOverhead(), shape, settings.batch, out / path, f"the call-overhead model of {shape}")
            items.append({"id": f"base{j:03d}", "kind": "baseline", "file": path, "input_shape": list(shape)})
        for kind, archs in (("calibration", calibration), ("validation", validation)):
            for i, arch in enumerate(archs):
                torch.manual_seed(0)
                path = f"models/{kind[:3]}{i:03d}.onnx"
                _onnx_file(space.build(arch), tuple(space.input_shape), settings.batch, out / path,
                           f"{kind} model {i}")
                items.append({"id": f"{kind[:3]}{i:03d}", "kind": kind, "file": path, "arch": dict(arch),
                              "input_shape": list(space.input_shape)})
                bar.update()
    harness = {"threads": settings.threads, "batch": settings.batch, "warmup": settings.warmup,
               "rounds": settings.rounds, "min_run_time": settings.min_run_time,
               # whole models are timed longer, as build_lut times its calibration models
               "model_min_run_time": max(settings.min_run_time, HarnessSettings.min_run_time)}
    body = {"format": BUNDLE_FORMAT, "space": space.name, "space_config": space.config(),
            "plugin": plugin_module(space), "harness": harness, "seed": seed, "items": items}
    body["bundle_id"] = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]
    body["created"] = _now()
    (out / "manifest.json").write_text(json.dumps(body, indent=1, default=str))
    runner = resources.files("nas.lut") / "bundle_runner.py"
    (out / "run_bundle.py").write_text(runner.read_text())
    return body


def targets_dir(lut_dir=None) -> Path:
    """Where imported device targets are registered (``<lut_dir>/targets``)."""
    return (Path(lut_dir).expanduser() if lut_dir else default_lut_dir()) / "targets"


def import_timings(timings_path, target: str, lut_dir=None) -> tuple[LUTFile, dict]:
    """A device's LUT from the ``timings.json`` its runner wrote (the manifest beside it):
    ``(lut, validation metrics)``. The LUT is saved in ``lut_dir`` under the device's
    fingerprint, and registered as target ``target``."""
    import nas
    from nas.checks import safe_name
    from nas.registry import import_plugins

    safe_name("target", target)
    timings_path = Path(timings_path).expanduser()
    doc = read_json(timings_path, "timings file", "copy it from the device again")
    manifest = read_json(timings_path.parent / "manifest.json", "bundle manifest", "export the bundle again")
    if doc.get("format") != TIMINGS_FORMAT or manifest.get("format") != BUNDLE_FORMAT:
        raise NASError(f"{str(timings_path)!r} and its manifest.json are not an hwnas bundle's timings "
                       f"({TIMINGS_FORMAT}, {BUNDLE_FORMAT})")
    if doc.get("bundle_id") != manifest.get("bundle_id"):
        raise NASError(f"{str(timings_path)!r} times bundle {doc.get('bundle_id')}, but the manifest beside it is "
                       f"bundle {manifest.get('bundle_id')}; put the timings next to the bundle they came from")
    rounds = int(doc["rounds"])
    timings = {}
    for item in manifest["items"]:
        t = doc["timings"].get(item["id"], {})
        if len(t.get("rounds_ms", [])) < rounds:
            raise NASError(f"{str(timings_path)!r} is unfinished ({item['id']} has {len(t.get('rounds_ms', []))} of "
                           f"{rounds} rounds); run run_bundle.py again on the device to finish it")
        timings[item["id"]] = Timing(list(t["rounds_ms"]), int(t["runs"]))
    import_plugins([manifest["plugin"]] if manifest.get("plugin") else [])
    space = nas.get_space(manifest["space"], **manifest["space_config"])
    h = manifest["harness"]
    settings = HarnessSettings(device="cpu", threads=int(doc["threads"]), batch=h["batch"], dtype="float32",
                               backend="onnxruntime", warmup=h["warmup"], rounds=rounds, min_run_time=h["min_run_time"])
    device = Fingerprint.from_dict(doc["fingerprint"])
    path = (Path(lut_dir).expanduser() if lut_dir else default_lut_dir()) / target / space.name / (
        f"{device.id}-{config_id(space, settings)}.json")
    meta = {"target": target, "space": space.name, "space_config": space.config(), "machine_id": device.id,
            "fingerprint": device.to_dict(), "device": "cpu", "processor": device.processor, "torch": None,
            "threads": settings.threads, "batch": settings.batch, "dtype": settings.dtype, "backend": "onnxruntime",
            "harness": settings.to_dict(), "mode": "full", "status": "complete", "created": _now(),
            "imported_from": str(timings_path.resolve()), "bundle_id": manifest["bundle_id"]}
    models = {kind: [(space.validate(Arch(item["arch"])), timings[item["id"]]) for item in manifest["items"]
                     if item["kind"] == kind] for kind in ("calibration", "validation")}
    entries = layer_entries(manifest["items"], timings)
    per_layer = residual_call_overhead(entries, [([op.key for op in space.ops(a)], t.ms)
                                                 for a, t in models["calibration"]])
    lut = LUTFile(path, meta, layer_entries(manifest["items"], timings, per_layer))
    meta["call_overhead"] = ("each layer's per-round timing minus that of the call-overhead model of its input "
                             f"shape (timed in the same round) and minus {per_layer * 1e3:.2f} us (the per-layer "
                             "residual fitted on the calibration models), at least 5% of it")
    meta["residual_call_overhead_ms"] = per_layer
    if models["calibration"]:
        calibrate_lut(lut, space, *zip(*models["calibration"]))
    metrics = {}
    if len(models["validation"]) >= 2:
        predicted = [lut.overhead_ms + lut.scale * lut.layer_sum(space.ops(a)) for a, _ in models["validation"]]
        measured = [t.ms for _, t in models["validation"]]
        metrics = validation_metrics(predicted, measured)
        lut.meta["validation"] = {**metrics, "predicted_ms": predicted, "measured_ms": measured,
                                  "note": "validation models of the bundle, timed on the device, unseen by the fit"}
    lut.save()
    register_target(target, lut, lut_dir)
    return lut, metrics


def layer_entries(items: list[dict], timings: dict[str, Timing], per_layer_ms: float = 0.0) -> dict[str, dict]:
    """op key -> LUT entry: each round's layer timing less the same round's timing of the
    call-overhead model of its input shape and less ``per_layer_ms`` (kept >= 5% of the
    layer's), with the session's timing and the overhead taken off recorded."""
    overhead = {tuple(item["input_shape"]): timings[item["id"]] for item in items if item["kind"] == "baseline"}
    entries = {}
    for item in items:
        if item["kind"] != "op":
            continue
        raw, base = timings[item["id"]], overhead.get(tuple(item["input_shape"]))
        base_rounds = [0.0] * len(raw.rounds_ms) if base is None else base.rounds_ms
        rounds = [max(t - b - per_layer_ms, 0.05 * t) for t, b in zip(raw.rounds_ms, base_rounds)]
        entries[item["key"]] = {**Timing(rounds, raw.runs).to_dict(), "session_ms": raw.ms,
                                "call_overhead_ms": (0.0 if base is None else base.ms) + per_layer_ms}
    return entries


def residual_call_overhead(entries: dict[str, dict], models: list[tuple[list[str], float]]) -> float:
    """What each layer's entry still holds of its own session call, in ms: the identity
    model does not cost exactly what a layer's call adds, and inside a network that rest is
    not paid (about 3 us per layer on a 2.5 GHz Xeon; the sum of a 36-layer network's entries
    was then 10-20% over its measured time). Fitted by least relative squares of
    ``measured ~ overhead + scale * (sum of entries - n_layers * residual)`` over the
    calibration models ``(op keys, measured ms)``; 0 when they cannot tell it apart (fewer
    than four, one layer count, or a fit that is not physical: a scale <= 0 or a negative rest)."""
    sums = np.array([sum(entries[k]["ms"] for k in keys) for keys, _ in models], dtype=float)
    counts = np.array([len(keys) for keys, _ in models], dtype=float)
    measured = np.array([ms for _, ms in models], dtype=float)
    if len(models) < 4 or np.ptp(counts) == 0:
        return 0.0
    design = np.c_[np.ones_like(sums), sums, counts] / measured[:, None]
    _, scale, per_count = np.linalg.lstsq(design, np.ones_like(measured), rcond=None)[0]
    if scale <= 0:
        return 0.0
    residual = float(-per_count / scale)
    # A rest of a call is never negative (a negative fit says layers run slower inside the
    # network, which a per-layer constant does not model: at 224x224 it made the validation
    # worse), and never more than a typical layer's own entry (beyond that the fit explains noise).
    typical = float(np.median([e["ms"] for e in entries.values()]))
    return float(np.clip(residual, 0.0, typical))


def register_target(target: str, lut: LUTFile, lut_dir=None) -> Path:
    """Record ``lut`` as target ``target`` (read by the CLI when it makes its config nodes)."""
    path = targets_dir(lut_dir) / f"{target}.json"
    s = lut.settings
    entry = {"format": TARGET_FORMAT, "name": target, "file": str(lut.path.resolve()), "space": lut.meta["space"],
             "device": s.device, "threads": s.threads, "batch": s.batch, "dtype": s.dtype, "backend": s.backend,
             "machine": lut.fingerprint.describe()}
    write_json_atomic(path, entry, "target record", "check the LUT folder's permissions")
    return path


def imported_targets(lut_dir=None) -> dict[str, dict]:
    """name -> the record of each target registered by an import (unreadable ones skipped)."""
    folder = targets_dir(lut_dir)
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            found[entry["name"]] = entry
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found
