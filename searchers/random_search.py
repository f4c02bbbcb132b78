"""Random search: uniform samples of the space, skipping repeats and (under a budget)
archs whose cost is over it, which are priced but never trained."""

from __future__ import annotations

import numpy as np

from nas import NASError, Searcher, register_searcher


@register_searcher("random")
class RandomSearch(Searcher):
    """Uniform samples of the space, each priced first: repeats and archs over the budget are
    skipped, and the search gives up after ``n_evals * max_samples_per_eval`` samples."""

    def __init__(self, n_evals: int = 10, max_samples_per_eval: int = 1000):
        if n_evals < 1:
            raise NASError(f"searcher.n_evals must be >= 1, got {n_evals}")
        if max_samples_per_eval < 1:
            raise NASError(f"searcher.max_samples_per_eval must be >= 1, got {max_samples_per_eval}")
        self.n_evals = n_evals
        self.max_samples_per_eval = max_samples_per_eval

    def search(self, problem):
        # The candidates are drawn first and then evaluated as one list, so workers sharing
        # the ledger split them (SearchProblem.evaluate_many); the draws do not depend on
        # results, so this is the same search as evaluating each as it is drawn.
        rng = np.random.default_rng(problem.seed)
        space = problem.space
        samples, over_budget = 0, 0
        limit = self.n_evals * self.max_samples_per_eval
        candidates, keys = [], set()
        while len(candidates) < self.n_evals and samples < limit:
            arch = space.sample(rng)
            samples += 1
            key = space.canonicalize(arch).key()
            if key in keys:
                continue
            if problem.budget is not None and not problem.within_budget(problem.cost(arch)):
                over_budget += 1
                continue
            keys.add(key)
            candidates.append(arch)
        problem.begin(len(candidates), desc="random search")
        problem.evaluate_many(candidates)
        return problem.result(samples=samples, skipped_over_budget=over_budget)
