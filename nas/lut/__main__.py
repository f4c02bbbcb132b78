"""``python -m nas.lut build|validate space=NAME target=NAME``: build and check LUTs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from nas.errors import USER_ERROR_EXIT_CODE, NASError
from nas.latency import HarnessSettings
from nas.latency import IDENTITY_FIELDS
from nas.lut import LUTCost, build_lut, validate_lut

LUT_FIELDS = {"n": int, "samples": int, "overhead_models": int, "lut_seed": int, "rounds": int,
              "min_run_time": float}
TYPE_WORDS = {int: "an integer", float: "a number"}


def _split_args(argv):
    own, rest = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in LUT_FIELDS:
            try:
                own[key] = LUT_FIELDS[key](value)
            except ValueError:
                raise NASError(f"{key} must be {TYPE_WORDS[LUT_FIELDS[key]]}, got {value!r}") from None
        else:
            rest.append(arg)
    return own, rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: python -m nas.lut build|validate space=NAME target=NAME [n=50] [samples=2000] "
             "[overhead_models=20] [lut_seed=0] [rounds=7] [min_run_time=0.05] [other run overrides]")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    command = argv[0]
    try:
        if command not in ("build", "validate"):
            raise NASError(f"unknown command {command!r}; use 'build' or 'validate'")
        from nas.run import compose_checked, make_components, register_config_nodes

        own, rest = _split_args(argv[1:])
        register_config_nodes()
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(compose_checked(rest), resolve=True)
        target = cfg["target"]
        if target.get("cost_model") != "lut":
            raise NASError(f"target {target['name']!r} is analytic ({target.get('cost_model')}); "
                           "LUTs are built for measured targets such as target=cpu")
        space = make_components(cfg, need=("space",))["space"]
        options = dict(target.get("options") or {})
        timing = {k: own[k] for k in ("rounds", "min_run_time") if k in own}
        settings = HarnessSettings(**{k: options[k] for k in IDENTITY_FIELDS if k in options}, **timing)
        lut_dir = options.get("lut_dir")
        seed = own.get("lut_seed", 0)
        if command == "build":
            start = time.perf_counter()
            lut = build_lut(space, target["name"], settings, lut_dir, own.get("samples", 2000),
                            own.get("overhead_models", 20), seed, bool(cfg.get("progress", True)))
            print(f"LUT {lut.path}: {len(lut.entries)} entries, overhead {lut.overhead_ms:.4f} ms, "
                  f"in-context scale {lut.scale:.3f}, built in {time.perf_counter() - start:.1f} s")
        else:
            cost_model = LUTCost(target["name"], space.name, lut_dir, measure_missing=False,
                                 **{k: options[k] for k in IDENTITY_FIELDS if k in options})
            plot = Path(cfg["output_dir"]) / f"lut-validate-{target['name']}-{space.name}.png"
            metrics = validate_lut(space, cost_model, settings, own.get("n", 50), seed + 7919, plot,
                                   bool(cfg.get("progress", True)))
            print(f"LUT {cost_model.path} vs {metrics['n']} whole models measured here:")
            print(f"  Spearman {metrics['spearman']:.4f}  Kendall {metrics['kendall']:.4f}  "
                  f"MAPE {metrics['mape']:.2f}%  within ±10% {metrics['within_10pct']:.0f}%  "
                  f"within ±5% {metrics['within_5pct']:.0f}%")
            record = plot.with_suffix(".json")
            record.write_text(json.dumps({"lut": str(cost_model.path), "overhead_ms": cost_model.lut.overhead_ms,
                                          "scale": cost_model.lut.scale, **metrics}, indent=1))
            print(f"  scatter plot: {plot}; every model's figures: {record}")
    except NASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
