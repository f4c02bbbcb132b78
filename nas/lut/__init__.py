"""Latency look-up tables: measured per target, stored as JSON, validated end to end.

A LUT file (``latency_luts/<target>/<space>.json``) holds its metadata (target, space and
its config, processor, torch version, harness settings, dates), one entry per OpSpec key
(latency, median, IQR, repeats, per-round medians), and a calibration fitted from
whole-model measurements: a constant overhead (input handling, the model's own glue such
as additions, dispatch) and an in-context scale. The ``lut`` cost model predicts
``overhead + scale * sum(layer latencies)``.

Why a scale: a layer timed alone runs with its input, weights and scratch buffers hot in
cache; inside a model they were last touched a whole layer ago or more. On the CPU the
shipped LUTs were built on, NAS-Bench-201's convolutions and poolings run about 30% slower
inside the network than alone, whatever the op; a constant alone under-predicts
conv-heavy cells and over-predicts light ones (see ``latency_luts/README.md``).

    python -m nas.lut build space=nb201 target=cpu
    python -m nas.lut validate space=nb201 target=cpu n=50
"""

from __future__ import annotations

import dataclasses

import datetime
import json
import os
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from nas.costs import CostModel
from nas.errors import NASError
from nas.latency import IDENTITY_FIELDS, HarnessSettings, Timing, device_name, measure_interleaved
from nas.ops import OpSpec
from nas.registry import register_cost_model

FORMAT = "hwnas-lut/2"


def default_lut_dir() -> Path:
    return Path(str(resources.files("latency_luts")))


def lut_path(target: str, space: str, lut_dir=None) -> Path:
    return Path(lut_dir or default_lut_dir()) / target / f"{space}.json"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class LUTFile:
    """One target's measured latencies for one space."""

    def __init__(self, path: Path, meta: dict, entries: dict, overhead: dict | None = None):
        self.path = Path(path)
        self.meta = meta
        self.entries = entries
        self.overhead = overhead or {"ms": 0.0, "scale": 1.0, "models": []}

    @property
    def overhead_ms(self) -> float:
        return float(self.overhead.get("ms", 0.0))

    @property
    def scale(self) -> float:
        return float(self.overhead.get("scale", 1.0))

    @property
    def settings(self) -> HarnessSettings:
        return HarnessSettings.from_dict(self.meta["harness"])

    def timings(self) -> dict[str, Timing]:
        return {key: Timing.from_dict(e) for key, e in self.entries.items()}

    def layer_sum(self, ops) -> float:
        """Sum of the measured (isolated) latencies of ``ops``; KeyError if one is missing."""
        return float(sum(self.entries[op.key]["ms"] for op in ops))

    @classmethod
    def new(cls, path, target: str, space, settings: HarnessSettings) -> "LUTFile":
        meta = {"target": target, "space": space.name, "space_config": space.config(),
                "device": settings.device, "processor": device_name(settings.device),
                "torch": torch.__version__, "threads": settings.threads, "batch": settings.batch,
                "dtype": settings.dtype, "backend": settings.backend, "harness": settings.to_dict(),
                "created": _now(), "updated": _now()}
        return cls(path, meta, {})

    @classmethod
    def load(cls, path) -> "LUTFile":
        path = Path(path)
        if not path.is_file():
            raise NASError(f"LUT file {str(path)!r} does not exist")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise NASError(f"LUT file {str(path)!r} is corrupted (not JSON: {exc}); delete it and rebuild") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise NASError(f"LUT file {str(path)!r} is not a {FORMAT} file")
        try:
            meta, entries, overhead = doc["meta"], doc["entries"], doc["overhead"]
            for key, e in entries.items():
                if not (isinstance(e["ms"], (int, float)) and e["ms"] >= 0 and e["rounds_ms"]):
                    raise ValueError(key)
            for field in ("ms", "scale"):
                if not isinstance(overhead.get(field, 0.0), (int, float)):
                    raise ValueError(f"overhead.{field}")
            HarnessSettings.from_dict(meta["harness"])
        except (KeyError, TypeError, ValueError) as exc:
            raise NASError(f"LUT file {str(path)!r} is corrupted (bad or missing field {exc}); "
                           "delete it and rebuild") from None
        return cls(path, meta, entries, overhead)

    def save(self) -> None:
        self.meta["updated"] = _now()
        doc = {"format": FORMAT, "meta": self.meta, "overhead": self.overhead,
               "entries": dict(sorted(self.entries.items()))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.path)  # atomic: an interrupted build leaves the last good file

    def check_matches(self, target: str, space_name: str | None, settings: HarnessSettings | None = None) -> None:
        """NASError if this file was measured for another target, space or harness."""
        where = str(self.path)
        if self.meta.get("target") != target:
            raise NASError(f"LUT file {where!r} is for target {self.meta.get('target')!r}, not {target!r}")
        if space_name is not None and self.meta.get("space") != space_name:
            raise NASError(f"LUT file {where!r} is for space {self.meta.get('space')!r}, not {space_name!r}")
        if settings is not None:
            ours, asked = self.settings.identity(), settings.identity()
            diffs = [f"{k}={ours[k]!r} (asked {asked[k]!r})" for k in IDENTITY_FIELDS if ours[k] != asked[k]]
            if diffs:
                raise NASError(f"LUT file {where!r} was measured with other settings: {', '.join(diffs)}")

    def on_this_machine(self) -> bool:
        """Whether measurements taken here are comparable with the file's."""
        return (self.meta.get("processor") == device_name(self.meta.get("device", "cpu"))
                and self.meta.get("torch") == torch.__version__)

    def add(self, op: OpSpec, timing: Timing) -> None:
        self.entries[op.key] = timing.to_dict()


