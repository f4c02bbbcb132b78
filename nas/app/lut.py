"""``python -m nas.lut build|validate|list|export|import``: build, check and list LUTs,
and make LUTs of devices that cannot run hwnas (``export`` a bundle, time it there with
its ``run_bundle.py``, ``import`` the timings; see :mod:`nas.lut.bundle`).

``build`` and ``validate`` work on this machine's LUT of a space (in the LUT folder, by
the machine's fingerprint), or on a named one (``target.options.file=``, or the shipped
reference with ``target.options.reference=true``, which ``validate`` compares against
this machine). ``list`` shows the LUT folder's tables and whose machine measured each.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from nas import checks
from nas.checks import json_text
from nas.errors import USER_ERROR_EXIT_CODE, NASError
from nas.latency import IDENTITY_FIELDS, HarnessSettings
from nas.lut import CALIBRATION_MODELS, MODES, LUTCost, LUTFile, build_lut, default_lut_dir, timing_for, validate_lut

#: this command's own fields: type and smallest accepted value (min_run_time: above 0)
LUT_FIELDS = {"n": (int, 2), "samples": (int, 1), "overhead_models": (int, 2), "lut_seed": (int, 0),
              "rounds": (int, 1), "min_run_time": (float, None), "mode": (str, None), "out": (str, None)}


def _split_args(argv):
    own, rest = {}, []
    argv = list(argv)
    if "--out" in argv:  # `--out DIR` as well as `out=DIR`
        at = argv.index("--out")
        if at + 1 >= len(argv):
            raise NASError("--out needs a folder: --out DIR")
        argv[at:at + 2] = [f"out={argv[at + 1]}"]
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in LUT_FIELDS:
            kind, least = LUT_FIELDS[key]
            try:
                own[key] = kind(value)
            except ValueError:
                word = "an integer" if kind is int else "a number"
                raise NASError(f"{key} must be {word}, got {value!r}") from None
            if kind is int:
                checks.number(key, own[key], integer=True, minimum=least)
            elif kind is float:
                checks.number(key, own[key], above=0)
        else:
            rest.append(arg)
    return own, rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: python -m nas.lut build|validate space=NAME target=NAME [mode=full|fast] [n=50] "
             "[samples=2000] [overhead_models=20] [lut_seed=0] [rounds=7] [min_run_time=0.05] "
             "[other run overrides]\n       python -m nas.lut list [DIR]   (default: the LUT folder, "
             f"{default_lut_dir()})\n"
             "       python -m nas.lut export space=NAME [space.FIELD=...] --out DIR [n=30] [overhead_models=20] "
             "[rounds=7] [min_run_time=0.05]   (a bundle to time on a device: python DIR/run_bundle.py)\n"
             "       python -m nas.lut import DIR/timings.json target=NAME   (the device's LUT; then target=NAME)")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    command = argv[0]
    try:
        if command not in ("build", "validate", "list", "export", "import"):
            raise NASError(f"unknown command {command!r}; use 'build', 'validate', 'list', 'export' or 'import'")
        if command == "list":
            return list_luts(Path(argv[1]).expanduser() if len(argv) > 1 else default_lut_dir())
        if command == "import":
            return import_command(argv[1:])
        from nas.app.run import compose_checked, make_components, register_config_nodes
        from nas.registry import import_plugins, plugins_in_overrides

        own, rest = _split_args(argv[1:])
        import_plugins(plugins_in_overrides(rest))  # a custom space's LUT, as nas.run finds it
        register_config_nodes()
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(compose_checked(rest), resolve=True)
        target = cfg["target"]
        if command == "export":
            return export_command(cfg, own)
        if target.get("cost_model") != "lut":
            raise NASError(f"target {target['name']!r} is analytic ({target.get('cost_model')}); "
                           "LUTs are built for measured targets such as target=cpu")
        space = make_components(cfg, need=("space",))["space"]
        options = dict(target.get("options") or {})
        mode = own.get("mode", "full")
        if mode not in MODES:
            raise NASError(f"mode={mode!r} is not one of {', '.join(MODES)}")
        timing = {k: own[k] for k in ("rounds", "min_run_time") if k in own}  # given ones win over the mode's
        settings = dataclasses.replace(
            timing_for(mode, HarnessSettings(**{k: options[k] for k in IDENTITY_FIELDS if k in options})), **timing)
        lut_dir = options.get("lut_dir")
        if lut_dir is not None:
            checks.folder_path("target.options.lut_dir", lut_dir)
            if command == "build":  # a folder that takes no files (e.g. under /proc) is said before measuring
                checks.make_folder("target.options.lut_dir", Path(lut_dir).expanduser())
        seed = own.get("lut_seed", 0)
        if command == "build":
            if options.get("reference"):
                raise NASError("the reference LUTs are shipped with the package; build this machine's "
                               "(without target.options.reference) or one at target.options.file=PATH")
            start = time.perf_counter()
            lut = build_lut(space, target["name"], settings, lut_dir, own.get("samples", 2000),
                            own.get("overhead_models", CALIBRATION_MODELS), seed, bool(cfg.get("progress", True)), mode=mode,
                            path=options.get("file"))
            predicted = sum(1 for e in lut.entries.values() if e.get("predicted"))
            print(f"LUT {lut.path}: {len(lut.entries)} entries ({predicted} predicted), overhead "
                  f"{lut.overhead_ms:.4f} ms, in-context scale {lut.scale:.3f}, {mode} mode, built in "
                  f"{time.perf_counter() - start:.1f} s; {lut.whose()}")
        else:
            cost_model = LUTCost(target["name"], space, lut_dir, options.get("file"), bool(options.get("reference")),
                                 build="none", **{k: options[k] for k in IDENTITY_FIELDS if k in options})
            plot = Path(cfg["output_dir"]) / f"lut-validate-{target['name']}-{space.name}.png"
            metrics = validate_lut(space, cost_model, settings, own.get("n", 50), seed + 7919, plot,
                                   bool(cfg.get("progress", True)))
            print(f"LUT {cost_model.path} ({cost_model.provenance()}) vs {metrics['n']} whole models measured here:")
            print(f"  Spearman {metrics['spearman']:.4f}  Kendall {metrics['kendall']:.4f}  "
                  f"MAPE {metrics['mape']:.2f}%  within ±10% {metrics['within_10pct']:.0f}%  "
                  f"within ±5% {metrics['within_5pct']:.0f}%")
            record = plot.with_suffix(".json")
            record.write_text(json_text({"lut": str(cost_model.path), **{f"lut_{k}": v for k, v in
                                                                        cost_model.lut.info().items()},
                                          "overhead_ms": cost_model.lut.overhead_ms,
                                          "scale": cost_model.lut.scale, **metrics}, indent=1))
            print(f"  scatter plot: {plot}; every model's figures: {record}")
    except NASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    return 0


def export_command(cfg: dict, own: dict) -> int:
    """``export``: the bundle of the run's space (at its configuration) in ``out``."""
    from nas.app.run import make_components
    from nas.lut.bundle import VALIDATION_MODELS, export_bundle

    if "out" not in own:
        raise NASError("export needs the bundle's folder: --out DIR (or out=DIR)")
    out = checks.folder_path("out", own["out"])
    checks.make_folder("out", out)
    space = make_components(cfg, need=("space",))["space"]
    options = dict(cfg["target"].get("options") or {})
    settings = HarnessSettings(**{k: options[k] for k in ("threads", "batch") if k in options},
                               **{k: own[k] for k in ("rounds", "min_run_time") if k in own})
    start = time.perf_counter()
    manifest = export_bundle(space, out, settings, own.get("samples", 2000),
                             own.get("overhead_models", CALIBRATION_MODELS), own.get("n", VALIDATION_MODELS),
                             own.get("lut_seed", 0), bool(cfg.get("progress", True)))
    kinds = [item["kind"] for item in manifest["items"]]
    print(f"bundle {out} ({time.perf_counter() - start:.1f} s): {kinds.count('op')} ops, "
          f"{kinds.count('calibration')} calibration and {kinds.count('validation')} validation models of "
          f"{space.name} as ONNX; on the device (Python with numpy and onnxruntime, nothing else):\n"
          f"  python run_bundle.py            # writes timings.json; stopped, it continues where it stopped\n"
          f"then here: python -m nas.lut import {out / 'timings.json'} target=NAME")
    return 0


