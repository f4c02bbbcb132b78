"""Searchers, the search problem they work on, and their result."""

from __future__ import annotations

import abc
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import optuna
from tqdm.auto import tqdm

from nas import world as processes
from nas.arch import Arch
from nas.costs import CostModel, format_cost
from nas.errors import NASError
from nas.evaluators import Evaluator, TrainingRecipe
from nas.ledger import HEARTBEAT_GRACE_SECONDS, Evaluation, Ledger, ProgressLog, beating
from nas.registry import SEARCHERS
from nas.space import Space
from nas.world import World

#: space -> cost model -> (cheapest cost, exact): min_cost is costly (seconds for hant), and
#: the CLI checks the budget before it makes the run folder, then the search again
_MIN_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_budget(space: Space, cost_model: CostModel, budget: float | None) -> None:
    """NASError if no architecture of ``space`` costs at most ``budget`` under ``cost_model``."""
    if budget is None:
        return
    known = _MIN_COSTS.setdefault(space, weakref.WeakKeyDictionary())
    if cost_model not in known:
        cheapest, _, exact = cost_model.min_cost(space)
        known[cost_model] = (cheapest, exact)
    cheapest, exact = known[cost_model]
    if cheapest > budget:
        how = "the cheapest architecture" if exact else "the cheapest of the architectures tried"
        unit = cost_model.unit
        raise NASError(f"budget {format_cost(budget, unit)} ({budget:g}) is infeasible for space "
                       f"{space.name!r}: {how} costs {format_cost(cheapest, unit)} ({cheapest:g})")


def pareto_front(evals: list[Evaluation]) -> list[Evaluation]:
    """Evaluations not dominated in (higher quality, lower cost), sorted by cost."""
    front = []
    best_quality = -math.inf
    for e in sorted(evals, key=lambda e: (e.cost, -e.quality)):
        if e.quality > best_quality:
            front.append(e)
            best_quality = e.quality
    return front


def best_of(evals: list[Evaluation]) -> Evaluation | None:
    """Highest quality among feasible evaluations; ties go to the cheaper, then the earlier."""
    ranked = [(-e.quality, e.cost, i) for i, e in enumerate(evals) if e.feasible]
    return evals[min(ranked)[2]] if ranked else None


@dataclass
class SearchResult:
    best: Evaluation | None
    pareto: list[Evaluation]
    history: list[Evaluation]
    budget: float | None = None
    extras: dict = field(default_factory=dict)

    @property
    def n_evals(self) -> int:
        return len(self.history)

    @classmethod
    def from_evaluations(cls, history: list[Evaluation], budget: float | None = None, **extras) -> "SearchResult":
        return cls(best_of(history), pareto_front(history), list(history), budget, extras)

    def to_dict(self) -> dict:
        return {"best": self.best.to_dict() if self.best else None,
                "pareto": [e.to_dict() for e in self.pareto],
                "n_evals": self.n_evals, "budget": self.budget, **self.extras,
                "history": [e.to_dict() for e in self.history]}

    def to_json(self, **kw) -> str:
        from nas.checks import json_text

        return json_text(self.to_dict(), **kw)


