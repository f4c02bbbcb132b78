"""Optuna samplers as searchers: TPE for the best quality under a cost budget, NSGA-II for
the quality/cost Pareto front.

The sampler works on a private in-memory study whose history is replayed from the run's
ledger on resume: each proposal uses a sampler seeded by ``(seed, proposal index)``, and
evaluations already in the ledger come back without work, so a resumed search makes
exactly the proposals of an uninterrupted one. Proposals over the budget are priced but
not trained; the sampler learns of them as constraint violations.

Workers sharing a ledger (same ``run_name`` and ``storage``) propose in parallel: while
other workers are alive, each learns the others' finished evaluations from the ledger
before every proposal, the k-th registered worker proposes from its own seed stream
``(seed, k)`` (the first keeps the single worker's), and no worker starts another
evaluation once the ledger holds ``n_evals`` evaluations, finished or under way; each
worker's result is the whole shared search. Like any asynchronous parallel optimisation, what such a
search proposes then depends on the order in which results arrive; alone, a worker's
search is exactly the single-process one.
"""

from __future__ import annotations

import sys

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from nas import Arch, NASError, Searcher, register_searcher

SAMPLERS = ("tpe", "nsga2", "random")


def population_for(n_evals: int) -> int:
    """NSGA-II's generation size for ``n_evals`` evaluations: a tenth of them, at least 4
    (smaller generations hardly recombine) and at most 20 (Optuna's default)."""
    return max(4, min(20, n_evals // 10))


@register_searcher("optuna")
class OptunaSearch(Searcher):
    """An Optuna sampler over the space's decisions: ``tpe`` (best quality under the budget),
    ``nsga2`` (the quality/cost Pareto front; ``population_size`` null: sized to ``n_evals``, a
    tenth of it within [4, 20]: ten generations from 40 to 200 evaluations) or
    ``random``; ``max_proposals_per_eval`` bounds the proposals priced per evaluation."""

    def __init__(self, n_evals: int = 20, sampler: str = "tpe", n_startup_trials: int = 10,
                 population_size: int | None = None, max_proposals_per_eval: int = 50):
        if sampler not in SAMPLERS:
            raise NASError(f"unknown optuna sampler {sampler!r}; accepted: {', '.join(map(repr, SAMPLERS))}")
        if n_evals < 1:
            raise NASError(f"searcher.n_evals must be >= 1, got {n_evals}")
        if population_size is not None and population_size < 2:
            raise NASError(f"searcher.population_size must be >= 2, got {population_size}")
        self.n_evals = n_evals
        self.sampler = sampler
        self.n_startup_trials = n_startup_trials
        self.population_size = population_size if population_size is not None else population_for(n_evals)
        self.max_proposals_per_eval = max_proposals_per_eval

    def _make_sampler(self, seed: int):
        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)
        if self.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=self.population_size)
        return optuna.samplers.RandomSampler(seed=seed)

    def _warn_of_a_large_population(self) -> None:
        if self.sampler == "nsga2" and self.population_size > self.n_evals:
            print(f"warning: searcher.population_size={self.population_size} is larger than searcher.n_evals="
                  f"{self.n_evals}: NSGA-II never gets past its first, random generation; lower the population "
                  "or raise n_evals", file=sys.stderr)

    def _learn_from_others(self, problem, told: set, tell) -> bool:
        """Tell the sampler the shared ledger's results it has not seen; whether the search is
        done (others' evaluations under way count: they will be in the ledger)."""
        problem.ledger.refresh()
        for evaluation in problem.ledger.evaluations():
            if evaluation.arch.key() not in told:
                told.add(evaluation.arch.key())
                tell(None, evaluation.quality, evaluation.cost, dict(evaluation.arch))
        return len(problem.ledger.evaluations()) + len(problem.ledger.others_evaluating()) >= self.n_evals

    def search(self, problem):
        space = problem.space
        constrained = problem.budget is not None
        distributions = {d.name: CategoricalDistribution(d.options) for d in space.decisions()}
        # TPE maximises quality alone (the budget is its constraint); NSGA-II trades both.
        directions = ["maximize", "minimize"] if self.sampler == "nsga2" else ["maximize"]
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), directions=directions)
        streams: dict[int, np.random.SeedSequence] = {}  # worker index -> its proposals' seeds
        told: set[str] = set()  # archs whose results the sampler has
        together = False  # whether other workers took part
        self._warn_of_a_large_population()
        problem.begin(self.n_evals, desc=f"optuna {self.sampler}")
        proposals, over_budget = 0, 0
        limit = self.n_evals * self.max_proposals_per_eval

        def tell(trial_or_none, quality, cost, params=None):
            values = [quality, cost] if len(directions) == 2 else quality
            if trial_or_none is not None:
                study.tell(trial_or_none, values)
                return
            # another worker's result: the sampler learns it as a finished trial
            attrs = {"constraints:cost_over_budget": cost - problem.budget} if constrained else {}
            study.add_trial(create_trial(params=params, distributions=distributions,
                                         values=values if len(directions) == 2 else [values], system_attrs=attrs))

        while proposals < limit:
            workers = problem.ledger.live_workers() if problem.shared else []
            if len(workers) > 1:
                together = True
                if self._learn_from_others(problem, told, tell):
                    break
            elif problem.n_evaluated >= self.n_evals:
                break
            k = workers.index(problem.ledger.worker) if problem.ledger.worker in workers else 0
            if k not in streams:
                streams[k] = np.random.SeedSequence(problem.seed if k == 0 else [problem.seed, k])
            seed = int(streams[k].spawn(1)[0].generate_state(1)[0])
            study.sampler = self._make_sampler(seed)
            trial = study.ask(distributions)
            proposals += 1
            arch = space.validate(Arch(trial.params))
            cost = problem.cost(arch)
            if constrained:  # TPE and NSGA-II read trial constraints (<= 0 is feasible)
                trial.set_constraint("cost_over_budget", cost - problem.budget)
            if not problem.within_budget(cost):
                # Priced, not trained: the sampler sees a violated constraint, and its
                # quality (no model exists) stays out of the ledger and the result.
                over_budget += 1
                tell(trial, 0.0, cost)
                continue
            evaluation = problem.evaluate(arch)
            told.add(arch.key())
            tell(trial, evaluation.quality, evaluation.cost)
        if together:
            problem.read_back_shared_search()
        return problem.result(proposals=proposals, skipped_over_budget=over_budget, sampler=self.sampler)
