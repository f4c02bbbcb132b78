"""The cost-aware Bayesian optimisation searcher (``bayesopt``) and NSGA-II's population
sized to the evaluations."""

import numpy as np
import pytest

import nas
from nas import NASError
from searchers.bayesopt import CostAwareGP, normal_scores
from searchers.optuna_search import population_for


def nb201_search(searcher, budget=None, seed=0, storage=None, study="s"):
    return nas.search("nb201", searcher, "macs", "table", budget=budget, seed=seed, storage=storage, study_name=study)


@pytest.fixture(scope="module")
def nb201_macs():
    """Every NB201 cell's MACs and accuracy, and the 25th percentile of the MACs."""
    space = nas.get_space("nb201")
    table = space.benchmark_table()
    cost_model = nas.get_cost_model("macs")
    cells = list(space.enumerate())
    costs = np.array([cost_model.arch_cost(space, a) for a in cells])
    accuracy = np.array([table.lookup(space.table_key(a)) for a in cells])
    return costs, accuracy, float(np.percentile(costs, 25))


@pytest.mark.parametrize("settings", [{}, {"enumerate_up_to": 0, "pool_size": 200}],
                         ids=["all feasible cells", "sampled candidates"])
def test_every_proposal_is_within_the_budget(nb201_macs, settings):
    # The budget is known before evaluation, so no proposal is wasted: one per evaluation.
    _, _, budget = nb201_macs
    result = nb201_search(nas.get_searcher("bayesopt", n_evals=25, n_startup=5, **settings), budget=budget, seed=2)
    assert result.n_evals == 25 and len({e.arch.key() for e in result.history}) == 25
    assert all(e.feasible and e.cost <= budget for e in result.history)
    assert result.extras["proposals"] == 25


def test_same_seed_same_search_and_a_resumed_search_equals_an_uninterrupted_one(tmp_path, nb201_macs):
    _, _, budget = nb201_macs
    searcher = {"n_evals": 20, "n_startup": 5, "enumerate_up_to": 0, "pool_size": 300}
    runs = [nb201_search(nas.get_searcher("bayesopt", **searcher), budget=budget, seed=s) for s in (1, 1, 2)]
    keys = [[e.arch.key() for e in r.history] for r in runs]
    assert keys[0] == keys[1] and keys[0] != keys[2]
    # stopped after 12 evaluations (the ledger keeps them), then run again to 20
    storage = f"sqlite:///{tmp_path / 'ledger.db'}"
    nb201_search(nas.get_searcher("bayesopt", **{**searcher, "n_evals": 12}), budget=budget, seed=1,
                 storage=storage, study="r")
    resumed = nb201_search(nas.get_searcher("bayesopt", **searcher), budget=budget, seed=1, storage=storage, study="r")
    assert [e.arch.key() for e in resumed.history] == keys[0]
    assert resumed.extras["reused_from_ledger"] == 12


def test_it_finds_better_cells_under_a_budget_than_random_search(nb201_macs):
    # A weak but real check that the model is used: mean regret over 3 seeds at 40 evaluations.
    costs, accuracy, budget = nb201_macs
    top = accuracy[costs <= budget].max()
    regret = {}
    for name, settings in (("random", {}), ("bayesopt", {"n_startup": 10})):
        regret[name] = np.mean([top - nb201_search(nas.get_searcher(name, n_evals=40, **settings), budget=budget,
                                                   seed=s).best.quality for s in range(3)])
    assert regret["bayesopt"] < 0.5 * regret["random"]


def test_normal_scores_keep_the_order_and_share_ties():
    scores = normal_scores(np.array([0.1, 0.9, 0.5, 0.9, 0.3]))
    assert scores[1] == scores[3] and scores[0] < scores[4] < scores[2] < scores[1]
    assert abs(normal_scores(np.arange(5.0)).sum()) < 1e-12  # symmetric quantiles without ties


def test_the_gp_learns_that_cost_predicts_quality():
    # Quality rising with cost alone: the marginal likelihood picks a kernel that uses the
    # cost, and expected improvement then prefers the costlier of two unseen networks.
    rng = np.random.default_rng(0)
    onehot = np.eye(3)[rng.integers(3, size=(30, 4))].reshape(30, -1)
    cost = rng.uniform(0.2, 1.0, 30)
    gp = CostAwareGP(onehot, cost, normal_scores(cost), n_decisions=4)
    assert gp.kernel[1] > 0
    gains = gp.expected_improvement(np.repeat(onehot[:1], 2, 0), np.array([0.3, 1.0]))
    assert gains[1] > gains[0]


def test_settings_are_checked():
    with pytest.raises(NASError, match="searcher.n_startup must be >= 1, got 0"):
        nas.get_searcher("bayesopt", n_startup=0)


def test_nsga2_population_is_sized_to_the_evaluations():
    assert [population_for(n) for n in (10, 40, 100, 200, 1000)] == [4, 4, 10, 20, 20]
    assert nas.get_searcher("optuna", sampler="nsga2", n_evals=60).population_size == 6
    assert nas.get_searcher("optuna", sampler="nsga2", n_evals=60, population_size=12).population_size == 12