class SearchProblem:
    """What a searcher works on: a space, a cost model, an evaluator, an optional budget on
    the cost, and the ledger that records (and on resume replays) every evaluation.

    Searchers call :meth:`evaluate`; an Arch already in the ledger is returned from it
    without evaluating again, so a deterministic searcher re-run with the same seed
    resumes exactly where a killed run stopped.
    """

    def __init__(self, space: Space, cost_model: CostModel, evaluator: Evaluator, ledger: Ledger | None = None,
                 budget: float | None = None, seed: int = 0, *, show_progress: bool = True,
                 on_evaluation: Callable | None = None, work_dir=None, world: World | None = None,
                 data=None, recipe: TrainingRecipe | None = None):
        from nas import checks

        self.space = space
        self.cost_model = cost_model
        self.evaluator = evaluator
        self.ledger = ledger if ledger is not None else Ledger(space, "search")
        self.budget = checks.number("budget", budget, above=0, allow_none=True)
        self.seed = checks.number("seed", seed, integer=True, minimum=0, maximum=2**32 - 1)
        #: the run's data set and how it trains a network (the evaluator's, unless given):
        #: what searchers that train weights use, through :meth:`training`
        self.data = data if data is not None else evaluator.data
        self.recipe = recipe if recipe is not None else evaluator.recipe
        self.show_progress = show_progress
        self.on_evaluation = on_evaluation
        #: where searchers keep checkpoints (the run directory from the CLI; None: no checkpoints)
        self.work_dir = work_dir
        #: the processes training this search together (torchrun; see nas.training.distributed)
        self.world = world if world is not None else processes.world()
        self.history: list[Evaluation] = []
        self._by_key: dict[str, Evaluation] = {}
        self.n_reused = 0
        self._bar = None
        #: how often a worker waiting for candidates other workers hold looks at the ledger
        self.poll_seconds = 0.5
        #: the searcher's own progress, plotted by the Optuna dashboard (see ``log_progress``)
        self.progress_log = ProgressLog(self.ledger)

    def training(self, who: str, why: str) -> tuple:
        """``(data, recipe)`` for ``who`` (e.g. "searcher 'tunas'"), which trains weights
        (``why``: "trains a supernet"); a NASError when the run has no data set to train on."""
        if self.data is None or self.recipe is None:
            raise NASError(f"{who} {why} and needs a data set; evaluator {self.evaluator.name!r} has none "
                           "(use evaluator=train)")
        return self.data, self.recipe

    def checkpoint_folder(self, name: str):
        """The folder ``work_dir/name`` where a searcher keeps its checkpoints, or None when
        the search keeps none (no ``work_dir``)."""
        from pathlib import Path

        return Path(self.work_dir) / name if self.work_dir is not None else None

    def with_budget(self, budget: float) -> "SearchProblem":
        """This problem under ``budget`` (a searcher's own default, :meth:`Searcher.default_budget`);
        only before anything was evaluated, since feasibility is judged when evaluating."""
        if self.history:
            raise RuntimeError("with_budget after evaluations: their feasibility was judged by the old budget")
        import copy

        problem = copy.copy(self)
        problem.budget = float(budget)
        return problem

    def log_progress(self, step: int, values: dict[str, float]) -> None:
        """Record named scalars of the searcher's state at ``step`` (e.g. controller
        probabilities, alphas, losses), beside the ledger as ``<run>:progress``. Under
        torchrun rank 0 alone logs: the others' ledgers are in memory and read by no one."""
        if self.world.is_main:
            self.progress_log.log(step, values)

    # ---------------------------------------------------------------- budget
    def cost(self, arch: Arch) -> float:
        return self.cost_model.arch_cost(self.space, arch)

    def within_budget(self, cost: float) -> bool:
        return self.budget is None or cost <= self.budget

    def check_budget(self) -> None:
        """NASError if no architecture of the space fits the budget."""
        check_budget(self.space, self.cost_model, self.budget)

    # ---------------------------------------------------------------- evaluation
    def begin(self, total: int | None, desc: str = "search") -> None:
        """Start the progress bar for ``total`` evaluations."""
        if self.show_progress:
            self._bar = tqdm(total=total, desc=desc, unit="arch", dynamic_ncols=True)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def n_evaluated(self) -> int:
        return len(self.history)

    def seen(self, arch: Arch) -> Evaluation | None:
        """The evaluation of ``arch`` in this search so far, if any."""
        return self._by_key.get(self.space.canonicalize(arch).key())

    def evaluate(self, arch, scorer: Callable | None = None) -> Evaluation:
        """Cost and quality of ``arch``, recorded in the ledger (or read back from it).

        ``scorer(space, arch) -> Score`` replaces the evaluator for this arch (a searcher
        whose candidates inherit trained weights, as HANT's do, scores them itself)."""
        return self.evaluate_many([arch], scorer)[0]

    def evaluate_many(self, archs, scorer: Callable | None = None) -> list[Evaluation]:
        """Evaluations of candidates that do not depend on each other's results, in their
        order. Workers that share the ledger's storage (same run name and storage URL)
        split the list: each claims the candidates nobody is evaluating, skips those a
        live worker holds, then waits for them, and takes over the trial of a worker that
        died (see :meth:`Ledger.claim`); no arch is evaluated twice, no result is lost."""
        archs = [self.space.validate(a) for a in archs]
        workers = self.ledger.live_workers() if self.shared and len(archs) > 1 else []
        if len(workers) > 1:
            # With n live workers, the k-th takes every n-th candidate from its k-th first,
            # then the rest; alone, the list's own order.
            n, k = len(workers), workers.index(self.ledger.worker) if self.ledger.worker in workers else 0
            order = [a for i, a in enumerate(archs) if i % n == k] + [a for i, a in enumerate(archs) if i % n != k]
        else:
            order = archs
        done: dict[str, Evaluation] = {}
        waiting = []
        for arch in order:
            key = arch.key()
            if key in done:
                continue
            evaluation = self._by_key.get(key) or self._claim_and_evaluate(arch, scorer)
            if evaluation is None:
                waiting.append(arch)
            else:
                done[key] = evaluation
        while waiting:  # held by other workers: poll until they finish or die
            time.sleep(self.poll_seconds)
            self.ledger.refresh()
            still = []
            for arch in waiting:
                evaluation = self._claim_and_evaluate(arch, scorer)
                if evaluation is None:
                    still.append(arch)
                else:
                    done[arch.key()] = evaluation
            waiting = still
        return [done[a.key()] for a in archs]

    def read_back_shared_search(self) -> None:
        """Make this worker's history the whole shared search (for searchers whose workers
        propose in parallel): wait until the other workers start no more evaluations (a
        worker may still be between counting the ledger and claiming its last candidate)
        and read theirs back. A worker on another host that died without saying so is
        waited for at most HEARTBEAT_GRACE_SECONDS after the last evaluation arrived."""
        self.ledger.done_searching()
        quiet_since = time.time()
        while True:
            self.ledger.refresh()
            rest = [e.arch for e in self.ledger.evaluations()] + self.ledger.others_evaluating()
            rest = [arch for arch in rest if self.seen(arch) is None]
            if rest:
                self.evaluate_many(rest)  # waits for the ones under way
                quiet_since = time.time()
            elif not self.ledger.still_searching() or time.time() - quiet_since > HEARTBEAT_GRACE_SECONDS:
                return
            else:
                time.sleep(self.poll_seconds)

    @property
    def shared(self) -> bool:
        """Whether other workers may use the ledger's storage (any but one in memory)."""
        return not isinstance(self.ledger.storage, optuna.storages.InMemoryStorage)

    def _claim_and_evaluate(self, arch: Arch, scorer: Callable | None) -> Evaluation | None:
        """Evaluate ``arch`` if this worker gets it; its evaluation if it is in the ledger;
        None while another live worker holds it."""
        status, claim = self.ledger.claim(arch, shared=self.shared)
        if status == "done":
            self.n_reused += 1
            return self._record(claim)
        if status == "busy":
            return None
        trial_id = claim
        ops = self.space.ops(arch)
        cost = self.cost(arch)
        try:
            with beating(self.ledger, trial_id):  # lets workers on other hosts see this one is alive
                score = (scorer or self.evaluator.evaluate)(self.space, arch)
        except Exception as exc:
            self.ledger.fail(trial_id, f"{type(exc).__name__}: {exc}")
            raise
        metrics = {"macs": sum(op.macs() for op in ops), "params": sum(op.num_params() for op in ops),
                   **score.metrics}
        evaluation = Evaluation(arch, float(score.quality), cost, metrics, feasible=self.within_budget(cost))
        if self.on_evaluation is not None:
            # Before the ledger commits, so a kill in between re-evaluates (deterministically).
            self.on_evaluation(evaluation, score.model, self.best())
        self.ledger.finish(trial_id, evaluation)
        return self._record(evaluation)

    def _record(self, evaluation: Evaluation) -> Evaluation:
        self.history.append(evaluation)
        self._by_key[evaluation.arch.key()] = evaluation
        if self._bar is not None:
            best = self.best()
            self._bar.update(1)
            if best is not None:
                self._bar.set_postfix(best=f"{best.quality:.4f}", cost=format_cost(best.cost, self.cost_model.unit),
                                  refresh=False)
        return evaluation

    def best(self) -> Evaluation | None:
        return best_of(self.history)

    def result(self, **extras) -> SearchResult:
        return SearchResult.from_evaluations(self.history, self.budget, **extras)


