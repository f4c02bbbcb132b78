"""``python -m nas.sweep [--over searcher|arch] [--method M] [--name N] [--out FILE] OVERRIDES``:
write a Weights & Biases sweep configuration for ``python -m nas.run``.

Overrides are ``nas.run``'s, in Hydra's sweep syntax: ``KEY=VALUE`` is fixed for every
run, ``KEY=A,B,C`` or ``KEY=range(0,3)`` is swept (one sweep parameter).

- ``--over searcher`` (default): the swept keys (a searcher's settings, the seed, the
  budget, a config group such as ``searcher=random,optuna``) are the parameters; each
  sweep run is a whole search, in its own run directory.
- ``--over arch``: every decision of the space is a parameter over its options
  (``decisions.NAME=A,B`` narrows one, ``decisions.NAME=A`` fixes it); each sweep run
  evaluates one architecture (``nas.run decisions.NAME=VALUE ...``), in a run directory
  named by a digest of its decisions.

The sweep's ``command`` runs ``python -m nas.run`` with the fixed overrides,
``logger=wandb`` and W&B's ``${args_no_hyphens}`` (the parameters as ``KEY=VALUE``); its
metric is the run's ``best_<quality metric>``, maximised. ``wandb sweep FILE`` registers
it and ``wandb agent`` runs it (both need W&B's server). The offline way, Hydra's
``--multirun`` over the same settings, is printed alongside.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import yaml

from nas.checks import safe_name
from nas.errors import USER_ERROR_EXIT_CODE, NASError, one_of

OVER = ("searcher", "arch")
METHODS = ("grid", "random", "bayes")
#: the most values one swept key may take (a longer range is a typo, and would fill memory)
MAX_SWEEP_VALUES = 10_000
#: nas.run fields a sweep sets itself
SWEEP_OWNED = ("run_name", "logger")


class SweepParameter:
    """One swept key, its values (as Hydra parsed them) and how run names spell it."""

    def __init__(self, key: str, values: list):
        self.key, self.values = key, values

    @property
    def is_decision(self) -> bool:
        return self.key.startswith("decisions.")


def parse_overrides(overrides: list[str], owned=SWEEP_OWNED) -> tuple[list[str], list[SweepParameter]]:
    """Fixed overrides (as written) and swept parameters (choice and range sweeps);
    ``owned``: keys the caller sets itself, refused."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import RangeSweep
    from hydra.errors import HydraException

    from nas.app.run import decision_overrides

    try:
        parsed = OverridesParser.create().parse_overrides(decision_overrides(overrides))
    except HydraException as exc:
        raise NASError(f"bad override: {str(exc).strip().splitlines()[0]}") from None
    fixed, swept = [], []
    for ov in parsed:
        key = ov.key_or_group
        if key in owned:
            raise NASError(f"{key} is set by the sweep (runs log to W&B, run names come from --name and the "
                           f"parameters); drop {ov.input_line!r}")
        if not ov.is_sweep_override():
            fixed.append(ov.input_line)
        elif ov.is_interval_sweep():
            raise NASError(f"{ov.input_line!r}: interval sweeps are not supported; list the values (A,B,C) "
                           "or use range(start,stop,step)")
        else:
            value = ov.value()
            if isinstance(value, RangeSweep):
                bounds = (value.start, value.stop, value.step)
                if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds) or not value.step:
                    raise NASError(f"{ov.input_line!r}: range(start,stop,step) needs finite numbers and a non-zero "
                                   "step")
                count = math.ceil((value.stop - value.start) / value.step)
                if count > MAX_SWEEP_VALUES:
                    raise NASError(f"{ov.input_line!r} sweeps over {count:.3g} values; at most {MAX_SWEEP_VALUES:,} "
                                   "are accepted per key")
            try:
                values = list(ov.sweep_iterator())
            except HydraException as exc:  # e.g. glob(*), which needs the whole config
                raise NASError(f"{ov.input_line!r}: {str(exc).strip().splitlines()[0]}; list the values (A,B,C) or "
                               "use range(start,stop,step)") from None
            if not values:
                raise NASError(f"{ov.input_line!r} sweeps over no values (an empty range: range(start,stop) needs "
                               "start < stop, or a negative step)")
            if any(isinstance(v, (list, dict)) for v in values):
                raise NASError(f"{ov.input_line!r}: sweep values must be numbers, strings or booleans")
            swept.append(SweepParameter(key, values))
    keys = [p.key for p in swept]
    if len(set(keys)) != len(keys):
        raise NASError(f"a key is swept twice: {', '.join(sorted(k for k in set(keys) if keys.count(k) > 1))}")
    return fixed, swept


