"""The run CLI: ``python -m nas.run space=NAME searcher=NAME target=NAME data=NAME``.

Configuration is Hydra's: config groups under ``nas/conf/{space,searcher,target,data,
evaluator}``, every field overridable (``searcher.n_evals=50``), ``--multirun`` to sweep.
Plug-ins registered without a YAML file get a config node made from their constructor's
defaults, so a third-party space is usable by name. Bad input ends with one line on
stderr and exit code 2; nothing already in the ledger is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from nas.errors import USER_ERROR_EXIT_CODE, NASError, one_of
from nas.registry import (
    COST_MODELS,
    DATASETS,
    EVALUATORS,
    SEARCHERS,
    SPACES,
    config_fields,
    import_plugins,
    plugins_in_overrides,
)

CONF_DIR = Path(__file__).parent / "conf"
#: config group -> registry of the plug-ins it selects
GROUP_REGISTRIES = {"space": SPACES, "searcher": SEARCHERS, "evaluator": EVALUATORS, "data": DATASETS}
GROUPS = ("space", "searcher", "target", "data", "evaluator")
#: the config parts that decide what an evaluation yields: a run may only resume with them unchanged
EVALUATION_KEYS = ("space", "data", "evaluator", "target", "seed")
#: space fields that, left null, are taken from the data set (a space lists its own in ``data_fields``)
DATA_FIELDS = ("resolution", "num_classes", "in_channels")


def _plain(value):
    """Constructor defaults as YAML-able values (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def yaml_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def group_options(group: str) -> list[str]:
    if group == "target":  # named targets (YAML), every cost model with its defaults, imported devices
        from nas.lut.bundle import imported_targets

        return sorted(set(yaml_options(group)) | set(COST_MODELS.names()) | set(imported_targets()))
    return GROUP_REGISTRIES[group].names()


def config_node(group: str, name: str) -> dict:
    """The config node of plug-in ``name`` of ``group``: its constructor's fields and
    defaults (the one source of defaults, shared with ``nas.get_*``), with what the CLI
    adds: a space's data fields left null (taken from the data set), an evaluator's
    ``seed`` following the run's, and the config groups the plug-in selects when chosen
    (its ``config_defaults``, e.g. deepreduce's ``target: relu``; the command line wins)."""
    factory = GROUP_REGISTRIES[group].get(name)
    fields = _plain(config_fields(factory))
    if group == "space":
        fields.update({k: None for k in getattr(factory, "data_fields", ()) if k in fields})
    if group == "evaluator" and "seed" in fields:
        fields["seed"] = "${seed}"
    picks = getattr(factory, "config_defaults", {})
    defaults = [{f"override /{g}@_global_.{g}": option} for g, option in picks.items()]
    return {**({"defaults": defaults} if defaults else {}), "name": name, **fields}


def register_config_nodes() -> None:
    """Give every registered plug-in its config node (:func:`config_node`) and every cost
    model without a target YAML file a target of its defaults."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, registry in GROUP_REGISTRIES.items():
        for name in registry.names():
            cs.store(group=group, name=name, node=config_node(group, name))
    have = set(yaml_options("target"))
    for name in COST_MODELS.names():
        if name not in have:
            options = _plain(config_fields(COST_MODELS.get(name)))
            cs.store(group="target", name=name, node={"name": name, "cost_model": name, "options": options})
    from nas.latency import IDENTITY_FIELDS
    from nas.lut.bundle import imported_targets

    for name, entry in imported_targets().items():  # LUTs of devices, from `python -m nas.lut import`
        if name in have or name in COST_MODELS.names():
            continue  # a packaged target keeps its name (the import refuses such names)
        cs.store(group="target", name=name, node={"name": name, "cost_model": "lut", "options": {
            "target": name, "space": None, "lut_dir": None, "file": entry["file"], "reference": False,
            "build": "none", "measure_missing": False, **{k: entry[k] for k in IDENTITY_FIELDS}}})


def help_text() -> str:
    lines = [
        "Hardware-aware neural architecture search.",
        "",
        "usage: python -m nas.run [GROUP=OPTION ...] [KEY=VALUE ...] [--multirun] [--help]",
        "",
        "Config groups and their options:",
    ]
    for group in GROUPS:
        lines.append(f"  {group + ':':11s}{', '.join(group_options(group))}")
    lines += [
        "",
        "Top-level fields: seed, budget (cost limit in the target's unit), run_name, output_dir,",
        "storage (Optuna storage URL; default SQLite in the run directory), progress, save_model, plugins,",
        "arch (evaluate one architecture, a preset name or an arch JSON file, instead of searching),",
        "decisions.NAME=VALUE (set one decision of that architecture, or of the space's default one).",
        "Any field of a group is overridable: searcher.n_evals=50, evaluator.epochs=1, data.path=...",
        "Re-running with the same run_name resumes: finished evaluations are not repeated.",
        "",
        "examples:",
        "  python -m nas.run                                      # uib on mnist5k, two-stage TuNAS, CPU latency",
        "  python -m nas.run space=mbconv searcher=random target=macs",
        "  python -m nas.run space=nb201 evaluator=table searcher=optuna searcher.n_evals=100",
        "  python -m nas.run searcher=optuna searcher.sampler=nsga2 target=roofline_cpu",
        "  python -m nas.run space=mbconv budget=2e6 target=macs searcher=optuna",
        "",
        "Hydra's own options: --hydra-help, --cfg job, --multirun.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- config checks


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def compose_checked(overrides: list[str]):
    """Compose the config as Hydra will, turning every mistake into a one-line NASError."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    selections, fields = [], []
    for ov in overrides:
        if "=" not in ov:
            raise NASError(f"argument {ov!r} is not an override; write KEY=VALUE (e.g. space=nb201) or see --help")
        key = ov.split("=", 1)[0].lstrip("+~")
        value = ov.split("=", 1)[1]
        if key in GROUPS:
            if value not in group_options(key):
                kind = "target" if key == "target" else GROUP_REGISTRIES[key].kind
                raise NASError(f"unknown {kind} {value!r}; registered {kind}s: {one_of(group_options(key))}")
            selections.append(ov)
        else:
            fields.append(ov)
    try:
        with initialize_config_module("nas.app.conf", version_base=None):
            try:
                cfg = compose("config", overrides=selections + fields)
            except (HydraException, OmegaConfBaseException):
                _check_fields_exist(compose("config", overrides=selections), fields)  # the precise message
                raise
            OmegaConf.resolve(cfg)
    except NASError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise NASError(f"bad override: {_first_line(exc)}") from None
    return cfg


def _check_fields_exist(base, fields: list[str]) -> None:
    """A NASError naming the first override of ``fields`` that sets no field of ``base``
    (the config its group selections compose) and the fields there are."""
    from omegaconf import OmegaConf

    for ov in fields:
        if ov.startswith("+"):
            continue
        key = ov.split("=", 1)[0].lstrip("~")
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if node is None or not OmegaConf.is_dict(node) or leaf not in node:
            where = f"{parent} ({node.name})" if parent in GROUPS and node is not None else (parent or "the run")
            known = ", ".join(k for k in (node.keys() if OmegaConf.is_dict(node) else []) if k != "hydra")
            raise NASError(f"{key!r} is not a field of {where}; its fields are: {known}")


def check_run_fields(cfg: dict) -> None:
    """The run's own fields (not a plug-in's), checked before anything is written."""
    from nas import checks

    checks.number("seed", cfg.get("seed"), integer=True, minimum=0, maximum=2**32 - 1)
    checks.number("budget", cfg.get("budget"), above=0, allow_none=True)
    checks.safe_name("run_name", cfg.get("run_name"))
    checks.folder_path("output_dir", cfg.get("output_dir"))
    for key in ("progress", "save_model"):
        checks.boolean(key, cfg.get(key, True))
    storage = cfg.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise NASError(f"storage must be an Optuna storage URL, a .log path, 'memory' or null, got {storage!r}")
    plugins = cfg.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(m, str) and m for m in plugins):
        raise NASError(f"plugins must be a list of module names, e.g. plugins=[my_space], got {plugins!r}")