def op_builder(op: OpSpec):
    return lambda: (op.build(), tuple(op.in_shape()))


def model_builder(space, arch):
    return lambda: (space.build(arch), tuple(space.input_shape))


def measure_op(op: OpSpec, settings: HarnessSettings) -> Timing:
    return measure_interleaved({op.key: op_builder(op)}, settings)[op.key]


@register_cost_model("lut")
class LUTCost(CostModel):
    """Latency in ms from a measured LUT: the fitted overhead plus the in-context scale
    times the sum over layers (so ``op_cost`` is a layer's latency inside a model)."""

    unit = "ms"

    def __init__(self, target: str = "cpu", space: str | None = None, lut_dir: str | None = None,
                 file: str | None = None, measure_missing: bool = False, device: str = "cpu", threads: int = 1,
                 batch: int = 1, dtype: str = "float32", backend: str = "torch"):
        if file is None and space is None:
            raise NASError("the lut cost model needs the space (or a LUT file) it prices")
        self.target = target
        self.settings = HarnessSettings(device=device, threads=threads, batch=batch, dtype=dtype, backend=backend)
        self.path = Path(file) if file else lut_path(target, space, lut_dir)
        self.lut = LUTFile.load(self.path) if self.path.exists() else None
        if self.lut is None:
            raise NASError(f"no LUT for target {target!r} and space {space!r} at {str(self.path)!r}; "
                           f"build it with: python -m nas.lut build space={space} target={target}")
        self.lut.check_matches(target, space, self.settings)
        self.measure_missing = measure_missing

    def op_cost(self, op):
        entry = self.lut.entries.get(op.key)
        if entry is None:
            if not self.measure_missing:
                raise NASError(f"LUT {str(self.path)!r} has no entry for {op.key} (layer {op.name or '?'}); "
                               f"rebuild it with python -m nas.lut build, or set target.options.measure_missing=true")
            if not self.lut.on_this_machine():
                raise NASError(f"LUT {str(self.path)!r} lacks {op.key} and was measured on "
                               f"{self.lut.meta.get('processor')!r} with torch {self.lut.meta.get('torch')}; "
                               "this machine cannot measure it comparably")
            self.lut.add(op, measure_op(op, self.lut.settings))
            self.lut.save()
            entry = self.lut.entries[op.key]
        return self.lut.scale * float(entry["ms"])

    def overhead(self):
        return self.lut.overhead_ms


# ---------------------------------------------------------------------------- build / validate


def measure_models(space, archs, settings: HarnessSettings, seed: int = 0, progress: bool = True,
                   desc: str = "models") -> list[Timing]:
    """End-to-end latency of each arch, in interleaved rounds."""
    builders = {i: model_builder(space, arch) for i, arch in enumerate(archs)}
    timings = measure_interleaved(builders, settings, seed=seed, progress=progress, desc=desc)
    return [timings[i] for i in range(len(archs))]


def latency_report(problem, arch) -> dict:
    """LUT-predicted and measured end-to-end latency of a search's result, when the run's
    cost model is a measured LUT of this machine (else nothing)."""
    cost_model = problem.cost_model
    if not (isinstance(cost_model, LUTCost) and cost_model.lut.on_this_machine()):
        return {}
    # One model cannot be interleaved with others, so its rounds are spread over more
    # time instead: the machine's speed drifts over seconds (see nas/latency.py).
    settings = dataclasses.replace(cost_model.lut.settings, rounds=3 * cost_model.lut.settings.rounds)
    timing = measure_models(problem.space, [arch], settings, progress=False)[0]
    predicted = problem.cost(arch)
    return {"lut_latency_ms": predicted, "measured_latency_ms": timing.ms,
            "measured_latency_iqr_ms": timing.iqr_ms, "lut_error": (predicted - timing.ms) / timing.ms}