def _with_value(key: str, value) -> str:
    return f"{'+' if key.startswith('decisions.') else ''}{key}={value}"


def composed_configs(fixed: list[str], swept: list[SweepParameter]) -> list[dict]:
    """The resolved configs of the first combination and of every swept value of a config
    key with the others at their first (a mistake is reported now, not in the sweep's
    runs); each has its run fields checked."""
    from omegaconf import OmegaConf

    from nas.app.run import check_run_fields, compose_checked

    config_swept = [p for p in swept if not p.is_decision]
    first = [_with_value(p.key, p.values[0]) for p in config_swept]
    variants = [fixed + first]
    for i, p in enumerate(config_swept):
        variants += [fixed + first[:i] + [_with_value(p.key, value)] + first[i + 1:] for value in p.values[1:]]
    configs = []
    for overrides in variants:
        cfg = OmegaConf.to_container(compose_checked(overrides), resolve=True)
        check_run_fields(cfg)
        configs.append(cfg)
    return configs


def check_settings(fixed: list[str], swept: list[SweepParameter]) -> dict:
    """Check every swept value with the fixed overrides (:func:`composed_configs` and
    the decisions); return the components of the first combination."""
    from nas.app.run import GROUPS, make_components, with_decisions

    config_swept = [p for p in swept if not p.is_decision]
    cfg = composed_configs(fixed, swept)[0]
    parts = make_components(cfg, need=("searcher", "evaluator", "space"))
    space = parts["space"]
    decisions = dict(cfg.get("decisions") or {})  # the fixed ones
    with_decisions(space, space.default_arch(), decisions)
    for p in swept:
        if p.is_decision:
            for value in p.values:
                with_decisions(space, space.default_arch(), {**decisions, p.key.split(".", 1)[1]: value})
    groups = {p.key for p in config_swept if p.key in GROUPS}
    return {"cfg": cfg, "space": space, "evaluator": parts["evaluator"], "groups": groups}


def run_name_template(name: str, swept: list[SweepParameter], groups: set[str]) -> str:
    """``NAME-LEAF${KEY}...`` (plus ``-${digest:decisions}`` when decisions are swept):
    Hydra fills it in per run, so every sweep run gets its own run directory."""
    config_swept = [p for p in swept if not p.is_decision]
    leaves = [p.key.rpartition(".")[2] for p in config_swept]
    parts = [name]
    for p, leaf in zip(config_swept, leaves):
        label = leaf if leaves.count(leaf) == 1 else p.key.replace(".", "_")
        parts.append(f"{label}${{{p.key}.name}}" if p.key in groups else f"{label}${{{p.key}}}")
    if any(p.is_decision for p in swept):
        parts.append("${digest:decisions}")
    return "-".join(parts)


def sweep_config(over: str, method: str, name: str, fixed: list[str], swept: list[SweepParameter],
                 checked: dict) -> dict:
    """The W&B sweep configuration (a dict, written as YAML)."""
    cfg, space = checked["cfg"], checked["space"]
    if over == "arch":
        fixed_decisions = {ov.split("=", 1)[0][len("+decisions."):] for ov in fixed if ov.startswith("+decisions.")}
        narrowed = {p.key for p in swept if p.is_decision}
        swept = swept + [SweepParameter(f"decisions.{d.name}", list(d.options)) for d in space.decisions()
                         if d.name not in fixed_decisions and f"decisions.{d.name}" not in narrowed and
                         len(d.options) > 1]
        if not any(p.is_decision for p in swept):
            raise NASError(f"--over arch: every decision of space {space.name!r} is fixed; nothing to sweep")
    elif not swept:
        raise NASError("--over searcher needs at least one swept setting, e.g. searcher.n_evals=10,20 or "
                       "seed=0,1,2 (or use --over arch to sweep the space's decisions)")
    run_name = run_name_template(name, swept, checked["groups"])
    command = ["${env}", "${interpreter}", "-m", "nas.run",
               *[ov[1:] if ov.startswith("+decisions.") else ov for ov in fixed],
               "logger=wandb", f"run_name={run_name}", "${args_no_hyphens}"]
    config = {
        "name": name,
        "method": method,
        "metric": {"name": f"best_{checked['evaluator'].metric}", "goal": "maximize"},
        "parameters": {p.key: {"values": p.values} for p in swept},
        "command": command,
        "project": (cfg.get("wandb") or {}).get("project") or "hwnas",
    }
    if (cfg.get("wandb") or {}).get("entity"):
        config["entity"] = cfg["wandb"]["entity"]
    return config


