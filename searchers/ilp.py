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
the one its stopping rule guarantees. The bound of an earlier solution's ILP also holds
for every later one (each adds one overlap constraint), so it is carried forward.

Proving 0.1% gets slow as overlap constraints accumulate. With a time limit per solution,
each solve is anytime: a local search (numpy) finds a feasible diverse selection first, an
iterated descent over each layer's few best ops by reduced cost improves it (changes of one
or two layers that keep every constraint, restarts after random changes), and the
restricted ILP, warm-started from it (HiGHS is called directly for that: PuLP's HiGHS
interface takes no start; CBC through PuLP takes one), improves it until proven or out of
time; the selection keeps the gap proven by then. With ``highspy`` installed, the LP
relaxation stays one model from solution to solution (:class:`_WarmLP`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pulp
import torch

from nas import NASError, Score, Searcher, register_searcher
from nas.costs import format_cost
from nas.lut import describe_latency, latency_report

SOLVERS = ("auto", "cbc", "highs")
#: share of a time-limited solve given to the local search (a feasible start)
LOCAL_SEARCH_SHARE = 0.15
#: ops per layer (the best by reduced cost) the local search may choose
LOCAL_SEARCH_OPS = 8
#: share of a time-limited solve after which the iterated descent hands over to the branch and bound
DESCENT_SHARE = 0.65
#: ops per layer the iterated descent may choose: near the optimum almost every layer takes
#: one of its three or four best by reduced cost (measured at solution 50 of the benchmark)
DESCENT_OPS = 4
#: random feasible changes per restart of the iterated descent
DESCENT_KICK = 3
#: time-limited solves share k x time_limit: each may go on to its proof beyond its own
#: time_limit, up to PROOF_CAP x time_limit, while every later solve keeps RESERVE x time_limit.
#: Why: on the benchmark's random instance the first nine ILPs (few overlap rows) are proven
#: within 0.1% in 0.2-3.6 s each (the tenth took HiGHS 5.4 s), where 0.25 s leaves up to 1%;
#: the late ones are not proven in any affordable time, and 0.17 s instead of 0.25 s changed
#: their gaps within noise.
PROOF_CAP, RESERVE = 30.0, 0.6


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
    of its quality: ``bound`` is a proven lower bound on the optimum of its ILP (the best
    of its LP relaxation, the reduced-cost threshold with the solver's branch and bound, and
    the bound carried from the earlier solutions: each ILP's feasible set lies inside the
    previous one's), so the solution is within ``gap`` (relative) of the optimum."""

    choice: list[int]
    objective: float
    cost: float
    bound: float
    lp_bound: float
    threshold: float
    variables: int
    seconds: float
    #: the solve stopped at its time limit (its gap is what was proven by then)
    timed_out: bool = False

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
    # imported here: scipy.optimize takes a third of a second, and every command loads this plug-in
    import scipy.optimize
    import scipy.sparse

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


class _WarmLP:
    """The same LP relaxation as :func:`_lp`, kept in one HiGHS model (highspy) across
    the solutions: each solution adds its overlap row and changes the allowed variables'
    bounds, and the dual simplex goes on from the previous basis (a few milliseconds against
    a fresh solve's tens at 100 rows)."""

    def __init__(self, inst: Instance, budget: float):
        import highspy

        self.highspy = highspy
        n = len(inst.a)
        h = self.h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.addVars(n, np.zeros(n), np.zeros(n))
        h.changeColsCost(n, np.arange(n, dtype=np.int32), inst.a)
        rows = [np.flatnonzero(inst.layer_of == i) for i in range(inst.n_layers)] + [np.arange(n)]
        lower = np.array([1.0] * inst.n_layers + [-highspy.kHighsInf])
        upper = np.array([1.0] * inst.n_layers + [budget])
        h.addRows(len(rows), lower, upper, 2 * n, np.cumsum([0] + [len(r) for r in rows[:-1]]).astype(np.int32),
                  np.concatenate(rows).astype(np.int32), np.concatenate([np.ones(n), inst.b]))
        self.allowed = np.zeros(n, dtype=bool)
        self.rows = 0  # overlap rows added

    def solve(self, previous: list[np.ndarray], overlap: int, allowed: np.ndarray):
        """(bound, reduced costs), or None when infeasible."""
        h, highspy = self.h, self.highspy
        for p in previous[self.rows:]:
            h.addRow(-highspy.kHighsInf, float(overlap), len(p), np.asarray(p, dtype=np.int32), np.ones(len(p)))
        self.rows = len(previous)
        changed = np.flatnonzero(allowed != self.allowed).astype(np.int32)
        if len(changed):
            h.changeColsBounds(len(changed), changed, np.zeros(len(changed)),
                               np.where(allowed[changed], highspy.kHighsInf, 0.0))
            self.allowed = allowed.copy()
        h.run()
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kInfeasible:
            return None
        if status != highspy.HighsModelStatus.kOptimal:
            raise NASError(f"the ILP's LP relaxation failed: {h.modelStatusToString(status)}")
        return float(h.getInfo().objective_function_value), np.maximum(np.array(h.getSolution().col_dual), 0.0)


@dataclass
class _Moves:
    """The variables a primal search may choose (each replaces its layer's choice) and what
    it needs of each: layer, score, cost, and whether it is each earlier solution's op there."""

    variables: np.ndarray
    layer: np.ndarray
    a: np.ndarray
    b: np.ndarray
    shares: np.ndarray  # moves x earlier solutions: 1 where the move's op is that solution's op there
    position: dict

    @classmethod
    def of(cls, inst: Instance, previous: list[np.ndarray], candidates: np.ndarray, starts: list[np.ndarray]):
        variables = np.union1d(candidates, np.concatenate([np.asarray(x) for x in starts]))
        layer = inst.layer_of[variables]
        earlier = np.array(previous, dtype=np.int64).reshape(len(previous), inst.n_layers)  # solutions x layers
        shares = (earlier[:, layer] == variables[None, :]).T.astype(np.int32)
        return cls(variables, layer, inst.a[variables], inst.b[variables], shares,
                   {int(v): j for j, v in enumerate(variables)})


def _local_search(inst: Instance, budget: float, previous: list[np.ndarray], overlap: int, candidates: np.ndarray,
                  starts: list[np.ndarray], deadline: float, iterations: int = 150) -> np.ndarray | None:
    """A good feasible selection fast (the primal side of a time-limited solve), or None.

    From each start (chosen variables, one per layer), a best-improvement search over
    single-layer changes among ``candidates``, on the objective plus penalties for going
    over the budget and over ``overlap`` with earlier solutions (penalties grow at every
    local optimum, so the search leaves infeasible regions), and, once feasible, over pairs
    of changes that keep the budget (one layer takes a costlier, better op, another a
    cheaper one). A layer just changed is left alone for a few steps. Returns the best
    feasible selection seen."""
    m = _Moves.of(inst, previous, candidates, starts)
    moves, layer, a, b, shares, position = m.variables, m.layer, m.a, m.b, m.shares, m.position
    best_value, best = np.inf, None
    for start in starts:
        current = np.array([position[int(v)] for v in start])  # the move in force per layer
        overlaps = shares[current].sum(0)
        weight_budget, weight_overlap = 1.0, 0.01
        resting = np.zeros(inst.n_layers, dtype=np.int64)
        for step in range(iterations):
            if time.perf_counter() > deadline:
                break
            spent, value = b[current].sum(), a[current].sum()
            over_budget = max(spent - budget, 0.0)
            over_overlap = np.maximum(overlaps - overlap, 0).sum()
            feasible = over_budget <= 1e-12 and over_overlap == 0
            if feasible and value < best_value - 1e-15:
                best_value, best = value, moves[current].copy()
            d_overlap = shares - shares[current][layer]  # moves x solutions
            penalty = (weight_budget * (np.maximum(spent + b - b[current][layer] - budget, 0.0) - over_budget)
                       + weight_overlap * (np.maximum(overlaps[None, :] + d_overlap - overlap, 0).sum(1) - over_overlap))
            score = a - a[current][layer] + penalty
            score[current] = np.inf
            score[resting[layer] > step] = np.inf
            j = int(np.argmin(score))
            if score[j] >= -1e-15:
                pair = _budget_keeping_pair(a, b, layer, shares, current, overlaps, overlap, budget) if feasible else None
                if pair is not None:
                    for m in pair:
                        overlaps = overlaps - shares[current[layer[m]]] + shares[m]
                        current[layer[m]] = m
                    continue
                weight_budget, weight_overlap = 1.5 * weight_budget, 1.5 * weight_overlap
                if not np.isfinite(score[j]):
                    break
            overlaps = overlaps - shares[current[layer[j]]] + shares[j]
            current[layer[j]] = j
            resting[layer[j]] = step + 3
    return best


def _iterated_descent(inst: Instance, budget: float, previous: list[np.ndarray], overlap: int,
                      candidates: np.ndarray, start: np.ndarray, deadline: float, rng: np.random.Generator,
                      kick: int = DESCENT_KICK) -> np.ndarray:
    """A better feasible selection from the feasible ``start`` (chosen variables): steepest
    descent over the exact objective among ``candidates``, each step the best change of one
    layer, or else of two layers together, that keeps the budget and every overlap limit
    (two changes can trade a costlier op for a cheaper one, or leave an earlier solution's op
    in one layer to take another's in a second); at each local optimum a restart from the best
    selection so far after ``kick`` random feasible changes, until ``deadline``. Returns the
    best selection seen (``start`` at worst)."""
    m = _Moves.of(inst, previous, candidates, [start])
    moves, layer, a, b, shares, position = m.variables, m.layer, m.a, m.b, m.shares, m.position

    def changes(current):
        """Per move: objective, cost and overlap changes if it replaced its layer's move;
        the budget's and the overlap rows' slack."""
        return (a - a[current][layer], b - b[current][layer], shares - shares[current][layer],
                budget - b[current].sum() + 1e-12, overlap - shares[current].sum(0))

    def descend(current):
        while True:
            d_a, d_b, d_shares, budget_slack, overlap_slack = changes(current)
            fits = (d_b <= budget_slack) & (d_shares <= overlap_slack).all(1)
            single = fits & (d_a < -1e-15)
            if single.any():
                j = np.flatnonzero(single)[np.argmin(d_a[single])]
                current[layer[j]] = j
                continue
            gaining = np.flatnonzero(d_a < -1e-15)
            if not len(gaining):
                return current
            partners = np.flatnonzero(d_a < -d_a[gaining].min())  # must not lose the whole gain
            gain = d_a[gaining][:, None] + d_a[partners][None, :]
            good = ((gain < -1e-15) & (layer[gaining][:, None] != layer[partners][None, :])
                    & (d_b[gaining][:, None] + d_b[partners][None, :] <= budget_slack))
            u, p = np.nonzero(good)
            if not len(u):
                return current
            keeps = ((d_shares[gaining[u]] + d_shares[partners[p]]) <= overlap_slack).all(1)
            if not keeps.any():
                return current
            best_pair = np.argmin(np.where(keeps, gain[u, p], np.inf))
            for j in (gaining[u[best_pair]], partners[p[best_pair]]):
                current[layer[j]] = j

    best = descend(np.array([position[int(v)] for v in start]))
    while time.perf_counter() < deadline:
        current = best.copy()
        for _ in range(kick):
            _, d_b, d_shares, budget_slack, overlap_slack = changes(current)
            fits = (d_b <= budget_slack) & (d_shares <= overlap_slack).all(1)
            fits[current] = False
            if fits.any():
                j = rng.choice(np.flatnonzero(fits))
                current[layer[j]] = j
        current = descend(current)
        if a[current].sum() < a[best].sum() - 1e-15:
            best = current
    return np.sort(moves[best])


def _budget_keeping_pair(a, b, layer, shares, current, overlaps, overlap, budget, top: int = 60):
    """Two single-layer changes that lower the objective together within the budget and
    the overlap limits (the best such pair among the ``top`` best changes each way), or None."""
    d_a, d_b = a - a[current][layer], b - b[current][layer]
    other = np.ones(len(a), dtype=bool)
    other[current] = False
    better = np.flatnonzero(other & (d_a < -1e-15))
    cheaper = np.flatnonzero(other & (d_b < 0))
    if not len(better) or not len(cheaper):
        return None
    better = better[np.argsort(d_a[better])[:top]]
    cheaper = cheaper[np.argsort(d_a[cheaper] / -d_b[cheaper])[:top]]
    gain = d_a[better][:, None] + d_a[cheaper][None, :]
    fits = b[current].sum() + d_b[better][:, None] + d_b[cheaper][None, :] <= budget + 1e-12
    good = (gain < -1e-15) & fits & (layer[better][:, None] != layer[cheaper][None, :])
    for flat in np.argsort(np.where(good, gain, np.inf), axis=None)[:200]:
        u, c = np.unravel_index(flat, gain.shape)
        if not good[u, c]:
            break
        up, down = better[u], cheaper[c]
        after = (overlaps - shares[current[layer[up]]] + shares[up] - shares[current[layer[down]]] + shares[down])
        if (after <= overlap).all():
            return up, down
    return None


def _restricted_highs(inst: Instance, keep: np.ndarray, budget: float, previous: list[np.ndarray], overlap: int,
                      gap: float, time_limit: float | None, start: np.ndarray | None):
    """Eq. 3 over the variables ``keep`` with HiGHS called directly (PuLP's HiGHS interface
    takes no starting solution): (objective, chosen variables, proven lower bound, stopped by
    the time limit), or None when infeasible or when nothing was found in time. Raises
    ``RuntimeError`` on a HiGHS solve error."""
    import highspy

    n = len(keep)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("mip_rel_gap", float(gap))
    if time_limit is not None:
        h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
    columns = np.arange(n, dtype=np.int32)
    h.addVars(n, np.zeros(n), np.ones(n))
    h.changeColsCost(n, columns, inst.a[keep])
    h.changeColsIntegrality(n, columns, np.full(n, highspy.HighsVarType.kInteger))
    layer = inst.layer_of[keep]
    rows = [(1.0, 1.0, np.flatnonzero(layer == i), None) for i in range(inst.n_layers)]
    rows.append((-highspy.kHighsInf, budget, columns, inst.b[keep]))
    for p in previous:
        shared = np.flatnonzero(np.isin(keep, p))
        if len(shared) > overlap:
            rows.append((-highspy.kHighsInf, float(overlap), shared, None))
    starts = np.cumsum([0] + [len(r[2]) for r in rows[:-1]]).astype(np.int32)
    h.addRows(len(rows), np.array([r[0] for r in rows], float), np.array([r[1] for r in rows], float),
              int(sum(len(r[2]) for r in rows)), starts, np.concatenate([r[2] for r in rows]).astype(np.int32),
              np.concatenate([np.ones(len(r[2])) if r[3] is None else r[3] for r in rows]))
    if start is not None and np.isin(start, keep).all():
        warm = highspy.HighsSolution()
        warm.col_value = np.isin(keep, start).astype(float).tolist()
        warm.value_valid = True
        h.setSolution(warm)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return None
    if status not in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kTimeLimit):
        raise RuntimeError(h.modelStatusToString(status))
    if h.getInfo().primal_solution_status != 2:  # nothing feasible within the time limit
        return None
    chosen = np.sort(keep[np.array(h.getSolution().col_value) > 0.5])
    objective = float(inst.a[chosen].sum())
    bound = float(h.getInfo().mip_dual_bound)
    return objective, chosen, min(bound, objective), status == highspy.HighsModelStatus.kTimeLimit


def _restricted_ilp(inst: Instance, keep: np.ndarray, budget: float, previous: list[np.ndarray], overlap: int,
                    solver, gap: float, time_limit: float | None = None, start: np.ndarray | None = None):
    """Eq. 3 over the variables ``keep`` only: (objective, chosen variables, proven lower
    bound on this restricted ILP's optimum, stopped by the time limit), or None when
    infeasible (or when nothing was found within ``time_limit`` seconds). HiGHS is called
    directly; CBC through PuLP (``start``, a feasible selection, is its warm start)."""
    if isinstance(solver, pulp.HiGHS):
        try:
            return _restricted_highs(inst, keep, budget, previous, overlap, gap, time_limit, start)
        except RuntimeError:
            # HiGHS 1.x occasionally ends a small model in "solve error"; CBC then decides it.
            solver = pulp_solver("cbc", gap)
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
    warm = start is not None and all(int(v) in x for v in start)
    if warm:
        for v in start:
            x[int(v)].setInitialValue(1)
    if time_limit is not None or warm:
        solver = copy.copy(solver)
        solver.timeLimit = None if time_limit is None else max(float(time_limit), 1e-2)
        solver.optionsDict = dict(getattr(solver, "optionsDict", {}), warmStart=warm)
    status = pulp.LpStatus[prob.solve(solver)]
    if status == "Infeasible":
        return None
    if status != "Optimal":
        if time_limit is not None and status == "Not Solved":
            return None  # nothing found in time
        raise NASError(f"the ILP solver ended with status {status!r}")
    chosen = np.array(sorted(v for v in x if x[v].value() > 0.5))
    objective = float(inst.a[chosen].sum())
    proven = prob.sol_status == pulp.LpSolutionOptimal
    # CBC stops once its own bound is within gapRel of its best solution; stopped by the
    # time limit it proves nothing of its own
    bound = objective - gap * abs(objective) if proven else -np.inf
    return objective, chosen, min(bound, objective), not proven


def time_allowance(time_limit: float, k: int, index: int, spent: float) -> float:
    """Seconds solution ``index`` (0-based) of ``k`` may take when the ``index`` before it
    took ``spent`` seconds and all k share ``k * time_limit``: what is left after every later
    solution's ``RESERVE * time_limit``, within [RESERVE, PROOF_CAP] x ``time_limit``."""
    left = k * time_limit - spent - RESERVE * time_limit * (k - index - 1)
    return float(np.clip(left, RESERVE * time_limit, PROOF_CAP * time_limit))


def select_ops(scores, costs, budget: float, k: int = 1, overlap: int | None = None, solver: str = "auto",
               gap: float = 1e-3, time_limit: float | None = None, on_solution=None) -> list[Selection]:
    """Up to ``k`` solutions of Eq. 3, in order, each proven within ``gap`` (relative) of
    the optimum of its ILP (the budget, one op per layer, at most ``overlap`` layers in
    common with every earlier solution; default ``floor(0.7 * layers)``). Fewer are
    returned when no further solution exists.

    ``time_limit`` (seconds per solution after its LP relaxation, on average; None: none)
    makes every solve anytime: a local search from the LP's choice and from the previous
    solution gives a feasible selection first, an iterated descent improves it (both within
    shares of ``time_limit``), the branch and bound improves it until proven within ``gap``
    or out of time, and the selection carries the gap proven by then
    (``Selection.timed_out``). The k solves share ``k * time_limit``: time a solve does not
    use goes to the next ones, and an early solve may use more than ``time_limit`` to finish
    its proof (:func:`time_allowance`). A solve that has found nothing feasible by its
    allowance goes on until it has.

    ``scores[i][j]`` and ``costs[i][j]`` belong to op j of layer i. NASError, naming the
    smallest achievable cost, when no selection fits the budget.
    """
    inst = Instance(scores, costs)
    if k < 1:
        raise NASError(f"the ILP needs k >= 1 solutions, got {k}")
    if not 0 <= gap < 1:
        raise NASError(f"the ILP's relative gap must be in [0, 1), got {gap}")
    if time_limit is not None and not time_limit > 0:
        raise NASError(f"the ILP's time limit per solution must be > 0 seconds (or None), got {time_limit}")
    overlap = int(0.7 * inst.n_layers) if overlap is None else int(overlap)
    if not 0 <= overlap <= inst.n_layers:
        raise NASError(f"the overlap limit must be between 0 and the number of layers ({inst.n_layers}), got {overlap}")
    if budget < inst.min_cost() - 1e-12:
        raise NASError(f"budget {budget:g} is infeasible: the smallest achievable cost is {inst.min_cost():g} "
                       "(the cheapest op of every layer)")
    backend = pulp_solver(solver, gap)
    previous: list[np.ndarray] = []
    out: list[Selection] = []
    carried = -np.inf  # a bound of an earlier ILP holds for every later one (a subset of its selections)
    try:
        warm_lp = _WarmLP(inst, budget)
    except ImportError:  # without highspy: a fresh LP per solution (scipy's HiGHS)
        warm_lp = None
    spent = 0.0  # seconds of the time-limited solves so far, after their LPs
    for index in range(k):
        start = time.perf_counter()
        allowed = _undominated(inst, previous)
        lp = (_lp(inst, budget, previous, overlap, allowed) if warm_lp is None
              else warm_lp.solve(previous, overlap, allowed))
        if lp is None:
            break  # no selection differs enough from the earlier ones within the budget
        searched = time.perf_counter()
        deadline = None if time_limit is None else searched + time_allowance(time_limit, k, index, spent)
        lp_bound, reduced = lp
        reduced = np.where(allowed, reduced, np.inf)
        # each layer's allowed variables, by reduced cost
        by_reduced = [inst.offsets[i] + np.argsort(reduced[inst.offsets[i]:inst.offsets[i + 1]])
                      for i in range(inst.n_layers)]
        by_reduced = [v[np.isfinite(reduced[v])] for v in by_reduced]
        tau = float(np.median([reduced[v[min(2, len(v) - 1)]] for v in by_reduced]))
        incumbent = None
        if deadline is not None:
            # the LP's own choice per layer and the previous solution, repaired and improved,
            # among each layer's eight best ops by reduced cost
            candidates = np.concatenate([v[:LOCAL_SEARCH_OPS] for v in by_reduced])
            starts = [np.array([v[0] for v in by_reduced])] + previous[-1:]
            span = min(deadline - searched, time_limit)  # the heuristics' shares are of this
            incumbent = _local_search(inst, budget, previous, overlap, candidates, starts,
                                      searched + LOCAL_SEARCH_SHARE * span)
            if incumbent is not None:
                incumbent = _iterated_descent(inst, budget, previous, overlap,
                                              np.concatenate([v[:DESCENT_OPS] for v in by_reduced]), incumbent,
                                              searched + DESCENT_SHARE * span,
                                              np.random.default_rng(len(previous)))
        found, timed_out = None, False
        while True:
            keep = np.flatnonzero(reduced <= tau + 1e-9)
            if incumbent is not None:
                keep = np.union1d(keep, incumbent)
            remaining = None if deadline is None else deadline - time.perf_counter()
            result = _restricted_ilp(inst, keep, budget, previous, overlap, backend, gap, remaining, incumbent)
            if result is None and deadline is not None and time.perf_counter() >= deadline:
                if incumbent is None and found is None:
                    deadline = None  # nothing feasible yet: solve on until there is
                    continue
                timed_out = True  # nothing better than the incumbent in time
                break
            if result is None:  # infeasible with these variables: admit more
                if len(keep) == int(allowed.sum()):
                    break
                tau = 2 * tau + 1e-6
                continue
            found, timed_out = result[:3], result[3]
            if timed_out or found[0] <= lp_bound + tau + 1e-9 * max(1.0, abs(found[0])):
                break  # proven (every solution using an excluded variable costs >= lp_bound + tau), or out of time
            tau = found[0] - lp_bound
            incumbent = found[1]
        if found is None and incumbent is None:
            break
        if found is None or (incumbent is not None and inst.a[incumbent].sum() < found[0]):
            found = (float(inst.a[incumbent].sum()), incumbent, -np.inf)
        objective, chosen, restricted_bound = found
        # The optimum either uses only kept variables (>= restricted_bound) or not (>= lp_bound + tau).
        bound = min(max(lp_bound, min(restricted_bound, lp_bound + tau), carried), objective)
        carried = bound
        spent += time.perf_counter() - searched
        choice = (chosen - inst.offsets[inst.layer_of[chosen]]).tolist()
        previous.append(chosen)
        selection = Selection(choice, objective, float(inst.b[chosen].sum()), bound, lp_bound, tau, len(keep),
                              time.perf_counter() - start, timed_out)
        out.append(selection)
        if on_solution is not None:
            on_solution(selection)
    return out


# --------------------------------------------------------------------------- the searcher


@register_searcher("ilp")
class ILPSearch(Searcher):
    """HANT on any ``layerwise`` space (:mod:`nas.training.layerwise`):

    1. the teacher: weights from ``teacher_weights`` (a run's ``model.pt`` of the teacher
       arch), else trained here for ``teacher_epochs`` with the evaluator's settings;
    2. candidates: with ``prefilter`` only those no costlier than the teacher's layer (the
       paper's pool prefiltering); with ``zero_shot`` only the teacher's layers and
       parameter-free identities, and no pretraining; otherwise all candidates pretrained
       by layer-wise distillation (:func:`nas.training.layerwise.distill`, checkpointed in the run
       directory, resumed on a re-run);
    3. scores: the change of the teacher's loss on ``held_out`` training examples (kept
       out of every training) when one layer is swapped;
    4. ``k`` diverse selections by :func:`select_ops` under the budget (the run's
       ``budget``, else ``budget_ratio`` times the teacher's cost, which then becomes the
       run's budget), each proven within ``gap`` or, with ``time_limit`` (seconds per
       selection on average, shared as :func:`select_ops` does), the best found in its time
       with the gap proven by then;
    5. each selection with its pretrained ops ranked by its loss on the held-out examples;
       the best fine-tuned for ``finetune_epochs`` with distillation from the teacher, and
       recorded (with the teacher) in the ledger with its validation accuracy.
    """

    requires = ("layerwise",)
    needs_layer_costs = True  # the ILP sums each layer's cost
    distributed = True  # pretraining (step 2) is shared by torchrun's processes

    def __init__(self, k: int = 10, overlap: int | None = None, solver: str = "auto", gap: float = 1e-3,
                 time_limit: float | None = None, budget_ratio: float = 0.6, zero_shot: bool = False, prefilter: bool = True,
                 teacher_weights: str | None = None, teacher_epochs: int = 4, pretrain_epochs: int = 1,
                 pretrain_batches: int | None = None, pretrain_lr: float = 2e-3, batch_size: int = 64,
                 held_out: int = 512, checkpoint_every: int = 20, finetune_epochs: int = 2,
                 distill_weight: float = 1.0, temperature: float = 1.0, measure_latency: bool = True,
                 device: str = "auto", micro_batches: int | None = None):
        if k < 1:
            raise NASError(f"searcher.k must be >= 1, got {k}")
        if solver not in SOLVERS:
            raise NASError(f"unknown searcher.solver {solver!r}; accepted: {', '.join(map(repr, SOLVERS))}")
        if not 0 <= gap < 1:
            raise NASError(f"searcher.gap must be in [0, 1), got {gap}")
        if time_limit is not None and not time_limit > 0:
            raise NASError(f"searcher.time_limit must be > 0 seconds per selection (on average), or null (none), "
                           f"got {time_limit}")
        if not 0 < budget_ratio:
            raise NASError(f"searcher.budget_ratio must be > 0, got {budget_ratio}")
        for field, value in (("teacher_epochs", teacher_epochs), ("finetune_epochs", finetune_epochs)):
            if value < 0:
                raise NASError(f"searcher.{field} must be >= 0, got {value}")
        if pretrain_epochs < 1 or batch_size < 2 or pretrain_lr <= 0 or checkpoint_every < 1:
            raise NASError("searcher.pretrain_epochs, batch_size, pretrain_lr and checkpoint_every must be positive "
                           f"(batch_size >= 2), got {pretrain_epochs}, {batch_size}, {pretrain_lr}, {checkpoint_every}")
        if pretrain_batches is not None and pretrain_batches < 1:
            raise NASError(f"searcher.pretrain_batches must be >= 1 or null, got {pretrain_batches}")
        self.k, self.overlap, self.solver, self.gap, self.budget_ratio = k, overlap, solver, gap, budget_ratio
        self.time_limit = time_limit
        self.zero_shot, self.prefilter, self.teacher_weights = zero_shot, prefilter, teacher_weights
        self.teacher_epochs, self.pretrain_epochs, self.pretrain_batches = teacher_epochs, pretrain_epochs, pretrain_batches
        self.pretrain_lr, self.batch_size, self.held_out = pretrain_lr, batch_size, held_out
        self.checkpoint_every, self.finetune_epochs = checkpoint_every, finetune_epochs
        self.distill_weight, self.temperature = distill_weight, temperature
        self.measure_latency, self.device, self.micro_batches = measure_latency, device, micro_batches

    # ------------------------------------------------------------------ the algorithm
    def default_budget(self, space, cost_model) -> float:
        """``budget_ratio`` times the teacher's cost: the run's budget when it gives none (the
        ledger judges feasibility by it, so the result and model.pt are the accelerated
        network, not the teacher)."""
        return self.budget_ratio * cost_model.cost(space.ops(self.teacher_arch(space)))

    @staticmethod
    def teacher_arch(space):
        return space.validate({d.name: space.reference_option for d in space.decisions()})

    def search(self, problem):
        from nas.training.layerwise import LayerwiseNet

        data, recipe = problem.training(f"searcher {self.name!r}", "trains the teacher and its candidates")
        run = HANTRun(self, problem, data, recipe)
        torch.manual_seed(problem.seed)
        run.net = LayerwiseNet(problem.space)
        run.hold_out()
        teacher = self.train_teacher(run)                                    # 1. the teacher
        options, costs, fixed = self.candidates(run)                         # 2. candidates and their costs
        self.pretrain(run, options)
        if not problem.world.is_main:
            return None  # the candidates are trained; rank 0 scores, selects and fine-tunes
        base_loss, scores = self.scores(run, options)                        # 3. scores
        selections = self.select(run, scores, costs, fixed)                  # 4. K diverse selections
        ranked = self.rank(run, options, selections, fixed)                  # 5. rank, fine-tune the best
        found = self.fine_tune(run, ranked)
        extras = {"teacher": teacher, "budget_used": problem.budget, "candidates_searched": sum(map(len, options)),
                  "teacher_loss": base_loss, "selections": ranked["candidates"],
                  "chosen_solution": ranked["best"] + 1}
        extras["report"] = self.report_lines(run, extras, selections, found)
        if self.measure_latency:
            for who, arch in (("teacher", self.teacher_arch(problem.space)), ("found", ranked["arch"])):
                report = latency_report(problem, arch)
                if "measured_latency_ms" in report:
                    extras[f"{who}_latency"] = report
                    extras["report"].append(describe_latency(report, f"the {who}"))
        return problem.result(**extras)

    # ------------------------------------------------------------------ steps
    def train_teacher(self, run) -> dict:
        """The teacher's weights (given, kept from an earlier run, or trained here; under
        torchrun rank 0's, handed to the others), recorded in the ledger with its accuracy."""
        from nas.training.train import accuracy

        problem, net, world = run.problem, run.net, run.problem.world
        source = self.teacher_weights_from(run) if world.is_main else None
        if world.size > 1:
            source, state = world.broadcast((source, net.teacher.state_dict() if world.is_main else None))
            net.teacher.load_state_dict(state)
        net.to(device=run.device, memory_format=torch.channels_last)
        arch = self.teacher_arch(problem.space)
        teacher = {"accuracy": None, "cost": problem.cost(arch), "weights": source}
        if world.is_main:
            acc, _ = accuracy(net.teacher, run.data, run.data.val, problem.space.input_shape, 512, run.device)
            model = copy.deepcopy(net.teacher).cpu()
            problem.evaluate(arch, lambda s, a: Score(acc, {"accuracy": acc}, model))
            teacher["accuracy"] = acc
        return teacher

    def teacher_weights_from(self, run) -> str:
        """Load or train the teacher; says where its weights came from."""
        from nas.export import save_atomic
        from nas.training.train import train

        problem, net = run.problem, run.net
        path = Path(self.teacher_weights).expanduser() if self.teacher_weights else None
        if path is None and run.work is not None and (run.work / "teacher.pt").exists():
            path = run.work / "teacher.pt"
        if path is not None:
            if not path.is_file():
                raise NASError(f"searcher.teacher_weights {str(path)!r} does not exist")
            saved = torch.load(path, map_location="cpu", weights_only=True)
            state = saved.get("state_dict", saved) if isinstance(saved, dict) else saved
            try:
                net.teacher.load_state_dict(state)
            except RuntimeError as exc:
                raise NASError(f"searcher.teacher_weights {str(path)!r} does not fit the teacher of space "
                               f"{problem.space.name!r}: {str(exc).splitlines()[0]}") from None
            return str(path)
        train(net.teacher, run.train_data, problem.space.input_shape, run.recipe_for(self.teacher_epochs),
              problem.seed)
        if run.work is not None:
            save_atomic({"state_dict": net.teacher.state_dict()}, run.work / "teacher.pt")
        return f"trained here for {self.teacher_epochs} epochs"

    def candidates(self, run) -> tuple[list[list], list[np.ndarray], float]:
        """Per layer the candidates searched and their costs, and the cost of the fixed
        layers; a budget that no selection can meet is refused here."""
        problem, cost_model = run.problem, run.problem.cost_model
        options, costs = self._options(problem.space, cost_model)
        fixed = cost_model.cost(problem.space.fixed_ops())
        cheapest = fixed + sum(float(c.min()) for c in costs)
        budget = problem.budget
        if budget < cheapest - 1e-12:
            restricted = " with zero_shot (teacher and parameter-free identity ops only)" if self.zero_shot else ""
            unit = cost_model.unit
            raise NASError(f"budget {format_cost(budget, unit)} ({budget:g}) is infeasible{restricted}: the smallest "
                           f"achievable cost is {format_cost(cheapest, unit)} ({cheapest:g})")
        return options, costs, fixed

    def _options(self, space, cost_model) -> tuple[list[list], list[np.ndarray]]:
        options, costs = [], []
        for i, d in enumerate(space.layer_decisions()):
            teacher_cost = sum(cost_model.op_cost(op) for op in space.layer_ops(i, space.reference_option))
            opts, layer_costs = [], []
            for option in d.options:
                if self.zero_shot and not space.parameter_free(i, option):
                    continue
                c = sum(cost_model.op_cost(op) for op in space.layer_ops(i, option))
                if self.prefilter and not self.zero_shot and c > teacher_cost and option != space.reference_option:
                    continue
                opts.append(option)
                layer_costs.append(c)
            options.append(opts)
            costs.append(np.array(layer_costs))
        return options, costs

    def pretrain(self, run, options) -> None:
        """Every candidate trained by layer-wise distillation from the teacher (Eq. 2;
        not with ``zero_shot``), the per-layer mean MSE logged every 10 steps."""
        from nas.training.layerwise import DistillSettings, distill

        problem = run.problem
        if self.zero_shot:
            run.net.add_candidates(options)
            return

        def log_pretraining(step, mse):
            if step % 10 == 0:
                per_layer = {}
                for key, value in mse.items():
                    per_layer.setdefault(int(key.split(":", 1)[0]) + 1, []).append(value)
                problem.log_progress(step, {f"pretraining: mean MSE layer {layer}": float(np.mean(values))
                                            for layer, values in per_layer.items()})

        settings = DistillSettings(
            self.pretrain_epochs, self.batch_size, self.pretrain_lr, problem.seed, problem.space.input_shape,
            run.device, self.pretrain_batches, run.work / "candidates.pt" if run.work else None, self.checkpoint_every,
            self.micro_batches, problem.show_progress)
        distill(run.net, options, run.train_data, settings, problem.world, log_pretraining)

    @staticmethod
    def scores(run, options) -> tuple[float, list[np.ndarray]]:
        """The teacher's loss on the held-out examples and its change per swapped candidate."""
        from nas.training.layerwise import loss_changes

        shape = run.problem.space.input_shape
        xh, yh = run.train_data.batch(run.held, slice(None), shape)
        return loss_changes(run.net, options, xh.to(run.device, memory_format=torch.channels_last), yh.to(run.device))

    def select(self, run, scores, costs, fixed) -> list[Selection]:
        selections = select_ops(scores, costs, run.problem.budget - fixed, self.k, self.overlap, self.solver, self.gap,
                                self.time_limit)
        if not selections:
            raise NASError("the ILP found no selection within the budget")
        return selections

    def rank(self, run, options, selections, fixed) -> dict:
        """Each selection with its pretrained ops, by its loss on the held-out examples (logged)."""
        from nas.training.train import accuracy

        problem, space = run.problem, run.problem.space
        decisions = space.layer_decisions()

        def to_arch(sel):
            values = {d.name: options[i][j] for i, (d, j) in enumerate(zip(decisions, sel.choice))}
            return space.validate(space.default_arch().replace(**values))

        candidates = []
        for rank, sel in enumerate(selections):
            acc, loss = accuracy(run.net, run.train_data, run.held, space.input_shape, 256, run.device,
                                 arch=to_arch(sel))
            candidates.append({"solution": rank + 1, "arch": dict(to_arch(sel)), "objective": sel.objective,
                               "proven_gap": sel.gap, "timed_out": sel.timed_out, "cost": fixed + sel.cost, "held_out_loss": loss,
                               "held_out_accuracy": acc})
            problem.log_progress(rank + 1, {"selection: objective": sel.objective, "selection: proven gap": sel.gap,
                                            "selection: cost": fixed + sel.cost, "selection: held-out loss": loss})
        best = min(range(len(candidates)), key=lambda i: (candidates[i]["held_out_loss"], i))
        return {"candidates": candidates, "best": best, "arch": to_arch(selections[best])}

    def fine_tune(self, run, ranked):
        """The best selection fine-tuned with distillation from the teacher, into the ledger."""
        from nas.training.train import train

        problem = run.problem
        before = ranked["candidates"][ranked["best"]]["held_out_accuracy"]

        def fine_tuned(s, arch):
            model = run.net.extract(arch)
            metrics = train(model, run.train_data, problem.space.input_shape, run.recipe_for(self.finetune_epochs),
                            problem.seed, teacher=run.net.teacher, distill_weight=self.distill_weight,
                            temperature=self.temperature)
            metrics["held_out_accuracy_before_finetuning"] = before
            return Score(metrics["accuracy"], metrics, model.cpu())

        return problem.evaluate(ranked["arch"], fine_tuned)

    def report_lines(self, run, extras, selections, found) -> list[str]:
        problem, cost_model = run.problem, run.problem.cost_model
        teacher, metric, unit = extras["teacher"], problem.evaluator.metric, cost_model.unit
        best = extras["selections"][extras["chosen_solution"] - 1]
        n_options = sum(len(d.options) for d in problem.space.layer_decisions())
        return [f"teacher ({teacher['weights']}): {metric} {teacher['accuracy']:.4f}, "
                f"{cost_model.name} {format_cost(teacher['cost'], unit)}",
                f"candidates: {extras['candidates_searched']} of {n_options}"
                + (" (zero-shot: teacher and identity)" if self.zero_shot else
                   " (prefiltered: no costlier than the teacher's layer)" if self.prefilter else ""),
                f"ILP: {len(selections)} selections under {format_cost(problem.budget, unit)}, proven gap median "
                f"{np.median([s.gap for s in selections]):.3%}, largest {max(s.gap for s in selections):.3%}, "
                f"{sum(s.seconds for s in selections):.2f} s"
                + (f" ({sum(s.timed_out for s in selections)} stopped at their time, {self.time_limit:g} s per "
                   "selection on average)"
                   if self.time_limit is not None else "") + "; "
                f"solution {extras['chosen_solution']} has the lowest held-out loss ({best['held_out_loss']:.4f})",
                f"found: {metric} {found.quality:.4f} after fine-tuning with distillation, "
                f"{cost_model.name} {format_cost(found.cost, unit)} ({found.cost / teacher['cost']:.0%} of the teacher)"]


class HANTRun:
    """What the steps of one HANT search share: the problem, the data (with the held-out
    examples taken out of training), the device, the network and the checkpoint folder."""

    def __init__(self, searcher: ILPSearch, problem, data, recipe):
        from nas.training.harness import search_device

        self.problem, self.data, self.searcher = problem, data, searcher
        self.device = search_device(searcher.device, recipe)
        self.recipe = dataclasses.replace(recipe, device=self.device)
        self.work = problem.checkpoint_folder("hant")
        if self.work is not None and problem.world.is_main:
            self.work.mkdir(parents=True, exist_ok=True)
        self.net = None
        self.train_data, self.held = data, None

    def hold_out(self) -> None:
        from nas.training.layerwise import hold_out

        self.train_data, self.held = hold_out(self.data, self.searcher.held_out, self.problem.seed)

    def recipe_for(self, epochs: int):
        """The run's training recipe for ``epochs`` epochs on this search's device."""
        return dataclasses.replace(self.recipe, epochs=epochs)
