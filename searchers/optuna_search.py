"""Optuna samplers as searchers: TPE for the best quality under a cost budget, NSGA-II for
the quality/cost Pareto front.

The sampler works on a private in-memory study whose history is replayed from the run's
ledger on resume: each proposal uses a sampler seeded by ``(seed, proposal index)``, and
evaluations already in the ledger come back without work, so a resumed search makes
exactly the proposals of an uninterrupted one. Proposals over the budget are priced but
not trained; the sampler learns of them as constraint violations.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution

from nas import Arch, NASError, Searcher, register_searcher

SAMPLERS = ("tpe", "nsga2", "random")


@register_searcher("optuna")
class OptunaSearch(Searcher):
    def __init__(self, n_evals: int = 20, sampler: str = "tpe", n_startup_trials: int = 10,
                 population_size: int = 20, max_proposals_per_eval: int = 50):
        if sampler not in SAMPLERS:
            raise NASError(f"unknown optuna sampler {sampler!r}; accepted: {', '.join(map(repr, SAMPLERS))}")
        if n_evals < 1:
            raise NASError(f"searcher.n_evals must be >= 1, got {n_evals}")
        if population_size < 2:
            raise NASError(f"searcher.population_size must be >= 2, got {population_size}")
        self.n_evals = n_evals
        self.sampler = sampler
        self.n_startup_trials = n_startup_trials
        self.population_size = population_size
        self.max_proposals_per_eval = max_proposals_per_eval

    def _make_sampler(self, seed: int):
        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)
        if self.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=self.population_size)
        return optuna.samplers.RandomSampler(seed=seed)

    def search(self, problem):
        space = problem.space
        constrained = problem.budget is not None
        distributions = {d.name: CategoricalDistribution(d.options) for d in space.decisions()}
        # TPE maximises quality alone (the budget is its constraint); NSGA-II trades both.
        directions = ["maximize", "minimize"] if self.sampler == "nsga2" else ["maximize"]
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), directions=directions)
        seeds = np.random.SeedSequence(problem.seed)
        problem.begin(self.n_evals, desc=f"optuna {self.sampler}")
        proposals, over_budget = 0, 0
        limit = self.n_evals * self.max_proposals_per_eval
        while problem.n_evaluated < self.n_evals and proposals < limit:
            seed = int(seeds.spawn(1)[0].generate_state(1)[0])
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
                study.tell(trial, [0.0, cost] if len(directions) == 2 else 0.0)
                continue
            evaluation = problem.evaluate(arch)
            study.tell(trial, [evaluation.quality, evaluation.cost] if len(directions) == 2 else evaluation.quality)
        return problem.result(proposals=proposals, skipped_over_budget=over_budget, sampler=self.sampler)
