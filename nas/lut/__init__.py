"""Latency look-up tables: measured per target and machine, stored as JSON, validated end to end.

A LUT file holds its metadata (target, space and its config, the :class:`~nas.machine.Fingerprint`
of the machine that measured it, harness settings, dates, how it was built), one entry per
OpSpec key (latency, median, IQR, repeats, per-round medians; or, in a fast table, the
prediction and how it was made), and a calibration fitted from whole-model measurements:
a constant overhead (input handling, the model's own glue such as additions, dispatch)
and an in-context scale. The ``lut`` cost model predicts
``overhead + scale * sum(layer latencies)``.

Why a scale: a layer timed alone runs with its input, weights and scratch buffers hot in
cache; inside a model they were last touched a whole layer ago or more. On the CPU the
reference LUTs were built on, NAS-Bench-201's convolutions and poolings run about 30% slower
inside the network than alone, whatever the op; a constant alone under-predicts
conv-heavy cells and over-predicts light ones (see ``latency_luts/README.md``).

Whose table: ``target=cpu`` prices with *this machine's* LUT, found in the LUT folder
(``$HWNAS_LUT_DIR``, else ``~/.cache/hwnas/luts``, or ``target.options.lut_dir``) under
the machine's fingerprint and the space's configuration; when there is none, it is built
there first (fast mode: a designed subset measured, the rest predicted, see
:mod:`nas.lut.fast`). The tables shipped in ``latency_luts/`` are reference tables of the
machine they were measured on, used only on purpose (``target.options.reference=true``),
as is a table named by ``target.options.file``; then every output says whose machine
it is.

    python -m nas.lut build space=nb201 target=cpu [mode=fast]
    python -m nas.lut validate space=nb201 target=cpu n=50
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shlex
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from nas.checks import read_json, write_json_atomic
from nas.costs import CostModel, WholeArchCostModel
from nas.errors import NASError, one_of
from nas.latency import IDENTITY_FIELDS, HarnessSettings, Timing, measure_interleaved
from nas.machine import Fingerprint, device_name, this_machine
from nas.ops import OpSpec
from nas.registry import plugin_module, register_cost_model

FORMAT = "hwnas-lut/2"
#: environment variable naming the folder of this machine's LUTs (the per-user cache)
LUT_DIR_ENV = "HWNAS_LUT_DIR"
CHOOSE_LUT_DIR = f"choose another folder with target.options.lut_dir or ${LUT_DIR_ENV}"
MODES = ("fast", "full")
#: harness timing of a fast build's entries: rounds of 0.02 s instead of a full table's 0.05 s
FAST_TIMING = {"rounds": 7, "min_run_time": 0.02}
#: share of a space's OpSpecs a fast build measures (at least FAST_MIN_MEASURED)
FAST_SHARE = 0.2
FAST_MIN_MEASURED = 40
#: whole models a build times to fit a table's overhead and in-context scale
CALIBRATION_MODELS = 20


def timing_for(mode: str, settings: HarnessSettings) -> HarnessSettings:
    """The harness a build of ``mode`` times its entries with: FAST_TIMING for fast builds."""
    return dataclasses.replace(settings, **FAST_TIMING) if mode == "fast" else settings


def reference_lut_dir() -> Path:
    """The reference tables shipped with the package (another machine's measurements)."""
    return Path(str(resources.files("latency_luts")))


def default_lut_dir() -> Path:
    """Where this machine's LUTs are kept: $HWNAS_LUT_DIR, else the user's cache folder."""
    if os.environ.get(LUT_DIR_ENV):
        return Path(os.environ[LUT_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "hwnas" / "luts"


def reference_path(target: str, space_name: str) -> Path:
    return reference_lut_dir() / target / f"{space_name}.json"


def config_id(space, settings: HarnessSettings) -> str:
    """A short id of what a table's entries and calibration depend on besides the machine:
    the space's configuration and the harness settings that change what a latency means."""
    text = json.dumps({"space": space.name, "config": space.config(), "harness": settings.identity()},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def machine_lut_path(target: str, space, settings: HarnessSettings, lut_dir=None) -> Path:
    """This machine's LUT for ``space`` (an instance: its configuration counts) in ``lut_dir``:
    ``<lut_dir>/<target>/<space>/<machine id>-<config id>.json``, so one folder can hold the
    tables of several machines and configurations."""
    machine = this_machine(settings.device, settings.threads, settings.backend)
    return (Path(lut_dir).expanduser() if lut_dir else default_lut_dir()) / target / space.name / (
        f"{machine.id}-{config_id(space, settings)}.json")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class LUTFile:
    """One target's latencies for one space, measured on one machine."""

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

    @property
    def mode(self) -> str:
        return self.meta.get("mode", "full")

    @property
    def complete(self) -> bool:
        """False while a build is under way (or was interrupted): resume it before use."""
        return self.meta.get("status", "complete") == "complete"

    @property
    def fingerprint(self) -> Fingerprint:
        """The measuring machine; for files from before fingerprints, what they recorded
        (the rest is 'not recorded', so they are never this machine's)."""
        recorded = self.meta.get("fingerprint")
        if recorded is None:
            recorded = {"device": "cuda" if str(self.meta.get("device", "cpu")).startswith("cuda") else "cpu",
                        "processor": self.meta.get("processor"), "threads": self.meta.get("threads"),
                        "torch": self.meta.get("torch"), "backend": self.meta.get("backend")}
        return Fingerprint.from_dict(recorded)

    def timings(self) -> dict[str, Timing]:
        """The measured entries (a fast table's predicted ones are not timings)."""
        return {key: Timing.from_dict(e) for key, e in self.entries.items() if e.get("rounds_ms")}

    def layer_sum(self, ops) -> float:
        """Sum of the (isolated) latencies of ``ops``; KeyError if one is missing."""
        return float(sum(self.entries[op.key]["ms"] for op in ops))

    @classmethod
    def new(cls, path, target: str, space, settings: HarnessSettings, mode: str = "full") -> "LUTFile":
        machine = this_machine(settings.device, settings.threads, settings.backend)
        meta = {"target": target, "space": space.name, "space_config": space.config(),
                "machine_id": machine.id, "fingerprint": machine.to_dict(),
                "device": settings.device, "processor": device_name(settings.device),
                "torch": torch.__version__, "threads": settings.threads, "batch": settings.batch,
                "dtype": settings.dtype, "backend": settings.backend, "harness": settings.to_dict(),
                "mode": mode, "status": "building", "build_seconds": 0.0, "created": _now(), "updated": _now()}
        return cls(path, meta, {})

    @classmethod
    def load(cls, path) -> "LUTFile":
        path = Path(path)
        doc = read_json(path, "LUT file", "delete it and rebuild")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise NASError(f"LUT file {str(path)!r} is not a {FORMAT} file")
        try:
            meta, entries, overhead = doc["meta"], doc["entries"], doc["overhead"]
            for key, e in entries.items():
                measured = isinstance(e.get("rounds_ms"), list) and e["rounds_ms"]
                if not (isinstance(e["ms"], (int, float)) and e["ms"] >= 0 and (measured or e.get("predicted"))):
                    raise ValueError(key)
            for field in ("ms", "scale"):
                if not isinstance(overhead.get(field, 0.0), (int, float)):
                    raise ValueError(f"overhead.{field}")
            if not isinstance(meta.get("fingerprint", {}), dict):
                raise ValueError("meta.fingerprint")
            HarnessSettings.from_dict(meta["harness"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NASError(f"LUT file {str(path)!r} is corrupted (bad or missing field {exc}); "
                           "delete it and rebuild") from None
        return cls(path, meta, entries, overhead)

    def save(self) -> None:
        self.meta["updated"] = _now()
        doc = {"format": FORMAT, "meta": self.meta, "overhead": self.overhead,
               "entries": dict(sorted(self.entries.items()))}
        # atomic: an interrupted build leaves the last good file
        write_json_atomic(self.path, doc, "LUT file", CHOOSE_LUT_DIR)

    def check_matches(self, target: str, space_name: str | None, settings: HarnessSettings | None = None,
                      space_config: dict | None = None) -> None:
        """NASError if this file was measured for another target, space, configuration or harness."""
        where = str(self.path)
        if self.meta.get("target") != target:
            raise NASError(f"LUT file {where!r} is for target {self.meta.get('target')!r}, not {target!r}")
        if space_name is not None and self.meta.get("space") != space_name:
            raise NASError(f"LUT file {where!r} is for space {self.meta.get('space')!r}, not {space_name!r}")
        def as_json(config):  # tuples and lists alike, as the file stores them
            return json.loads(json.dumps(config, default=str)) if config is not None else None

        asked, ours = as_json(space_config), as_json(self.meta.get("space_config"))
        if asked is not None and ours not in (None, asked):
            diffs = [f"{k}={ours.get(k)!r} (asked {asked.get(k)!r})" for k in sorted(set(ours) | set(asked))
                     if ours.get(k) != asked.get(k)]
            raise NASError(f"LUT file {where!r} was measured for another configuration of space "
                           f"{space_name!r}: {', '.join(diffs)}")
        if settings is not None:
            ours, asked = self.settings.identity(), settings.identity()
            diffs = [f"{k}={ours[k]!r} (asked {asked[k]!r})" for k in IDENTITY_FIELDS if ours[k] != asked[k]]
            if diffs:
                raise NASError(f"LUT file {where!r} was measured with other settings: {', '.join(diffs)}")

    def on_this_machine(self) -> bool:
        """Whether this machine measured the file (its fingerprint matches, field by field)."""
        s = self.settings
        return self.fingerprint.matches(this_machine(s.device, s.threads, s.backend))

    def whose(self, short: bool = False) -> str:
        """Whose latencies these are, for every output that shows one."""
        kind = "reference LUT" if self.meta.get("reference") else f"{self.mode} LUT"
        if self.on_this_machine():
            return f"{kind} of this machine" + ("" if short else f" [id {self.fingerprint.id}]")
        if short:
            return f"{kind} of another machine [id {self.fingerprint.id}]"
        return f"{kind} of another machine: {self.fingerprint.describe()}"

    def info(self) -> dict:
        """The table's provenance, as result files record it."""
        return {"file": str(self.path), "mode": self.mode, "reference": bool(self.meta.get("reference")),
                "machine_id": self.fingerprint.id, "machine": self.fingerprint.describe(),
                "this_machine": self.on_this_machine(),
                "this_machine_id": this_machine(self.settings.device, self.settings.threads,
                                                self.settings.backend).id}

    def add(self, op: OpSpec, timing: Timing) -> None:
        self.entries[op.key] = timing.to_dict()


def op_builder(op: OpSpec):
    return lambda: (op.build(), tuple(op.in_shape()))


def model_builder(space, arch):
    return lambda: (space.build(arch), tuple(space.input_shape))


def measure_op(op: OpSpec, settings: HarnessSettings) -> Timing:
    return measure_interleaved({op.key: op_builder(op)}, settings)[op.key]


def _override_value(value) -> str:
    """A config value as a Hydra override writes it (``[0,3,5]``, ``{a:1}``, ``null``, ``true``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _build_command(target: str, space, lut_dir, mode: str = "full",
                   settings: HarnessSettings | None = None) -> str:
    """A ``python -m nas.lut build`` line that builds the table a run looked for, when pasted:
    the plug-in module of a space that is not built in, every field of the space's
    configuration that differs from its constructor's default, or is short (the CLI's own
    defaults may differ from the constructor's), the LUT folder and the harness settings
    that differ from the defaults."""
    parts = ["python", "-m", "nas.lut", "build"]
    module = plugin_module(space)
    if module is not None:
        parts.append(f"plugins=[{module}]")
    parts += [f"space={space.name}", f"target={target}", f"mode={mode}"]
    try:
        default_config = type(space)().config()
    except Exception:  # a space whose defaults cannot be built: spell out every field
        default_config = {}
    for k, v in space.config().items():
        text = _override_value(v)
        if default_config.get(k) != v or len(text) <= 40:
            parts.append(f"space.{k}={text}")
    if lut_dir:
        parts.append(f"target.options.lut_dir={lut_dir}")
    if settings is not None:
        default = HarnessSettings()
        parts += [f"target.options.{k}={v}" for k, v in settings.identity().items()
                  if hasattr(default, k) and getattr(default, k) != v]
    return " ".join(shlex.quote(part) for part in parts)  # pasted into a shell as it is


@register_cost_model("lut")
class LUTCost(CostModel):
    """Latency in ms from a measured LUT: the fitted overhead plus the in-context scale
    times the sum over layers (so ``op_cost`` is a layer's latency inside a model).

    Which table: this machine's for ``space`` (a Space, or a space name at its defaults),
    looked up in ``lut_dir`` (default: :func:`default_lut_dir`) and, when there is none,
    built there first (``build``: ``fast`` or ``full``; ``none`` refuses instead); or, on
    purpose, the shipped reference table (``reference=True``) or a given ``file``, which
    may be another machine's: :meth:`provenance` and the run's outputs then say whose.
    """

    unit = "ms"

    def __init__(self, target: str = "cpu", space=None, lut_dir: str | None = None, file: str | None = None,
                 reference: bool = False, build: str = "fast", measure_missing: bool = False, device: str = "cpu",
                 threads: int = 1, batch: int = 1, dtype: str = "float32", backend: str = "torch",
                 progress: bool = True):
        if file is None and space is None:
            raise NASError("the lut cost model needs the space (or a LUT file) it prices")
        if build not in MODES + ("none",):
            raise NASError(f"lut build={build!r} is not one of {one_of(MODES + ('none',))}")
        if reference and file:
            raise NASError("lut: reference=true and file= both name a table; give one of them")
        if isinstance(space, str):
            import nas

            space = nas.get_space(space)
        self.target = target
        self.settings = HarnessSettings(device=device, threads=threads, batch=batch, dtype=dtype, backend=backend)
        self.measure_missing = measure_missing
        self.chosen = bool(reference or file)  # another machine's table only when named on purpose
        name = space.name if space is not None else None
        if reference:
            self.path = reference_path(target, name)
            if not self.path.is_file():
                shipped = sorted(p.stem for p in self.path.parent.glob("*.json")) if self.path.parent.is_dir() else []
                raise NASError(f"no reference LUT for target {target!r} and space {name!r}; shipped ones: "
                               f"{one_of(shipped) if shipped else 'none for this target'}")
        elif file:
            self.path = Path(file).expanduser()
        else:
            self.path = machine_lut_path(target, space, self.settings, lut_dir)
            existing = LUTFile.load(self.path) if self.path.is_file() else None
            if existing is None or not existing.complete:
                self._build_here(space, existing, build, lut_dir, progress)
        self.lut = LUTFile.load(self.path)
        self.lut.check_matches(target, name, self.settings, space.config() if space is not None else None)
        if not self.lut.complete:
            finish = (_build_command(target, space, None, self.lut.mode) if space is not None
                      else f"python -m nas.lut build space={name} target={target}")
            raise NASError(f"LUT file {str(self.path)!r} is an unfinished build; finish it with: "
                           f"{finish} target.options.file={self.path}")
        if self.chosen and not self.lut.on_this_machine():
            print(f"{target}: using {self.lut.whose()} ({self.path}); its latencies are that machine's, not "
                  "this one's", file=sys.stderr)

    def _build_here(self, space, existing, build: str, lut_dir, progress: bool) -> None:
        """Build this machine's missing table now (or refuse with the command that builds it)."""
        command = _build_command(self.target, space, lut_dir, settings=self.settings)
        if build == "none":
            raise NASError(f"no LUT of this machine for target {self.target!r} and space {space.name!r} "
                           f"at {str(self.path)!r}; build it with: {command}")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise NASError(f"no LUT of this machine for target {self.target!r} and space {space.name!r}; "
                           f"build it before a torchrun run: {command}")
        machine = this_machine(self.settings.device, self.settings.threads, self.settings.backend)
        mode = existing.mode if existing is not None else build
        what = "continuing the interrupted build of" if existing is not None else "building"
        print(f"{self.target}: no LUT of this machine ({machine.describe()}) for space {space.name!r} at this "
              f"configuration; {what} one ({mode} mode) into {self.path}; later runs reuse it", file=sys.stderr)
        build_lut(space, self.target, timing_for(mode, self.settings), mode=mode, path=self.path, progress=progress,
                  overhead_models=CALIBRATION_MODELS)

    def provenance(self, short: bool = False) -> str:
        return self.lut.whose(short)

    def op_cost(self, op):
        entry = self.lut.entries.get(op.key)
        if entry is None:
            if not self.measure_missing:
                raise NASError(f"LUT {str(self.path)!r} has no entry for {op.key} (layer {op.name or '?'}); "
                               f"rebuild it with python -m nas.lut build, or set target.options.measure_missing=true")
            if not self.lut.on_this_machine():
                raise NASError(f"LUT {str(self.path)!r} lacks {op.key} and is a {self.lut.whose()}; this machine "
                               "cannot measure it comparably")
            self.lut.add(op, measure_op(op, self.lut.settings))
            self.lut.save()
            entry = self.lut.entries[op.key]
        return self.lut.scale * float(entry["ms"])

    def overhead(self):
        return self.lut.overhead_ms


# ---------------------------------------------------------------------------- build / validate


@register_cost_model("measured")
class MeasuredCost(WholeArchCostModel):
    """Latency in ms of each candidate timed end to end on this machine (the whole network,
    built and run by the harness as :func:`measure_models` times it), not predicted from
    layers. Each architecture is measured once per machine, space configuration and
    harness: timings are kept in ``<lut_dir>/measured/<space>/<machine id>-<config id>.json``
    (``lut_dir`` as for LUTs) and reused by later runs on this machine only; a file of
    another machine is refused. The cheapest architecture is the cheapest of a few
    measured candidates (the smallest by MACs, the first and last options), not proven."""

    unit = "ms"

    def __init__(self, space=None, lut_dir: str | None = None, device: str = "cpu", threads: int = 1,
                 batch: int = 1, dtype: str = "float32", backend: str = "torch", rounds: int = 7,
                 min_run_time: float = 0.05, progress: bool = True):
        if space is None:
            raise NASError("the measured cost model needs the space whose architectures it times")
        if isinstance(space, str):
            import nas

            space = nas.get_space(space)
        self.space = space
        self.settings = HarnessSettings(device=device, threads=threads, batch=batch, dtype=dtype, backend=backend,
                                        rounds=rounds, min_run_time=min_run_time)
        self.machine = this_machine(device, threads, backend)
        self.path = machine_lut_path("measured", space, self.settings, lut_dir)
        self.progress = progress
        self.timings: dict[str, dict] = {}
        if self.path.exists():
            doc = read_json(self.path, "measured-latency file", "move it aside to measure again")
            try:
                machine_id, timings = doc["machine_id"], dict(doc["timings"])
            except (KeyError, TypeError, ValueError):
                raise NASError(f"measured-latency file {str(self.path)!r} is corrupted (no machine_id or timings); "
                               "move it aside to measure again") from None
            if machine_id != self.machine.id:
                raise NASError(f"measured-latency file {str(self.path)!r} holds another machine's timings "
                               f"(id {machine_id}, this machine is {self.machine.id}); move it aside")
            self.timings = timings

    def arch_cost(self, space, arch) -> float:
        if space is not self.space and (space.name != self.space.name or space.config() != self.space.config()):
            raise NASError(f"the measured cost model times space {self.space.name!r} at its configuration; it was "
                           f"asked for {space.name!r} at another")
        key = arch.canonical_json()
        if key not in self.timings:
            [timing] = measure_models(space, [arch], self.settings, progress=False)
            self.timings[key] = timing.to_dict()
            self._save()
        return float(self.timings[key]["ms"])

    def _save(self) -> None:
        doc = {"format": "hwnas-measured/1", "machine_id": self.machine.id, "machine": self.machine.to_dict(),
               "space": self.space.name, "space_config": self.space.config(), "harness": self.settings.to_dict(),
               "timings": self.timings}
        write_json_atomic(self.path, doc, "measured-latency file", CHOOSE_LUT_DIR)

    def min_cost(self, space) -> tuple:
        from nas.arch import Arch
        from nas.costs import MACs

        ds = space.decisions()
        candidates = [space.min_cost(MACs())[1]] + [space.canonicalize(Arch({d.name: d.options[i] for d in ds}))
                                                    for i in (0, -1)]
        cost, arch = space.cheapest(self, candidates)
        return cost, arch, False

    def provenance(self, short: bool = False) -> str:
        return f"measured end to end on this machine [id {self.machine.id}]"


def measure_models(space, archs, settings: HarnessSettings, seed: int = 0, progress: bool = True,
                   desc: str = "models") -> list[Timing]:
    """End-to-end latency of each arch, in interleaved rounds."""
    builders = {i: model_builder(space, arch) for i, arch in enumerate(archs)}
    timings = measure_interleaved(builders, settings, seed=seed, progress=progress, desc=desc)
    return [timings[i] for i in range(len(archs))]


def latency_report(problem, arch) -> dict:
    """LUT-predicted and measured (here, end to end) latency of ``arch`` when the run's cost
    model is a LUT, with whose machine the LUT is (else nothing). Measured whoever's the
    LUT is: with another machine's, the two are that machine's and this one's, and say so."""
    cost_model = problem.cost_model
    if not isinstance(cost_model, LUTCost):
        return {}
    reports = cost_model.__dict__.setdefault("_latency_reports", {})
    if arch.key() not in reports:
        # One model cannot be interleaved with others, so its rounds are spread over more
        # time instead: the machine's speed drifts over seconds (see nas/latency.py).
        rounds = 3 * max(cost_model.lut.settings.rounds, HarnessSettings.rounds)
        settings = dataclasses.replace(cost_model.lut.settings, rounds=rounds)
        timing, where = measure_in_fresh_process(problem.space, arch, settings)
        predicted = problem.cost(arch)
        info = cost_model.lut.info()
        reports[arch.key()] = {
            "lut_latency_ms": predicted, "measured_latency_ms": timing.ms, "measured_latency_iqr_ms": timing.iqr_ms,
            "lut_error": (predicted - timing.ms) / timing.ms, "lut_machine_id": info["machine_id"],
            "lut_this_machine": info["this_machine"], "measured_on": info["this_machine_id"], "measured_in": where,
            "lut_whose": cost_model.lut.whose()}
    return dict(reports[arch.key()])


def _measure_one(space, arch, settings: HarnessSettings) -> Timing:
    return measure_models(space, [arch], settings, progress=False)[0]


def measure_in_fresh_process(space, arch, settings: HarnessSettings) -> tuple[Timing, str]:
    """(end-to-end timing of ``arch``, where it was measured). In a new process, as the LUT
    was built: in the process of a search that has just trained a supernet, the same
    network measured 1.2x-2x slower than in a new one (its heap and thread pools are the
    training's). A space that cannot be sent to a new process (defined in a script's
    ``__main__``, say) is measured in this one, and the report says so."""
    import multiprocessing
    import pickle

    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_measure_one, (space, arch, settings)), "a fresh process"
    except (pickle.PicklingError, AttributeError, ImportError, TypeError, OSError, EOFError,
            multiprocessing.ProcessError):
        return _measure_one(space, arch, settings), "the search's process"


def describe_latency(report: dict, what: str = "the result") -> str:
    """One line: LUT and measured latency side by side, and whose the LUT is."""
    where = "" if report.get("measured_in", "a fresh process") == "a fresh process" else f" in {report['measured_in']}"
    line = (f"latency of {what}: {report['lut_latency_ms']:.4g} ms by the {report['lut_whose']}, "
            f"{report['measured_latency_ms']:.4g} ms measured here{where}")
    if report["lut_this_machine"]:
        return line + f" (LUT error {report['lut_error']:+.1%})"
    return line + " (not comparable: the LUT is another machine's)"


def build_lut(space, target: str, settings: HarnessSettings, lut_dir=None, samples: int = 2000,
              overhead_models: int = CALIBRATION_MODELS, seed: int = 0, progress: bool = True, mode: str = "full",
              path=None, fast_share: float = FAST_SHARE, use_reference: bool = True) -> LUTFile:
    """Build this machine's LUT of ``space`` into ``path`` (default: :func:`machine_lut_path`
    in ``lut_dir``), saving as it goes: an interrupted build continues where it stopped.

    ``mode="full"`` measures every OpSpec (entries with fewer rounds than asked are
    completed); ``mode="fast"`` measures the :func:`nas.lut.fast.design` subset and
    predicts the rest (entries marked ``predicted``), using the shipped reference table's
    structure where one exists for this configuration (``use_reference``). Then the
    calibration is fitted on ``overhead_models`` whole models, timed in the same rounds."""
    if mode not in MODES:
        raise NASError(f"LUT build mode {mode!r} is not one of {one_of(MODES)}")
    path = Path(path) if path is not None else machine_lut_path(target, space, settings, lut_dir)
    lut = LUTFile.load(path) if path.exists() else LUTFile.new(path, target, space, settings, mode)
    lut.check_matches(target, space.name, settings, space.config())
    if lut.timings() and not lut.on_this_machine():
        raise NASError(f"LUT file {str(path)!r} is a {lut.whose()}; extend it on that machine or start a new file")
    started = time.monotonic()
    spent_before = float(lut.meta.get("build_seconds") or 0.0)
    lut.meta.update(harness=settings.to_dict(), mode=mode, status="building")
    lut.meta.setdefault("fingerprint", this_machine(settings.device, settings.threads, settings.backend).to_dict())
    done = lut.timings()
    all_ops = space.all_ops(samples=samples, seed=seed)
    if mode == "fast":
        from nas.lut.fast import design

        share = op_shares(space, seed=seed)
        wanted = design(all_ops, share, max(FAST_MIN_MEASURED, round(fast_share * len(all_ops))))
    else:
        wanted = all_ops
    todo = [op for op in wanted if op.key not in done or len(done[op.key].rounds_ms) < settings.rounds]
    calibrate = overhead_models > 0 and (bool(todo) or not lut.overhead.get("models"))
    # The calibration models are timed in the same interleaved rounds as the entries, so the
    # scale compares layers and models seen in the same speed states of the machine; and as
    # validation and latency reports time whole models (a fast build's short rounds would
    # time them a few per cent slow, a bias that would go into every prediction).
    whole = dataclasses.replace(settings, rounds=max(settings.rounds, HarnessSettings.rounds),
                                min_run_time=max(settings.min_run_time, HarnessSettings.min_run_time))
    archs = calibration_archs(space, overhead_models, seed + 1_000_003) if calibrate else []
    builders = {op.key: op_builder(op) for op in todo}
    builders.update({("model", i): model_builder(space, arch) for i, arch in enumerate(archs)})
    last_save = [time.monotonic()]

    def save_now_and_then(key, timing):
        if isinstance(key, tuple):
            return  # a calibration model: fitted at the end
        lut.entries[key] = timing.to_dict()
        if time.monotonic() - last_save[0] > 5:
            lut.meta["build_seconds"] = spent_before + time.monotonic() - started
            lut.save()
            last_save[0] = time.monotonic()

    timings = measure_interleaved(
        builders, settings, done=done, seed=seed, on_measured=save_now_and_then, progress=progress,
        item_settings={("model", i): whole for i in range(len(archs))},
        desc=f"LUT {target}/{space.name} ({mode}: {len(wanted)} of {len(all_ops)} ops, {len(archs)} models)")
    if mode == "fast":
        prior, reference = reference_prior(target, space, settings) if use_reference else (None, None)
        lut.meta["prior"] = None if reference is None else {
            "file": str(reference.path), "machine_id": reference.fingerprint.id,
            "use": "structure only: each predicted op is its latency there times this machine's measured ratio "
                   "for its family"}
        predict_missing(lut, all_ops, prior)
    else:  # a fast table made full: no prediction is left
        lut.entries = {k: e for k, e in lut.entries.items() if e.get("rounds_ms")}
    lut.meta["build_seconds"] = spent_before + time.monotonic() - started
    lut.save()  # every entry is in; a build stopped from here on only redoes the calibration
    if archs:
        calibrate_lut(lut, space, archs, [timings[("model", i)] for i in range(len(archs))])
    lut.meta.update(status="complete", build_seconds=spent_before + time.monotonic() - started)
    lut.save()
    return lut


def calibration_archs(space, n_models: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n_models)]


def reference_prior(target: str, space, settings: HarnessSettings) -> tuple[dict, LUTFile] | tuple[None, None]:
    """The shipped reference table's latencies for ``space`` when it was measured at the
    same configuration and harness identity (else nothing): a fast build's prior."""
    path = reference_path(target, space.name)
    if not path.is_file():
        return None, None
    try:
        reference = LUTFile.load(path)
        reference.check_matches(target, space.name, settings, space.config())
    except NASError:
        return None, None
    return {k: float(e["ms"]) for k, e in reference.entries.items()}, reference


def op_shares(space, n_archs: int = 200, seed: int = 0) -> dict[str, float]:
    """The share of ``n_archs`` random architectures of ``space`` that contain each OpSpec."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for _ in range(n_archs):
        for key in {op.key for op in space.ops(space.sample(rng))}:
            counts[key] = counts.get(key, 0) + 1
    return {key: c / n_archs for key, c in counts.items()}


def predict_missing(lut: LUTFile, all_ops, prior: dict | None = None) -> None:
    """Fill the entries of ``all_ops`` that were not measured with predictions from those
    that were (:class:`nas.lut.fast.OpPredictor`, with ``prior`` latencies of another
    machine where given), each marked with how it was made."""
    from nas.lut.fast import OpPredictor

    by_key = {op.key: op for op in all_ops}
    measured = {by_key[k]: t.ms for k, t in lut.timings().items() if k in by_key}
    predictor = OpPredictor(measured, prior=prior)
    for key, op in by_key.items():
        if not lut.entries.get(key, {}).get("rounds_ms"):
            lut.entries[key] = {"ms": predictor.predict(op), "predicted": predictor.source(op)}


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
    (:func:`fit_calibration`) to them; e.g. to re-calibrate another machine's table here."""
    archs = calibration_archs(space, n_models, seed)
    timings = measure_models(space, archs, settings, seed=seed, progress=progress, desc="calibration models")
    return calibrate_lut(lut, space, archs, timings)


def calibrate_lut(lut: LUTFile, space, archs, timings) -> tuple[float, float]:
    """Fit the LUT's overhead and scale to whole models' timings; the models are kept in
    the file for inspection."""
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
