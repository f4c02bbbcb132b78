import numpy as np
import pytest

import nas
from nas import Evaluation, NASError
from nas.search import best_of, pareto_front


def nb201_search(searcher, budget=None, seed=0, cost="macs", storage=None, study="s"):
    return nas.search("nb201", searcher, cost, "table", budget=budget, seed=seed, storage=storage, study_name=study)


def brute_force_front(evals):
    return sorted((e for e in evals if not any(
        (o.quality >= e.quality and o.cost <= e.cost) and (o.quality > e.quality or o.cost < e.cost) for o in evals)),
        key=lambda e: e.cost)


def test_pareto_front_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        evals = [Evaluation(nas.Arch(i=i), float(rng.integers(0, 6)), float(rng.integers(0, 6))) for i in range(30)]
        front = pareto_front(evals)
        expected = brute_force_front(evals)
        assert [(e.cost, e.quality) for e in front] == sorted({(e.cost, e.quality) for e in expected})


def test_best_respects_feasibility_and_ties():
    a = Evaluation(nas.Arch(i=1), 0.9, 5.0, feasible=False)
    b = Evaluation(nas.Arch(i=2), 0.8, 3.0)
    c = Evaluation(nas.Arch(i=3), 0.8, 2.0)
    assert best_of([a, b, c]) is c
    assert best_of([a]) is None


@pytest.mark.parametrize("searcher", [
    ("random", {}), ("optuna", {"sampler": "tpe"}), ("optuna", {"sampler": "nsga2", "population_size": 10}),
    ("optuna", {"sampler": "random"})])
def test_searchers_are_seeded_and_count_unique_evaluations(searcher):
    name, cfg = searcher
    runs = [nb201_search(nas.get_searcher(name, n_evals=25, **cfg), seed=s) for s in (3, 3, 4)]
    keys = [[e.arch.key() for e in r.history] for r in runs]
    assert keys[0] == keys[1] and keys[0] != keys[2]
    assert runs[0].n_evals == 25 and len(set(keys[0])) == 25
    table = nas.get_space("nb201").benchmark_table()
    space = nas.get_space("nb201")
    for e in runs[0].history:
        assert e.quality == table.lookup(space.table_key(e.arch))


@pytest.mark.parametrize("name,cfg", [("random", {}), ("optuna", {"sampler": "tpe"})])
def test_budget_is_respected_without_training_over_budget_archs(name, cfg):
    budget = 60e6
    result = nb201_search(nas.get_searcher(name, n_evals=30, **cfg), budget=budget, seed=1)
    assert result.n_evals == 30
    assert all(e.cost <= budget and e.feasible for e in result.history)
    assert result.best.cost <= budget
    assert result.extras["skipped_over_budget"] > 0


def test_tpe_beats_random_on_average():
    # A weak but real check that TPE uses what it learns: over 6 seeds at 60 evaluations
    regret = {}
    table = nas.get_space("nb201").benchmark_table()
    top = table.best()[1]
    for name, cfg in (("random", {}), ("optuna", {"sampler": "tpe"})):
        regret[name] = np.mean([top - nb201_search(nas.get_searcher(name, n_evals=60, **cfg), seed=s).best.quality
                                for s in range(6)])
    assert regret["optuna"] < regret["random"]


def test_nsga2_front_spreads_over_cost():
    result = nb201_search(nas.get_searcher("optuna", n_evals=40, sampler="nsga2", population_size=10), seed=0)
    assert len(result.pareto) >= 3
    costs = [e.cost for e in result.pareto]
    assert costs == sorted(costs) and max(costs) > 2 * min(costs)


def test_infeasible_budget_is_refused_before_search():
    with pytest.raises(NASError, match="infeasible.*cheapest architecture costs 7.783M MACs \\(7.78304e\\+06\\)"):
        nb201_search(nas.get_searcher("random", n_evals=3), budget=1000)


def test_searcher_config_errors():
    with pytest.raises(NASError, match="unknown optuna sampler 'cmaes'"):
        nas.get_searcher("optuna", sampler="cmaes")
    with pytest.raises(NASError, match="n_evals must be >= 1"):
        nas.get_searcher("random", n_evals=0)


def test_search_stops_when_few_archs_fit_the_budget():
    # Only a handful of archs fit: the search gives up after its sample limit instead of
    # looping forever, and evaluates only archs that fit.
    space = nas.get_space("nb201")
    cm = nas.get_cost_model("macs")
    cheapest = space.min_cost(cm)[0]
    fitting = sum(cm.cost(space.ops(a)) <= cheapest for a in space.enumerate())
    result = nb201_search(nas.get_searcher("random", n_evals=fitting + 5, max_samples_per_eval=20), budget=cheapest)
    assert result.n_evals <= fitting and result.extras["samples"] == (fitting + 5) * 20
    assert all(e.cost <= cheapest for e in result.history)
