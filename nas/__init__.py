"""Hardware-aware neural architecture search: spaces and searchers as plug-ins, every
candidate priced by a cost model (analytic or a measured latency LUT).

Library API::

    import nas
    space = nas.get_space("nb201")
    searcher = nas.get_searcher("optuna", sampler="tpe", n_evals=50)
    result = nas.search(space, searcher, cost_model="macs", evaluator="table", seed=0)
"""

from __future__ import annotations

from nas.arch import Arch, Decision
from nas.costs import CostModel
from nas.errors import NASError
from nas.evaluators import BenchmarkTable, Evaluator, Score
from nas.export import SavedModel, export_onnx, load
from nas.ledger import Evaluation, Ledger
from nas.ops import OpSpec, register_op_kind
from nas.registry import (
    COST_MODELS,
    DATASETS,
    EVALUATORS,
    SEARCHERS,
    SPACES,
    config_fields,
    register_cost_model,
    register_dataset,
    register_evaluator,
    register_searcher,
    register_space,
)
from nas.search import Searcher, SearchProblem, SearchResult, run_search
from nas.space import Space

__version__ = "0.1.0"


def get_space(name: str, **cfg) -> Space:
    space = SPACES.create(name, **cfg)
    space.check_input_size()
    return space


def get_searcher(name: str, **cfg) -> Searcher:
    return SEARCHERS.create(name, **cfg)


def get_cost_model(name: str, **cfg) -> CostModel:
    return COST_MODELS.create(name, **cfg)


def get_evaluator(name: str, **cfg) -> Evaluator:
    return EVALUATORS.create(name, **cfg)


def get_dataset(name: str, **cfg):
    return DATASETS.create(name, **cfg)


def list_spaces(pattern: str = "*") -> list[str]:
    return SPACES.names(pattern)


def list_searchers(pattern: str = "*") -> list[str]:
    return SEARCHERS.names(pattern)


def list_cost_models(pattern: str = "*") -> list[str]:
    return COST_MODELS.names(pattern)


def list_evaluators(pattern: str = "*") -> list[str]:
    return EVALUATORS.names(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


def search(space: Space | str, searcher: Searcher | str, cost_model: CostModel | str = "macs",
           evaluator: Evaluator | str = "train", data=None, budget: float | None = None, seed: int = 0,
           storage=None, study_name: str = "search", progress: bool = False, run_dir=None) -> SearchResult:
    """Run ``searcher`` on ``space`` from Python; names are looked up in the registries.

    ``data`` is a data set (or its registered name) for evaluators that train;
    ``storage`` an Optuna storage URL for the ledger (in memory when None). With
    ``run_dir`` the search keeps a run folder as ``python -m nas.run`` does: its ledger
    (``ledger.db``, unless ``storage`` is given: a second call with the same folder resumes),
    the searcher's checkpoints, the best trained model (``model.pt``: ``nas.load(run_dir)``
    rebuilds it), ``arch.json`` and ``result.json``.
    """
    from nas import checks
    from nas.registry import plugin_module

    space = get_space(space) if isinstance(space, str) else space
    searcher = get_searcher(searcher) if isinstance(searcher, str) else searcher
    if isinstance(cost_model, str):
        # a measured LUT is per space: "lut" prices this space (this machine's table, built if missing)
        fields = config_fields(COST_MODELS.get(cost_model))
        given = {"space": space, "progress": progress}
        cost_model = get_cost_model(cost_model, **{k: v for k, v in given.items() if k in fields})
    if isinstance(evaluator, str):  # an evaluator's seed follows the search's, as on the command line
        evaluator = get_evaluator(evaluator, **({"seed": seed} if "seed" in config_fields(EVALUATORS.get(evaluator))
                                                else {}))
    if isinstance(data, str):
        data = get_dataset(data)
    evaluator.bind(space, data)
    keeper = None
    if run_dir is not None:
        from nas.export import BestModelKeeper, write_result

        run_dir = checks.folder_path("run_dir", str(run_dir))
        checks.make_folder("run_dir", run_dir)
        storage = storage if storage is not None else f"sqlite:///{(run_dir / 'ledger.db').resolve()}"
        keeper = BestModelKeeper(run_dir, space)
    ledger = Ledger(space, study_name, storage, evaluator.metric, cost_model.name or "cost")
    problem = SearchProblem(space, cost_model, evaluator, ledger, budget, seed, show_progress=progress,
                            on_evaluation=keeper,
                            work_dir=run_dir)
    result = run_search(searcher, problem)
    if run_dir is not None:
        import yaml

        module = plugin_module(space)
        # what nas.load reads back: the plug-in module defining the space, if any
        (run_dir / "config.yaml").write_text(yaml.safe_dump(
            {"run_name": study_name, "space": {"name": space.name, **space.config()}, "seed": seed,
             "storage": storage, "plugins": [module] if module else []}, sort_keys=False))
        write_result(run_dir, {"space": space.name, "cost_model": cost_model.name, "cost_unit": cost_model.unit,
                               "quality_metric": evaluator.metric, "seed": seed, "storage": storage,
                               "weights": keeper.weights_of(result.best), **result.to_dict()}, result, space)
    return result


# Register the library's own plug-ins (analytic cost models, the LUT, the table and nnmass evaluators);
# the training kit's evaluator and data sets are entry points (pyproject.toml).
from nas import costs as _costs  # noqa: E402,F401
from nas import lut as _lut  # noqa: E402,F401
from nas import nnmass as _nnmass  # noqa: E402,F401

__all__ = [
    "Arch", "Decision", "OpSpec", "Space", "CostModel", "Evaluator", "Score", "Searcher", "SearchProblem",
    "SearchResult", "Evaluation", "Ledger", "BenchmarkTable", "NASError", "register_space", "register_searcher",
    "register_cost_model", "register_evaluator", "register_dataset", "register_op_kind", "get_space",
    "get_searcher", "get_cost_model", "get_evaluator", "get_dataset", "list_spaces", "list_searchers",
    "list_cost_models", "list_evaluators", "list_datasets", "search", "run_search", "load", "export_onnx",
    "SavedModel",
]
