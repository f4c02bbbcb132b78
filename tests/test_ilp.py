"""HANT's ILP (Eq. 3): optimal against brute force, K diverse solutions, infeasibility."""

import itertools

import numpy as np
import pytest

from nas import NASError
from searchers.ilp import pulp_solver, select_ops


def instance(seed, layers=4, ops=5):
    rng = np.random.default_rng(seed)
    scores = rng.gamma(2.0, 0.05, (layers, ops))
    scores[:, 0] = 0.0  # the teacher's own op: no change of the loss, and the slowest
    costs = rng.uniform(0.2, 1.0, (layers, ops))
    costs[:, 0] = 1.0
    return scores, costs


def brute_force(scores, costs, budget, previous, overlap):
    best = None
    for choice in itertools.product(*(range(len(s)) for s in scores)):
        if sum(c[j] for c, j in zip(costs, choice)) > budget + 1e-12:
            continue
        if any(sum(a == b for a, b in zip(choice, p)) > overlap for p in previous):
            continue
        value = sum(s[j] for s, j in zip(scores, choice))
        if best is None or value < best:
            best = value
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("solver", ["cbc", "auto"])
def test_each_solution_is_the_brute_force_optimum_of_its_ilp(seed, solver):
    scores, costs = instance(seed)
    budget, overlap = 0.6 * len(scores), 2
    solutions = select_ops(scores, costs, budget, k=5, overlap=overlap, solver=solver, gap=0.0)
    assert solutions
    previous = []
    for sol in solutions:
        assert sol.objective == pytest.approx(brute_force(scores, costs, budget, previous, overlap), abs=1e-9)
        assert sol.bound <= sol.objective + 1e-9 and sol.gap <= 1e-9
        previous.append(sol.choice)
    # and when none is left, brute force agrees that none exists
    if len(solutions) < 5:
        assert brute_force(scores, costs, budget, previous, overlap) is None


def test_k_solutions_respect_budget_and_overlap_with_proven_gaps():
    scores, costs = instance(7, layers=12, ops=30)
    budget, overlap = 0.6 * 12, 8
    solutions = select_ops(scores, costs, budget, k=10, overlap=overlap)
    assert len(solutions) == 10
    for k, sol in enumerate(solutions):
        assert len(sol.choice) == 12 and all(0 <= j < 30 for j in sol.choice)
        assert sol.cost == pytest.approx(sum(costs[i, j] for i, j in enumerate(sol.choice))) and sol.cost <= budget + 1e-9
        assert sol.objective == pytest.approx(sum(scores[i, j] for i, j in enumerate(sol.choice)))
        assert sol.lp_bound <= sol.bound + 1e-12 and sol.gap <= 1e-3 + 1e-9
        for earlier in solutions[:k]:
            assert sum(a == b for a, b in zip(sol.choice, earlier.choice)) <= overlap
    # diversity costs objective: later solutions are no better than the first
    assert all(s.objective >= solutions[0].objective - 1e-9 for s in solutions)


def test_layers_with_pools_of_different_sizes():
    scores = [[0.0, 0.3, 0.1], [0.0, 0.2], [0.0, 0.5, 0.4, 0.05]]
    costs = [[1.0, 0.2, 0.5], [1.0, 0.3], [1.0, 0.1, 0.2, 0.6]]
    (sol,) = select_ops(scores, costs, budget=1.5, k=1, gap=0.0)
    assert sol.objective == pytest.approx(brute_force(scores, costs, 1.5, [], 3))


def test_infeasible_budget_names_the_smallest_cost_and_bad_input_is_refused():
    scores, costs = instance(0)
    smallest = costs.min(axis=1).sum()
    with pytest.raises(NASError, match=f"smallest achievable cost is {smallest:g}"):
        select_ops(scores, costs, budget=smallest * 0.99)
    with pytest.raises(NASError, match="unknown ILP solver 'gurobi'"):
        pulp_solver("gurobi")
    with pytest.raises(NASError, match="overlap limit"):
        select_ops(scores, costs, budget=10, overlap=9)
    with pytest.raises(NASError, match="same layers"):
        select_ops(scores, costs[:2], budget=10)
    # a layer with a single op is shared by every solution: with overlap 0 only one exists
    (only,) = select_ops([[0.0], [0.0, 1.0]], [[1.0], [1.0, 0.5]], budget=2.0, k=3, overlap=0)
    assert only.choice == [0, 0]


def test_a_highs_solve_error_falls_back_to_cbc(monkeypatch):
    import pulp

    if not pulp.HiGHS(msg=False).available():
        pytest.skip("highspy is not installed")
    real_solve = pulp.LpProblem.solve
    failed = []

    def solve(self, solver=None, **kw):
        if isinstance(solver, pulp.HiGHS) and not failed:  # HiGHS's occasional "solve error"
            failed.append(True)
            return pulp.LpStatusNotSolved
        return real_solve(self, solver, **kw)

    monkeypatch.setattr(pulp.LpProblem, "solve", solve)
    scores, costs = instance(3)
    budget = 0.6 * costs[:, 0].sum()
    (sol,) = select_ops(scores, costs, budget, k=1, solver="highs", gap=0.0)
    assert failed and sol.objective == pytest.approx(brute_force(scores, costs, budget, [], 4))