# ---------------------------------------------------------------------------- the run


def _evaluation_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys among EVALUATION_KEYS whose values differ between two configs."""
    diffs = []

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        elif a != b:
            diffs.append(prefix)

    for key in EVALUATION_KEYS:
        walk(old.get(key), new.get(key), key)
    return diffs


def with_decisions(space, base, decisions: dict):
    """``base`` with the decisions named in ``decisions`` (from ``decisions.NAME=VALUE``
    overrides, values as Hydra parsed them) replaced; each value must be one of the
    decision's options."""
    from nas.arch import Arch

    if not isinstance(decisions, dict):
        raise NASError(f"decisions must map decision names to options, got {decisions!r}")
    by_name = {d.name: d for d in space.decisions()}
    values = dict(base)
    for name, value in decisions.items():
        if name not in by_name:
            raise NASError(f"decisions.{name}: space {space.name!r} has no decision {name!r}; "
                           f"its decisions: {', '.join(by_name)}")
        options = by_name[name].options
        # Hydra reads 3 as int and 0.5 as float; an option matches by value and kind
        match = [o for o in options if o == value and isinstance(o, bool) == isinstance(value, bool)]
        if not match:
            raise NASError(f"decisions.{name}={value!r} is not an option; accepted: {one_of(options)}")
        values[name] = match[0]
    return space.validate(Arch(values))


