"""Bayesian optimisation over the feasible set: a searcher that never evaluates a network
over the budget, because it prices every candidate before choosing one.

The cost of an architecture is known before it is trained (a LUT, MACs, a table), so the
searcher draws its candidates from the feasible set only: every feasible architecture of a
small space (``enumerate_up_to``), else ``pool_size`` random samples plus every
single-decision change of the best evaluated networks, each priced and kept only within
the budget. A Gaussian process over the evaluated networks scores them:

- the kernel is a product of a Hamming kernel over the decisions (networks that share
  more choices score alike) and a squared-exponential kernel over the cost relative to the
  budget (without a budget, to the candidates' median cost): networks of similar cost
  perform alike, and the best ones usually sit near the budget, which the GP learns;
- qualities enter as normal scores of their ranks, so a few collapsed networks (a cell of
  zeros scores 10%) do not flatten the rest;
- the kernel's scales and the noise are chosen by marginal likelihood over a fixed grid
  at every proposal; the next network is the candidate with the largest expected
  improvement.

The first ``n_startup`` networks are uniform draws from the feasible set. Every random
choice comes from a seed stream of ``(seed, proposal index)``, so the same seed gives the
same search, and a resumed run (evaluations come back from the ledger) makes the same
proposals as an uninterrupted one. Workers sharing a ledger learn each other's results
before every proposal and skip what others are evaluating, as the optuna searcher's do.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata

from nas import Arch, NASError, Searcher, register_searcher

#: the kernel's grid: decay per fraction of decisions that differ; weight of the squared
#: difference in relative cost (0: cost ignored); noise variance over the unit signal
HAMMING_SCALES = (0.6, 1.2, 2.4, 4.8, 9.6)
COST_WEIGHTS = (0.0, 1.0, 4.0, 16.0)
NOISE_LEVELS = (0.01, 0.1)
#: the grid is searched at every proposal while fewer networks are known, then every tenth
RESELECT_BELOW, RESELECT_EVERY = 40, 10


def normal_scores(values: np.ndarray) -> np.ndarray:
    """Ranks mapped to standard normal quantiles (ties share their mean rank)."""
    return ndtri(rankdata(values) / (len(values) + 1))


class CostAwareGP:
    """A Gaussian process over (decisions, relative cost) fitted to normal scores. Its
    kernel is chosen by marginal likelihood from the grid above, or given (``kernel``: a
    previous fit's, to save the grid's cost between re-selections)."""

    def __init__(self, onehot: np.ndarray, rel_cost: np.ndarray, scores: np.ndarray, n_decisions: int,
                 kernel: tuple[float, float, float] | None = None):
        self.onehot, self.rel_cost, self.n_decisions = onehot, rel_cost, n_decisions
        self.best_score = scores.max()
        differ, cost_gap = self._distances(onehot, rel_cost)
        best = None
        for scale, weight, noise in [kernel] if kernel else itertools.product(HAMMING_SCALES, COST_WEIGHTS,
                                                                               NOISE_LEVELS):
            gram = np.exp(-scale * differ - weight * cost_gap) + noise * np.eye(len(scores))
            factor = cho_factor(gram, lower=True)
            alpha = cho_solve(factor, scores)
            log_likelihood = -0.5 * scores @ alpha - np.log(np.diag(factor[0])).sum()
            if best is None or log_likelihood > best[0]:
                best = (log_likelihood, (scale, weight, noise), factor, alpha)
        _, self.kernel, self.factor, self.alpha = best

    def _distances(self, onehot, rel_cost):
        """Fraction of decisions that differ, squared difference of relative cost."""
        return (1.0 - (onehot @ self.onehot.T) / self.n_decisions,
                (rel_cost[:, None] - self.rel_cost[None, :]) ** 2)

    def expected_improvement(self, onehot: np.ndarray, rel_cost: np.ndarray) -> np.ndarray:
        scale, weight, noise = self.kernel
        differ, cost_gap = self._distances(onehot, rel_cost)
        cross = np.exp(-scale * differ - weight * cost_gap)
        mean = cross @ self.alpha
        var = 1.0 + noise - np.einsum("ij,ji->i", cross, cho_solve(self.factor, cross.T))
        sd = np.sqrt(np.maximum(var, 1e-12))
        u = (mean - self.best_score) / sd
        return (mean - self.best_score) * ndtr(u) + sd * np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)


@register_searcher("bayesopt")
class BayesOptSearch(Searcher):
    """Bayesian optimisation (cost-aware GP, expected improvement) over the feasible set:
    ``n_startup`` uniform feasible draws, then one proposal per evaluation. Candidates: every
    feasible network when the space has at most ``enumerate_up_to`` decision combinations,
    else ``pool_size`` samples plus the single-decision neighbours of the ``neighbours_of``
    best networks so far."""

    def __init__(self, n_evals: int = 20, n_startup: int = 5, pool_size: int = 2000,
                 enumerate_up_to: int = 20000, neighbours_of: int = 5):
        for name, value, least in (("n_evals", n_evals, 1), ("n_startup", n_startup, 1),
                                   ("pool_size", pool_size, 1), ("neighbours_of", neighbours_of, 0),
                                   ("enumerate_up_to", enumerate_up_to, 0)):
            if value < least:
                raise NASError(f"searcher.{name} must be >= {least}, got {value}")
        self.n_evals = n_evals
        self.n_startup = n_startup
        self.pool_size = pool_size
        self.enumerate_up_to = enumerate_up_to
        self.neighbours_of = neighbours_of

    def search(self, problem):
        space = problem.space
        decisions = space.decisions()
        offsets = np.concatenate([[0], np.cumsum([len(d.options) for d in decisions])[:-1]])
        n_columns = sum(len(d.options) for d in decisions)
        costs: dict[str, float] = {}  # arch key -> cost: pricing is the searcher's main work
        archs: dict[str, Arch] = {}
        columns: dict[str, np.ndarray] = {}  # arch key -> its one-hot columns

        def price(arch: Arch) -> float:
            key = arch.key()
            if key not in costs:
                costs[key], archs[key] = problem.cost(arch), arch
                columns[key] = offsets + [d.index(arch[d.name]) for d in decisions]
            return costs[key]

        def encode(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
            """One-hot decisions and costs of ``keys``."""
            onehot = np.zeros((len(keys), n_columns))
            onehot[np.arange(len(keys))[:, None], np.array([columns[k] for k in keys])] = 1.0
            return onehot, np.array([costs[k] for k in keys])

        enumerated = space.size() <= self.enumerate_up_to
        if enumerated:
            feasible = self._feasible_keys(problem, (self._valid(space, a) for a in space.enumerate()), price)
        streams: dict[int, np.random.SeedSequence] = {}  # worker index -> its proposals' seeds
        problem.begin(self.n_evals, desc="bayesopt")
        proposals, kernel, together = 0, None, False
        while True:
            # Alone (a resumed run included), the search replays its own proposals, whose
            # evaluations come back from the ledger; with other live workers, it learns
            # everything the ledger holds and proposes from its own seed stream.
            workers = problem.ledger.live_workers() if problem.shared else []
            together = together or len(workers) > 1
            known = self._known(problem, len(workers) > 1)
            for evaluation in known.values():
                price(evaluation.arch)  # other workers' networks, to encode them
            busy = {a.key() for a in problem.ledger.others_evaluating()} if len(workers) > 1 else set()
            if len(known) + len(busy) >= self.n_evals:
                break
            worker = workers.index(problem.ledger.worker) if problem.ledger.worker in workers else 0
            if worker not in streams:
                streams[worker] = np.random.SeedSequence(problem.seed if worker == 0 else [problem.seed, worker])
            rng = np.random.default_rng(streams[worker].spawn(1)[0])
            if not enumerated:
                feasible = self._sampled_pool(problem, space, rng, known, price)
            pool = [k for k in feasible if k not in known and k not in busy]
            if not pool:
                break  # every feasible network is evaluated (or sampling found none)
            proposals += 1
            if len(known) < self.n_startup:
                choice = pool[int(rng.integers(len(pool)))]
            else:
                keys = list(known)
                reference = problem.budget if problem.budget is not None else float(np.median([costs[k] for k in pool]))
                onehot, cost = encode(keys)
                # The kernel's grid costs most of a proposal: re-selected at every
                # evaluation early on, then every RESELECT_EVERY (it changes little).
                reselect = len(keys) < RESELECT_BELOW or len(keys) % RESELECT_EVERY == 0
                gp = CostAwareGP(onehot, cost / reference, normal_scores(np.array([known[k].quality for k in keys])),
                                 len(decisions), kernel=None if reselect else kernel)
                kernel = gp.kernel
                onehot, cost = encode(pool)
                choice = pool[int(np.argmax(gp.expected_improvement(onehot, cost / reference)))]
            problem.evaluate(archs[choice])
        if together:
            problem.read_back_shared_search()
        return problem.result(proposals=proposals, candidates="all feasible" if enumerated else "sampled")

    @staticmethod
    def _valid(space, arch):
        try:
            return space.validate(arch)
        except NASError:  # a combination the space's constraints refuse
            return None

    @staticmethod
    def _feasible_keys(problem, candidates, price) -> list[str]:
        keys, seen = [], set()
        for arch in candidates:
            if arch is None or arch.key() in seen:
                continue
            seen.add(arch.key())
            if problem.within_budget(price(arch)):
                keys.append(arch.key())
        return keys

    @staticmethod
    def _known(problem, together: bool) -> dict:
        """Every feasible evaluation this search knows, by arch key (with other workers, theirs too)."""
        if together:
            problem.ledger.refresh()
            evaluations = problem.ledger.evaluations()
        else:
            evaluations = problem.history
        return {e.arch.key(): e for e in evaluations if e.feasible}

    def _sampled_pool(self, problem, space, rng, known, price) -> list[str]:
        candidates = [space.sample(rng) for _ in range(self.pool_size)]
        best = sorted(known.values(), key=lambda e: e.quality, reverse=True)[: self.neighbours_of]
        for evaluation in best:
            arch = evaluation.arch
            candidates += [self._valid(space, arch.replace(**{d.name: option}))
                           for d in space.decisions() for option in d.options if option != arch[d.name]]
        return self._feasible_keys(problem, candidates, price)
