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

    import searchers.ilp as ilp

    if not pulp.HiGHS(msg=False).available():
        pytest.skip("highspy is not installed")
    real = ilp._restricted_highs
    failed = []

    def restricted_highs(*args, **kw):
        if not failed:  # HiGHS's occasional "solve error"
            failed.append(True)
            raise RuntimeError("Solve error")
        return real(*args, **kw)

    monkeypatch.setattr(ilp, "_restricted_highs", restricted_highs)
    scores, costs = instance(3)
    budget = 0.6 * costs[:, 0].sum()
    (sol,) = select_ops(scores, costs, budget, k=1, solver="highs", gap=0.0)
    assert failed and sol.objective == pytest.approx(brute_force(scores, costs, budget, [], 4))


@pytest.mark.parametrize("solver", ["cbc", "auto"])
def test_time_limited_solutions_are_feasible_with_valid_bounds(solver):
    """With a time limit every solve is anytime: a feasible, diverse selection within the
    budget, whose bound (its own, or carried from an earlier ILP) never exceeds the brute-force
    optimum of its ILP; given enough time, the optimum itself."""
    scores, costs = instance(11, layers=5, ops=6)
    budget, overlap = 0.6 * 5, 3
    solutions = select_ops(scores, costs, budget, k=6, overlap=overlap, solver=solver, gap=0.0, time_limit=5.0)
    assert len(solutions) == 6
    previous = []
    for sol in solutions:
        optimum = brute_force(scores, costs, budget, previous, overlap)
        assert sol.cost <= budget + 1e-9
        assert all(sum(a == b for a, b in zip(sol.choice, p)) <= overlap for p in previous)
        assert sol.bound <= optimum + 1e-9 <= sol.objective + 2e-9
        assert sol.objective == pytest.approx(optimum, abs=1e-9) and not sol.timed_out
        previous.append(sol.choice)
    bounds = [s.bound for s in solutions]
    assert bounds == sorted(bounds)  # carried: never lower than an earlier ILP's


def test_time_allowances_share_k_time_limits_and_let_early_solves_finish_their_proofs():
    """k solves that each take their whole allowance take k x time_limit together; the first
    may take up to PROOF_CAP x time_limit, a later one never gets less than RESERVE x
    time_limit, and time an early solve leaves goes to the next."""
    from searchers.ilp import PROOF_CAP, RESERVE, time_allowance

    for k, limit in ((100, 0.25), (10, 2.0), (1, 1.0), (3, 0.5)):
        spent, allowances = 0.0, []
        for index in range(k):
            allowances.append(time_allowance(limit, k, index, spent))
            spent += allowances[-1]
        assert spent == pytest.approx(k * limit)
        assert min(allowances) >= RESERVE * limit - 1e-12 and max(allowances) <= PROOF_CAP * limit + 1e-12
    assert time_allowance(0.25, 100, 0, 0.0) == pytest.approx(PROOF_CAP * 0.25)  # 7.5 s of the 25
    assert time_allowance(1.0, 1, 0, 0.0) == pytest.approx(1.0)  # alone: its own time limit
    # a solve that took 0.1 s of its allowance leaves the rest to the next one
    assert time_allowance(0.5, 3, 1, 0.1) == pytest.approx(1.5 - 0.1 - RESERVE * 0.5)
    assert time_allowance(0.5, 3, 1, 1.0) == pytest.approx(RESERVE * 0.5)  # overran: the floor


def test_local_search_finds_feasible_diverse_selections():
    """The primal heuristic alone: feasible (budget and overlap) and, on a small instance,
    close to the brute-force optimum."""
    import time

    from searchers.ilp import Instance, _local_search

    scores, costs = instance(5, layers=6, ops=5)
    inst = Instance(scores, costs)
    budget, overlap = 0.6 * 6, 3
    previous, values = [], []
    for _ in range(4):
        starts = [inst.offsets[:-1] + np.argmin(scores, axis=1)] + previous[-1:]
        found = _local_search(inst, budget, previous, overlap, np.arange(len(inst.a)), starts,
                              time.perf_counter() + 5, iterations=300)
        assert found is not None and inst.b[found].sum() <= budget + 1e-9
        assert all(np.isin(found, p).sum() <= overlap for p in previous)
        optimum = brute_force(scores, costs, budget, [p - inst.offsets[:-1] for p in previous], overlap)
        values.append((inst.a[found].sum(), optimum))
        previous.append(np.sort(found))
    assert all(v >= o - 1e-12 for v, o in values)
    assert sum(v for v, _ in values) <= 1.1 * sum(o for _, o in values)


def test_iterated_descent_keeps_feasible_and_nears_the_optimum_of_small_instances():
    """The descent after the local search, from random feasible selections: never worse,
    always within the budget and the overlap limits, and on 6 layers x 5 ops (3 instances,
    4 diverse solutions each) at the brute-force optimum in most ILPs and within 5% in all."""
    import time

    from searchers.ilp import Instance, _iterated_descent

    rng = np.random.default_rng(0)
    ratios = []
    for seed in (5, 6, 7):
        scores, costs = instance(seed, layers=6, ops=5)
        inst = Instance(scores, costs)
        budget, overlap = 0.6 * 6, 3
        previous = []
        for k in range(4):
            feasible = [c for c in itertools.product(range(5), repeat=6)
                        if costs[np.arange(6), c].sum() <= budget
                        and all(np.isin(inst.variables(c), p).sum() <= overlap for p in previous)]
            start = inst.variables(feasible[rng.integers(len(feasible))])
            found = _iterated_descent(inst, budget, previous, overlap, np.arange(len(inst.a)), start,
                                      time.perf_counter() + 0.3, np.random.default_rng(k))
            assert inst.a[found].sum() <= inst.a[start].sum() + 1e-12
            assert inst.b[found].sum() <= budget + 1e-9 and len(set(inst.layer_of[found])) == 6
            assert all(np.isin(found, p).sum() <= overlap for p in previous)
            optimum = brute_force(scores, costs, budget, [p - inst.offsets[:-1] for p in previous], overlap)
            ratios.append((inst.a[start].sum() / optimum, inst.a[found].sum() / optimum))
            previous.append(found)
    assert min(start for start, _ in ratios) > 1.1  # every start leaves something to find
    assert max(found for _, found in ratios) < 1.05
    assert sum(found < 1 + 1e-9 for _, found in ratios) >= 10


def test_the_warm_lp_equals_a_fresh_lp_solution_after_solution():
    """The LP kept in one HiGHS model (rows added, bounds changed, basis reused) gives each
    solution's LP the same bound and reduced costs as solving it afresh."""
    pytest.importorskip("highspy")
    from searchers.ilp import Instance, _lp, _undominated, _WarmLP

    scores, costs = instance(7, layers=8, ops=12)
    inst = Instance(scores, costs)
    budget, overlap = 0.55 * 8, 5
    warm = _WarmLP(inst, budget)
    rng = np.random.default_rng(0)
    previous = []
    for _ in range(6):
        allowed = _undominated(inst, previous)
        fresh, kept = _lp(inst, budget, previous, overlap, allowed), warm.solve(previous, overlap, allowed)
        assert kept[0] == pytest.approx(fresh[0], abs=1e-9)
        assert np.allclose(np.where(allowed, kept[1], 0), np.where(allowed, fresh[1], 0), atol=1e-9)
        previous.append(inst.offsets[:-1] + rng.integers(0, 12, 8))  # any earlier selections will do