def decision_overrides(argv: list[str]) -> list[str]:
    """``decisions.NAME=VALUE`` adds a key to the (empty) ``decisions`` node, which Hydra
    writes as ``+decisions.NAME=VALUE``; both spellings are accepted, so a W&B sweep's
    ``${args_no_hyphens}`` and a hand-written ``--multirun`` read the same."""
    return ["+" + a if a.startswith("decisions.") else a for a in argv]


def digest(key: str, *, _root_) -> str:
    """``${digest:KEY}``: a short stable name for the config value at KEY, used in the run
    names of sweeps over decisions (one run directory per architecture)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(_root_, key)
    plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:10]


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("digest", digest, replace=True)


def make_components(cfg: dict, need=("searcher", "evaluator", "space", "cost_model")) -> dict:
    """The plug-ins a resolved config names: searcher, evaluator, data (when needed), space
    (fields left null filled from the data set) and the target's cost model."""
    import nas

    check_run_fields(cfg)
    import_plugins(cfg.get("plugins"))
    for group in GROUPS:
        if not isinstance(cfg.get(group), dict) or "name" not in cfg[group]:
            raise NASError(f"config group {group!r} must select an option (e.g. {group}={group_options(group)[0]})")

    def fields(group):
        return {k: v for k, v in cfg[group].items() if k != "name"}

    out = {}
    space_cfg = fields("space")
    if "searcher" in need:
        out["searcher"] = nas.get_searcher(cfg["searcher"]["name"], **fields("searcher"))
    evaluator = nas.get_evaluator(cfg["evaluator"]["name"], **fields("evaluator")) if "evaluator" in need else None
    need_data = (evaluator is not None and evaluator.needs_data) or any(
        space_cfg.get(k, 0) is None for k in DATA_FIELDS)
    data = nas.get_dataset(cfg["data"]["name"], **fields("data")) if need_data else None
    if data is not None:
        filled = {"resolution": data.resolution, "num_classes": data.num_classes, "in_channels": data.in_channels}
        for k in DATA_FIELDS:
            if k in space_cfg and space_cfg[k] is None:
                space_cfg[k] = filled[k]
    space = nas.get_space(cfg["space"]["name"], **space_cfg)
    out.update(space=space, data=data, evaluator=evaluator)
    if "cost_model" in need:
        out["cost_model"] = make_cost_model(cfg, space)
    return out