def build_lut(space, target: str, settings: HarnessSettings, lut_dir=None, samples: int = 2000,
              overhead_models: int = 20, seed: int = 0, progress: bool = True) -> LUTFile:
    """Measure every OpSpec of ``space`` not yet in the target's LUT with all its rounds
    (saving as it goes, so an interrupted build continues where it stopped), then fit the
    calibration on ``overhead_models`` whole models."""
    path = lut_path(target, space.name, lut_dir)
    lut = LUTFile.load(path) if path.exists() else LUTFile.new(path, target, space, settings)
    lut.check_matches(target, space.name, settings)
    if lut.entries and not lut.on_this_machine():
        raise NASError(f"LUT file {str(path)!r} was measured on {lut.meta.get('processor')!r} with torch "
                       f"{lut.meta.get('torch')}; extend it on that machine or start a new file")
    lut.meta["harness"] = settings.to_dict()
    done = lut.timings()
    todo = [op for op in space.all_ops(samples=samples, seed=seed)
            if op.key not in done or len(done[op.key].rounds_ms) < settings.rounds]
    last_save = [time.monotonic()]

    def save_now_and_then(key, timing):
        lut.entries[key] = timing.to_dict()
        if time.monotonic() - last_save[0] > 5:
            lut.save()
            last_save[0] = time.monotonic()

    measure_interleaved({op.key: op_builder(op) for op in todo}, settings, done=done, seed=seed,
                        on_measured=save_now_and_then, progress=progress, desc=f"LUT {target}/{space.name}")
    lut.save()
    if overhead_models > 0 and (todo or not lut.overhead.get("models")):
        fit_overhead(lut, space, settings, overhead_models, seed=seed + 1_000_003, progress=progress)
        lut.save()
    return lut


def fit_calibration(layer_sums, measured) -> tuple[float, float]:
    """(overhead ms, scale) minimising the squared *relative* error of
    ``overhead + scale * layer_sum`` against ``measured`` (relative, because a LUT is
    judged by the share of models within ±10%). The overhead is kept >= 0 (a negative
    one would predict a negative latency for a model of cheap enough layers): when the
    free fit's is negative, the scale alone is fitted. With fewer than 3 models, or a fit
    that is not physical (scale <= 0), the scale stays 1 and the overhead is the median
    of measured - summed."""
    sums, meas = np.asarray(layer_sums, float), np.asarray(measured, float)
    if len(meas) >= 3 and np.ptp(sums) > 0:
        design = np.c_[np.ones_like(sums), sums] / meas[:, None]
        overhead, scale = np.linalg.lstsq(design, np.ones_like(meas), rcond=None)[0]
        if overhead < 0:
            ratio = sums / meas
            overhead, scale = 0.0, float(ratio.sum() / (ratio ** 2).sum())
        if scale > 0:
            return float(overhead), float(scale)
    return max(0.0, float(np.median(meas - sums))), 1.0


def fit_overhead(lut: LUTFile, space, settings: HarnessSettings, n_models: int, seed: int,
                 progress: bool = True) -> tuple[float, float]:
    """Measure ``n_models`` random archs end to end and fit the LUT's overhead and scale
    (:func:`fit_calibration`); the models are kept in the file for inspection."""
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(n_models)]
    timings = measure_models(space, archs, settings, seed=seed, progress=progress, desc="calibration models")
    rows = [{"arch_key": arch.key(), "measured_ms": t.ms, "layer_sum_ms": lut.layer_sum(space.ops(arch))}
            for arch, t in zip(archs, timings)]
    overhead, scale = fit_calibration([r["layer_sum_ms"] for r in rows], [r["measured_ms"] for r in rows])
    lut.overhead = {"ms": overhead, "scale": scale,
                    "method": "least relative squares of measured vs overhead + scale * sum of layers",
                    "models": rows}
    return overhead, scale


def validation_metrics(predicted, measured) -> dict:
    from scipy import stats

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    err = np.abs(p - m) / m
    return {"n": int(len(m)), "spearman": float(stats.spearmanr(p, m).statistic),
            "kendall": float(stats.kendalltau(p, m).statistic), "mape": float(100 * err.mean()),
            "within_10pct": float(100 * np.mean(err <= 0.10)), "within_5pct": float(100 * np.mean(err <= 0.05))}


def validate_lut(space, cost_model: LUTCost, settings: HarnessSettings, n: int, seed: int, plot_path=None,
                 progress: bool = True) -> dict:
    """Measure ``n`` random archs end to end against the LUT's prediction."""
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(n)]
    predicted = [cost_model.cost(space.ops(arch)) for arch in archs]
    measured = [t.ms for t in measure_models(space, archs, settings, seed=seed, progress=progress,
                                             desc=f"validate {space.name}")]
    metrics = validation_metrics(predicted, measured)
    if plot_path is not None:
        plot_validation(predicted, measured, metrics, plot_path, f"{cost_model.target} / {space.name}")
    metrics["predicted_ms"], metrics["measured_ms"] = predicted, measured
    metrics["layer_sum_ms"] = [cost_model.lut.layer_sum(space.ops(arch)) for arch in archs]
    metrics["archs"] = [dict(arch) for arch in archs]
    return metrics


def plot_validation(predicted, measured, metrics: dict, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.6), dpi=120)
    lo, hi = min(min(predicted), min(measured)) * 0.9, max(max(predicted), max(measured)) * 1.1
    ax.plot([lo, hi], [lo, hi], c="k", lw=1)
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="tab:green", alpha=0.15,
                    label="±10%")
    ax.scatter(measured, predicted, s=14, c="tab:blue")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("LUT prediction (ms)")
    ax.set_title(f"{title}: Spearman {metrics['spearman']:.3f}, {metrics['within_10pct']:.0f}% within ±10%",
                 fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
