"""HANT's operation selection as an integer linear program (Eq. 3 of the HANT paper).

One op per layer, the sum of the chosen ops' costs (latency from a LUT, MACs, ...) within
a budget, the sum of their scores (the estimated change of the teacher's loss) minimal;
and K diverse solutions, the k-th sharing at most ``overlap`` layers' ops with every
earlier one. The model is written with PuLP and solved by the CBC solver PuLP ships, or
by HiGHS when ``highspy`` is installed.

Solving the full model K times is slow: each overlap constraint makes the next solve
harder (with CBC, 100 solutions of a 46 x 197 instance take far beyond 15 minutes). The
problem is a multiple-choice knapsack with side constraints, and its LP relaxation is
tight, so each solution is found by *reduced-cost fixing* instead:

1. Solve the LP relaxation (HiGHS through ``scipy.optimize.linprog``): bound ``LP*`` and
   the reduced cost ``r`` of every (layer, op) variable. For any integer solution that
   picks variable v, ``objective >= LP* + r_v`` (LP duality).
2. Solve the ILP with PuLP over the variables with ``r_v <= tau`` only (a few per layer)
   until the solver's branch and bound proves its solution ``z`` within ``gap`` of the
   restricted optimum. If ``z <= LP* + tau``, no solution using an excluded variable is
   better than ``z``, so ``z`` is within ``gap`` of the optimum of the full ILP. Otherwise
   ``tau = z - LP*`` and one more restricted solve is proven the same way.

Every solution carries its proof (:class:`Selection`: the bound and the gap). The bound
of a restricted solve is HiGHS's dual bound; CBC does not report one, so with CBC it is
the one its stopping rule guarantees.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import pulp
import scipy.optimize
import scipy.sparse

from nas import NASError

SOLVERS = ("auto", "cbc", "highs")


def pulp_solver(name: str = "auto", gap: float = 1e-3):
    """The PuLP solver ``name`` names: ``cbc`` (shipped with PuLP), ``highs`` (needs
    ``highspy``), ``auto`` (HiGHS when installed, else CBC). Each solve runs, without a
    time limit, until its branch and bound proves the solution within ``gap`` (relative)
    of the optimum."""
    if name not in SOLVERS:
        raise NASError(f"unknown ILP solver {name!r}; accepted: {', '.join(map(repr, SOLVERS))}")
    highs = pulp.HiGHS(msg=False, gapRel=gap)
    if name == "highs" or (name == "auto" and highs.available()):
        if not highs.available():
            raise NASError("ILP solver 'highs' needs the highspy package (pip install highspy); or use solver=cbc")
        return highs
    with warnings.catch_warnings():
        # PuLP 3.3 deprecates the CBC it bundles in favour of a separate package; it is
        # still the solver every PuLP install has.
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False, gapRel=gap)


@dataclass
class Selection:
    """One solution: the op index chosen per layer, its objective and cost, and the proof
    of its quality: ``bound`` is a proven lower bound on the optimum of its ILP (from the
    LP relaxation, the reduced-cost threshold and the solver's branch and bound), so the
    solution is within ``gap`` (relative) of the optimum."""

    choice: list[int]
    objective: float
    cost: float
    bound: float
    lp_bound: float
    threshold: float
    variables: int
    seconds: float

    @property
    def gap(self) -> float:
        return (self.objective - self.bound) / max(abs(self.objective), 1e-12)


class Instance:
    """Scores and costs of every op of every layer (layers may have pools of different
    sizes), flattened into one vector of variables."""

    def __init__(self, scores, costs):
        if len(scores) != len(costs) or not len(scores):
            raise NASError(f"the ILP needs scores and costs for the same layers (got {len(scores)} and {len(costs)})")
        self.scores = [np.asarray(s, dtype=float) for s in scores]
        self.costs = [np.asarray(c, dtype=float) for c in costs]
        for i, (s, c) in enumerate(zip(self.scores, self.costs)):
            if s.ndim != 1 or s.shape != c.shape or not len(s):
                raise NASError(f"layer {i}: scores and costs must be equal-length non-empty vectors")
            if not (np.isfinite(s).all() and np.isfinite(c).all()):
                raise NASError(f"layer {i}: scores and costs must be finite numbers")
        self.sizes = [len(s) for s in self.scores]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.a = np.concatenate(self.scores)
        self.b = np.concatenate(self.costs)
        self.layer_of = np.repeat(np.arange(len(self.sizes)), self.sizes)

    @property
    def n_layers(self) -> int:
        return len(self.sizes)

    def min_cost(self) -> float:
        return float(sum(c.min() for c in self.costs))

    def variables(self, choice) -> np.ndarray:
        return self.offsets[:-1] + np.asarray(choice)


def _undominated(inst: Instance, previous: list[np.ndarray]) -> np.ndarray:
    """The variables an optimal solution may need. In a layer, every op that no earlier
    solution chose there counts the same in every overlap constraint, so among those only
    the Pareto front of (score, cost) can be optimal; ops earlier solutions chose are kept."""
    allowed = np.zeros(len(inst.a), dtype=bool)
    used = np.zeros(len(inst.a), dtype=bool)
    for p in previous:
        used[p] = True
    for i in range(inst.n_layers):
        lo, hi = inst.offsets[i], inst.offsets[i + 1]
        free = np.flatnonzero(~used[lo:hi]) + lo
        best = np.inf
        for v in free[np.lexsort((inst.a[free], inst.b[free]))]:  # by cost, then score
            if inst.a[v] < best:
                allowed[v] = True
                best = inst.a[v]
    return allowed | used


def _lp(inst: Instance, budget: float, previous: list[np.ndarray], overlap: int, allowed: np.ndarray):
    """LP relaxation over the ``allowed`` variables: (bound, reduced costs), or None when
    infeasible."""
    n, n_layers = len(inst.a), inst.n_layers
    a_eq = scipy.sparse.csr_matrix((np.ones(n), (inst.layer_of, np.arange(n))), shape=(n_layers, n))
    rows = [inst.b[None, :]]
    for p in previous:
        row = np.zeros((1, n))
        row[0, p] = 1.0
        rows.append(row)
    a_ub = scipy.sparse.csr_matrix(np.vstack(rows))
    b_ub = np.array([budget] + [overlap] * len(previous), dtype=float)
    bounds = np.column_stack([np.zeros(n), np.where(allowed, np.inf, 0.0)])
    res = scipy.optimize.linprog(inst.a, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(n_layers), bounds=bounds,
                                 method="highs")
    if res.status == 2:
        return None
    if res.status != 0:
        raise NASError(f"the ILP's LP relaxation failed: {res.message}")
    return float(res.fun), np.maximum(res.lower.marginals, 0.0)


def _restricted_ilp(inst: Instance, keep: np.ndarray, budget: float, previous: list[np.ndarray], overlap: int,
                    solver, gap: float) -> tuple[float, np.ndarray, float] | None:
    """Eq. 3 over the variables ``keep`` only, with PuLP: (objective, chosen variables,
    proven lower bound on this restricted ILP's optimum), or None when infeasible."""
    prob = pulp.LpProblem("hant_selection", pulp.LpMinimize)
    x = {int(v): prob.add_variable(f"x{int(v)}", cat="Binary") for v in keep}
    prob += pulp.lpSum(inst.a[v] * x[v] for v in x)
    prob += pulp.lpSum(inst.b[v] * x[v] for v in x) <= budget, "budget"
    by_layer: dict[int, list[int]] = {}
    for v in x:
        by_layer.setdefault(int(inst.layer_of[v]), []).append(v)
    for layer in range(inst.n_layers):
        prob += pulp.lpSum(x[v] for v in by_layer.get(layer, [])) == 1, f"one_op_{layer}"
    for k, p in enumerate(previous):
        shared = [x[int(v)] for v in p if int(v) in x]
        if len(shared) > overlap:
            prob += pulp.lpSum(shared) <= overlap, f"overlap_{k}"
    status = pulp.LpStatus[prob.solve(solver)]
    if status == "Infeasible":
        return None
    if status != "Optimal":
        raise NASError(f"the ILP solver ended with status {status!r}")
    chosen = np.array(sorted(v for v in x if x[v].value() > 0.5))
    objective = float(inst.a[chosen].sum())
    if isinstance(solver, pulp.HiGHS):
        bound = float(prob.solverModel.getInfo().mip_dual_bound)
    else:  # CBC stops once its own bound is within gapRel of its best solution
        bound = objective - gap * abs(objective)
    return objective, chosen, min(bound, objective)


def select_ops(scores, costs, budget: float, k: int = 1, overlap: int | None = None, solver: str = "auto",
               gap: float = 1e-3, on_solution=None) -> list[Selection]:
    """Up to ``k`` solutions of Eq. 3, in order, each proven within ``gap`` (relative) of
    the optimum of its ILP (the budget, one op per layer, at most ``overlap`` layers in
    common with every earlier solution; default ``floor(0.7 * layers)``). Fewer are
    returned when no further solution exists.

    ``scores[i][j]`` and ``costs[i][j]`` belong to op j of layer i. NASError, naming the
    smallest achievable cost, when no selection fits the budget.
    """
    inst = Instance(scores, costs)
    if k < 1:
        raise NASError(f"the ILP needs k >= 1 solutions, got {k}")
    if not 0 <= gap < 1:
        raise NASError(f"the ILP's relative gap must be in [0, 1), got {gap}")
    overlap = int(0.7 * inst.n_layers) if overlap is None else int(overlap)
    if not 0 <= overlap <= inst.n_layers:
        raise NASError(f"the overlap limit must be between 0 and the number of layers ({inst.n_layers}), got {overlap}")
    if budget < inst.min_cost() - 1e-12:
        raise NASError(f"budget {budget:g} is infeasible: the smallest achievable cost is {inst.min_cost():g} "
                       "(the cheapest op of every layer)")
    backend = pulp_solver(solver, gap)
    previous: list[np.ndarray] = []
    out: list[Selection] = []
    for _ in range(k):
        start = time.perf_counter()
        allowed = _undominated(inst, previous)
        lp = _lp(inst, budget, previous, overlap, allowed)
        if lp is None:
            break  # no selection differs enough from the earlier ones within the budget
        lp_bound, reduced = lp
        # Start with the LP's support and each layer's few next-best ops.
        reduced = np.where(allowed, reduced, np.inf)
        per_layer = [np.sort(reduced[inst.offsets[i]:inst.offsets[i + 1]]) for i in range(inst.n_layers)]
        tau = float(np.median([r[min(2, int(np.isfinite(r).sum()) - 1)] for r in per_layer]))
        while True:
            keep = np.flatnonzero(reduced <= tau + 1e-9)
            found = _restricted_ilp(inst, keep, budget, previous, overlap, backend, gap)
            if found is None:  # infeasible with these variables: admit more
                if len(keep) == int(allowed.sum()):
                    break
                tau = 2 * tau + 1e-6
                continue
            if found[0] <= lp_bound + tau + 1e-9 * max(1.0, abs(found[0])):
                break  # every solution using an excluded variable costs at least lp_bound + tau
            tau = found[0] - lp_bound
        if found is None:
            break
        objective, chosen, restricted_bound = found
        # The optimum either uses only kept variables (>= restricted_bound) or not (>= lp_bound + tau).
        bound = max(lp_bound, min(restricted_bound, lp_bound + tau))
        choice = (chosen - inst.offsets[inst.layer_of[chosen]]).tolist()
        previous.append(chosen)
        selection = Selection(choice, objective, float(inst.b[chosen].sum()), bound, lp_bound, tau, len(keep),
                              time.perf_counter() - start)
        out.append(selection)
        if on_solution is not None:
            on_solution(selection)
    return out