def import_command(args: list[str]) -> int:
    """``import PATH target=NAME``: the device's LUT from its timings, registered as a target."""
    from nas.app.run import yaml_options
    from nas.lut.bundle import import_timings
    from nas.registry import COST_MODELS

    paths = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = sorted(set(named) - {"target"})
    if len(paths) != 1 or "target" not in named or unknown:
        raise NASError("usage: python -m nas.lut import DIR/timings.json target=NAME"
                       + (f" (unknown field {', '.join(unknown)})" if unknown else ""))
    target = named["target"]
    if target in yaml_options("target") or target in COST_MODELS.names():
        raise NASError(f"target {target!r} is one of hwnas's own targets; name the device otherwise "
                       "(e.g. target=pixel7)")
    lut, metrics = import_timings(paths[0], target)
    print(f"LUT {lut.path}: {len(lut.entries)} entries, overhead {lut.overhead_ms:.4f} ms, in-context scale "
          f"{lut.scale:.3f}; {lut.whose()}")
    if metrics:
        print(f"  validation on {metrics['n']} whole models timed on the device: Spearman {metrics['spearman']:.4f}  "
              f"Kendall {metrics['kendall']:.4f}  MAPE {metrics['mape']:.2f}%  within ±10% "
              f"{metrics['within_10pct']:.0f}%  within ±5% {metrics['within_5pct']:.0f}%")
    print(f"  search for that device with: python -m nas.run space={lut.meta['space']} target={target} ...")
    return 0


def list_luts(folder: Path) -> int:
    """Print every LUT file under ``folder``: target, space, mode, entries, whose machine."""
    # not the records beside the tables: imported targets, measured whole-model timings
    files = sorted(p for p in folder.rglob("*.json") if p.relative_to(folder).parts[0] not in ("targets", "measured")
                   ) if folder.is_dir() else []
    print(f"LUTs in {folder}: {len(files) or 'none'}")
    for path in files:
        try:
            lut = LUTFile.load(path)
        except NASError as exc:
            print(f"  {path.relative_to(folder)}: unreadable ({exc})")
            continue
        state = "" if lut.complete else ", unfinished build"
        print(f"  {path.relative_to(folder)}: {lut.meta.get('target')}/{lut.meta.get('space')}, "
              f"{len(lut.entries)} entries{state}; {lut.whose()}")
    return 0