class Searcher(abc.ABC):
    """Proposes Archs to :meth:`SearchProblem.evaluate` and returns a SearchResult.

    ``requires`` names the space capabilities it needs (see :meth:`Space.require`).
    """

    name: str = ""
    requires: tuple[str, ...] = ()
    #: config groups the CLI selects with this searcher unless the command line names them
    #: (e.g. ``{"evaluator": "nnmass"}``)
    config_defaults: dict[str, str] = {}
    #: whether it runs under torchrun: its training is shared by the processes, and
    #: :meth:`search` returns None on all but rank 0
    distributed: bool = False
    #: whether it prices layers (op_cost), so needs an additive cost model
    needs_layer_costs: bool = False

    def check(self, space: Space) -> None:
        for capability in self.requires:
            space.require(capability, f"searcher {self.name!r}")

    def check_cost_model(self, cost_model: CostModel) -> None:
        """NASError when this searcher prices layers and ``cost_model`` prices only whole
        architectures."""
        if self.needs_layer_costs and not cost_model.additive:
            raise NASError(f"searcher {self.name!r} prices layers, and cost model {cost_model.name!r} prices whole "
                           "architectures only; use a target whose costs add over layers (a LUT, macs, params, ...) "
                           "or a searcher that prices whole architectures (random, optuna, tunas)")

    def default_budget(self, space: Space, cost_model: CostModel) -> float | None:
        """The budget this searcher works to when the run gives none (None: no budget);
        HANT's is a share of its teacher's cost."""
        return None

    @abc.abstractmethod
    def search(self, problem: SearchProblem) -> SearchResult:
        """Run the search; every evaluation goes through ``problem.evaluate``."""