def make_cost_model(cfg: dict, space):
    """The target's cost model for ``space`` (a measured LUT may be built here, which takes
    minutes: callers check everything else first)."""
    import nas

    target = cfg["target"]
    if "cost_model" not in target:
        raise NASError(f"target {target['name']!r} must name a cost_model ({one_of(COST_MODELS.names())})")
    options = dict(target.get("options") or {})
    model_fields = config_fields(COST_MODELS.get(target["cost_model"]))
    if "space" in model_fields and options.get("space") is None:
        options["space"] = space  # a measured LUT is per space and configuration
    if "progress" in model_fields:
        options.setdefault("progress", bool(cfg.get("progress", True)))  # e.g. building a LUT
    return nas.get_cost_model(target["cost_model"], **options)


def execute(cfg: dict):
    """Run one search from a resolved config dict; write the run directory; return the
    result (None on processes other than rank 0 under torchrun)."""
    from nas import world as processes
    from nas.search import check_budget, check_distributed

    world = processes.world()  # under torchrun: joins the other processes
    parts = make_components(cfg, need=("searcher", "evaluator", "space"))
    searcher, evaluator, space, data = parts["searcher"], parts["evaluator"], parts["space"], parts["data"]
    one_arch = bool(cfg.get("arch") or cfg.get("decisions"))  # one evaluation, no searcher runs
    if world.size > 1 and one_arch:
        raise NASError("arch= and decisions= evaluate one architecture in one process; run them without torchrun")
    if not one_arch:
        searcher.check(space)  # before the run directory is made (run_search checks again for library callers)
        check_distributed(searcher, world)
    evaluator.bind(space, data)
    cost_model = make_cost_model(cfg, space)  # last: building this machine's LUT takes minutes
    if not one_arch:
        searcher.check_cost_model(cost_model)
    check_budget(space, cost_model, cfg.get("budget"))  # before the run folder is made

    run_dir = Path(cfg["output_dir"]) / cfg["run_name"]
    if not world.is_main:
        return follow(cfg, world, searcher, space, cost_model, evaluator, run_dir)
    # the one architecture to evaluate instead of searching (a preset, a file, decisions)
    arch = with_decisions(space, space.resolve_arch(cfg["arch"]) if cfg.get("arch") else space.default_arch(),
                          cfg.get("decisions") or {}) if one_arch else None
    return lead(cfg, world, searcher, space, data, cost_model, evaluator, run_dir, arch)


def follow(cfg: dict, world, searcher, space, cost_model, evaluator, run_dir: Path) -> None:
    """A process other than rank 0 under torchrun: it trains its share of the search and
    writes nothing (rank 0 keeps the run directory, ledger and checkpoints)."""
    from nas.ledger import Ledger
    from nas.search import SearchProblem, run_search

    failed = world.broadcast(None)  # rank 0's setup
    if failed is not None:
        raise NASError(failed)
    problem = SearchProblem(space, cost_model, evaluator, Ledger(space, cfg["run_name"]), cfg.get("budget"),
                            cfg["seed"], show_progress=False, work_dir=run_dir, world=world)
    run_search(searcher, problem)