def multirun_command(config: dict) -> list[str]:
    """The same sweep as a grid with Hydra's ``--multirun`` (no W&B server needed)."""
    fixed = [c for c in config["command"][4:] if c not in ("${args_no_hyphens}", "logger=wandb")]
    swept = [f"{key}={','.join(str(v) for v in spec['values'])}" for key, spec in config["parameters"].items()]
    return ["python", "-m", "nas.run", "--multirun", *fixed, *swept]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nas.sweep", description="Write a Weights & Biases sweep configuration for python -m nas.run.",
        epilog="example: python -m nas.sweep space=nb201 evaluator=table searcher=random target=macs "
               "searcher.n_evals=10,20 seed=0,1")
    parser.add_argument("--over", default="searcher", help=f"what a sweep run varies: {', '.join(OVER)}")
    parser.add_argument("--method", default=None, help=f"W&B search method: {', '.join(METHODS)} "
                        "(default: grid over searcher settings, random over decisions)")
    parser.add_argument("--name", default=None, help="sweep name and run-name prefix (default SPACE-OVER-sweep)")
    parser.add_argument("--out", default=None, help="YAML file to write (default NAME.yaml)")
    parser.add_argument("overrides", nargs="*", help="nas.run overrides; KEY=A,B sweeps KEY")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.over not in OVER:
            raise NASError(f"--over {args.over!r} is not accepted; use one of {one_of(OVER)}")
        method = args.method or ("grid" if args.over == "searcher" else "random")
        if method not in METHODS:
            raise NASError(f"--method {method!r} is not accepted; use one of {one_of(METHODS)}")
        from nas.app.run import register_config_nodes, register_resolvers
        from nas.registry import import_plugins, plugins_in_overrides

        import_plugins(plugins_in_overrides(args.overrides))
        register_config_nodes()
        register_resolvers()
        fixed, swept = parse_overrides(args.overrides)
        checked = check_settings(fixed, swept)
        name = safe_name("--name", args.name or f"{checked['space'].name}-{args.over}-sweep")
        if any(c in name for c in "${}=, "):  # the run names are Hydra interpolations and overrides
            raise NASError(f"--name {name!r} must be a plain name (no '$', braces, '=', ',' or spaces)")
        config = sweep_config(args.over, method, name, fixed, swept, checked)
        out = Path(args.out or f"{name}.yaml").expanduser()
        try:  # is_dir itself fails on a name longer than the file system allows
            if out.is_dir():
                raise NASError(f"--out {str(out)!r} is a folder; name the YAML file to write")
            out.write_text(yaml.safe_dump(config, sort_keys=False))
        except OSError as exc:
            raise NASError(f"--out: cannot write {str(out)!r} ({exc.strerror or exc})") from None
    except NASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    n_runs = 1
    for spec in config["parameters"].values():
        n_runs *= len(spec["values"])
    combinations = format(n_runs, ",") if n_runs < 10**6 else format(n_runs, ".3g")
    print(f"wrote {out}: {len(config['parameters'])} parameters, {combinations} combinations, method {method}, "
          f"metric {config['metric']['name']} (maximize)")
    print(f"with W&B:  wandb sweep {shlex.quote(str(out))}   then   wandb agent ENTITY/{config['project']}/SWEEP_ID")
    print("offline (Hydra's grid over the same values):")
    print("  " + " ".join(shlex.quote(c) for c in multirun_command(config)))
    return 0