def check_distributed(searcher: Searcher, world: World) -> None:
    """Under torchrun, only searchers that train shared weights run."""
    if world.size > 1 and not searcher.distributed:
        names = ", ".join(sorted(n for n in SEARCHERS.names() if getattr(SEARCHERS.get(n), "distributed", False)))
        raise NASError(f"searcher {searcher.name!r} trains no shared weights, so torchrun has nothing to split; "
                       f"run it as one process (workers share a study through storage=...) or use {names}")


def run_search(searcher: Searcher, problem: SearchProblem) -> SearchResult:
    """Check compatibility and the budget, run the searcher, close the ledger's loose ends."""
    searcher.check(problem.space)
    searcher.check_cost_model(problem.cost_model)
    check_distributed(searcher, problem.world)
    if problem.budget is None:
        budget = searcher.default_budget(problem.space, problem.cost_model)
        problem = problem.with_budget(budget) if budget is not None else problem
    problem.check_budget()
    try:
        result = searcher.search(problem)
    finally:
        problem.end()
    if result is None and not problem.world.is_main:
        return None
    problem.ledger.close_stale()
    problem.progress_log.finish()
    result.extras.setdefault("searcher", searcher.name)
    result.extras.setdefault("reused_from_ledger", problem.n_reused)
    return result