def lead(cfg: dict, world, searcher, space, data, cost_model, evaluator, run_dir: Path, arch):
    """The run in one process, or as rank 0 under torchrun: writes the run directory."""
    from nas import checks
    from nas.app.plot import plot_layer_costs, plot_pareto, plot_trajectory, trajectories_of
    from nas.app.tracking import make_logger
    from nas.costs import format_cost
    from nas.export import BestModelKeeper, write_result
    from nas.ledger import Ledger
    from nas.search import SearchProblem, run_search

    target = cfg["target"]
    created = False
    try:
        config_path = run_dir / "config.yaml"
        if config_path.exists():
            try:
                old = yaml.safe_load(config_path.read_text()) or {}
            except yaml.YAMLError:
                raise NASError(f"{str(config_path)!r} is not readable YAML; move the run folder aside or choose "
                               "another run_name") from None
            diffs = _evaluation_differences(old, cfg)
            if diffs:
                raise NASError(f"run {str(run_dir)!r} was made with other settings ({', '.join(diffs[:4])} differ), "
                               "so its evaluations do not apply; choose another run_name or output_dir")
        # Nothing is written into an existing run folder before the whole setup (storage,
        # logger) has succeeded; a new folder that the setup fails in is removed again.
        created = checks.make_folder("output_dir/run_name", run_dir)
        storage = cfg.get("storage") or f"sqlite:///{(run_dir / 'ledger.db').resolve()}"
        ledger = Ledger(space, cfg["run_name"], storage, evaluator.metric, cost_model.name or "cost")
        n_before = len(ledger)
        tracker = make_logger(cfg, run_dir, evaluator.metric, cost_label(target["name"], cost_model))
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    except NASError as exc:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        world.broadcast(str(exc))  # the processes waiting for the setup stop with the same error
        raise
    keeper = BestModelKeeper(run_dir, space)

    def on_evaluation(evaluation, model, best_before):
        if cfg.get("save_model", True):
            keeper(evaluation, model, best_before)
        if tracker is not None:
            tracker.log_evaluation(evaluation, best_before)

    problem = SearchProblem(space, cost_model, evaluator, ledger, cfg.get("budget"), cfg["seed"],
                            show_progress=bool(cfg.get("progress", True)), on_evaluation=on_evaluation,
                            work_dir=run_dir, world=world)
    world.broadcast(None)  # the setup went well: the other processes start
    if n_before:
        print(f"resuming run {cfg['run_name']!r}: {n_before} evaluations in its ledger", file=sys.stderr)
    try:
        if arch is not None:  # one given architecture instead of a search
            problem.check_budget()
            problem.evaluate(arch)
            result = problem.result(searcher=None, reused_from_ledger=problem.n_reused)
        else:
            result = run_search(searcher, problem)
    except BaseException as exc:
        if tracker is not None:
            tracker.abort()
        if isinstance(exc, NASError) and created and not ledger.study.get_trials(deepcopy=False) and \
                {p.name for p in run_dir.iterdir()} <= {"config.yaml", "ledger.db"}:
            shutil.rmtree(run_dir, ignore_errors=True)  # refused before it did anything: leave no folder
        raise

    weights = keeper.weights_of(result.best)
    latency = _best_latency(problem, result, searcher)
    summary = {
        "run_name": cfg["run_name"], "space": space.name,
        "evaluator": evaluator.name, "data": cfg["data"]["name"] if data is not None else None,
        "target": target["name"], "cost_model": cost_model.name, "cost_unit": cost_model.unit,
        "cost_provenance": cost_model.provenance(), "quality_metric": evaluator.metric, "seed": cfg["seed"],
        "storage": storage, "weights": weights,
        **result.to_dict(), "searcher": result.extras.get("searcher", searcher.name),
    }
    if latency is not None:
        summary["lut"] = cost_model.lut.info()
        summary["best_latency"] = latency
    write_result(run_dir, summary, result, space)
    label = cost_label(target["name"], cost_model)
    plot_pareto(result, run_dir / "pareto.png", label, evaluator.metric,
                f"{space.name} / {searcher.name} / {cfg['run_name']}", preset_costs(space, cost_model))
    per_layer = result.best is not None and cost_model.additive  # a whole-arch model has no layer costs
    if per_layer:
        plot_layer_costs(space.ops(result.best.arch), cost_model, run_dir / "layers.png", label,
                         f"best of {cfg['run_name']}")
    onnx_note = export_model(run_dir) if weights is not None else None
    plot_trajectory(trajectories_of(result.extras), run_dir / "trajectory.png",
                    f"{space.name} / {searcher.name} / {cfg['run_name']}")

    print(f"run directory: {run_dir}")
    print(f"evaluations: {result.n_evals} ({result.extras.get('reused_from_ledger', 0)} read back from the ledger)")
    if result.best is None:
        print("best: none within the budget")
    else:
        b = result.best
        whose = cost_model.provenance(short=True)
        print(f"best: {evaluator.metric} {b.quality:.4f}, {target['name']} {format_cost(b.cost, cost_model.unit)}"
              f"{f' ({whose})' if whose else ''}, trial {b.trial}: {b.arch.to_json()}")
    for line in result.extras.get("report", []):  # the searcher's own summary
        print(line)
    print(f"pareto front: {len(result.pareto)} architectures (result.json, pareto.png"
          + (", layers.png: the best's cost per layer)" if per_layer else ")"))
    if onnx_note:
        print(onnx_note)
    if tracker is not None:
        tracker.finish(result, summary)
        print(f"W&B: logged {tracker.mode} as {tracker.name!r} ({tracker.dir})")
    if latency is not None:  # last, where the eye lands: the LUT's latency against this machine's
        from nas.lut import describe_latency

        print(describe_latency(latency, "the best"))
    return result


def cost_label(target_name: str, cost_model) -> str:
    """``cpu (ms)``, with whose machine a measured LUT is, for axes and tables."""
    whose = cost_model.provenance(short=True)
    return f"{target_name} ({cost_model.unit}{'; ' + whose if whose else ''})"


def _best_latency(problem, result, searcher) -> dict | None:
    """The best architecture's LUT latency and its latency measured here, when the run
    prices with a LUT (the searchers' own reports of the same arch are reused), unless the
    searcher was told not to measure (``searcher.measure_latency=false``)."""
    from nas.lut import LUTCost, latency_report

    if result.best is None or not isinstance(problem.cost_model, LUTCost):
        return None
    if getattr(searcher, "measure_latency", True) is False:
        return None
    return latency_report(problem, result.best.arch)


def preset_costs(space, cost_model) -> list[tuple[str, float]]:
    """(name, cost) of the space's presets that ``cost_model`` can price (a LUT may lack
    the layers of presets outside the space's default grid)."""
    costs = []
    for name in space.presets():
        try:
            costs.append((name, cost_model.arch_cost(space, space.preset(name))))
        except NASError:
            continue
    return costs


def export_model(run_dir) -> str | None:
    """Export the run's best model to ONNX when the onnx package is installed; a failed
    export is reported, never fatal (the run's results are written by then)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return None
    from nas.export import export_onnx

    try:
        return f"ONNX export: {export_onnx(run_dir)}"
    except Exception as exc:  # an exporter limitation must not fail a finished search
        return f"ONNX export failed ({type(exc).__name__}: {_first_line(exc)}); model.pt is intact"


def _hydra_task(cfg) -> None:
    from omegaconf import OmegaConf

    from nas.world import leave

    container = OmegaConf.to_container(cfg, resolve=True)
    try:
        execute(container)
        leave()
    except NASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
        print("interrupted: finished evaluations are in the ledger; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)


def main(argv: list[str] | None = None) -> int:
    from omegaconf import OmegaConf

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = decision_overrides(argv)
        import_plugins(plugins_in_overrides(argv))
        register_config_nodes()
        register_resolvers()
        if "--help" in argv or "-h" in argv:
            print(help_text())
            return 0
        # A mistake is reported before anything starts (Hydra itself writes nothing: see
        # conf/config.yaml); each run of a --multirun sweep is checked the same way.
        hydra_flags = [a for a in argv if a.startswith("-")]
        cfg = None
        if not hydra_flags:
            cfg = compose_checked(argv)
            check_run_fields(OmegaConf.to_container(cfg, resolve=True))
        elif set(hydra_flags) <= {"--multirun", "-m"}:
            from nas.app.sweep import composed_configs, parse_overrides

            composed_configs(*parse_overrides([a for a in argv if not a.startswith("-")], owned=()))
    except NASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE

    import signal

    from nas.training.train import handle_sigterm

    signal.signal(signal.SIGTERM, handle_sigterm)  # training searchers checkpoint, then stop
    if cfg is not None:
        # One run: the configuration just composed and checked is the job's (Hydra's job
        # machinery adds nothing to a single run: it writes nothing and changes no folder).
        _hydra_task(cfg)
        return 0
    import hydra

    task = hydra.main(version_base=None, config_path="conf", config_name="config")(_hydra_task)
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 alone prints Hydra's messages
        argv += ["hydra/hydra_logging=none"]
    sys.argv = [sys.argv[0]] + argv
    task()
    return 0
