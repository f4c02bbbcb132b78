"""Speed of HANT's operation selection (Eq. 3) on random instances of the paper's size.

Prints, for a random instance of ``--layers`` x ``--ops`` (default 46 x 197: scores drawn
from a gamma distribution with the teacher op at zero, costs uniform with the teacher op
the slowest, budget 0.6 of the teacher's cost, overlap 0.7 of the layers):

1. the first solution: time, proven gap to the optimum, and the time of the plain PuLP
   model of the whole instance solved by the same solver (the baseline);
2. K diverse solutions (``--k``, default 100) by ``searchers.ilp.select_ops``: time per
   solution and in total, and the largest proven gap, until ``--max-seconds`` of wall time
   have passed (then it says how many it found).

    python benchmarks/ilp.py [--solver auto|cbc|highs] [--k 100] [--max-seconds 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, not an installed copy


class OutOfTime(Exception):
    pass


def main() -> None:
    import pulp

    from searchers.ilp import pulp_solver, select_ops

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=46)
    parser.add_argument("--ops", type=int, default=197)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--solver", default="auto")
    parser.add_argument("--gap", type=float, default=1e-3)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    n, m = args.layers, args.ops
    scores = rng.gamma(2.0, 0.05, (n, m))
    scores[:, 0] = 0.0
    costs = rng.uniform(0.2, 1.0, (n, m))
    costs[:, 0] = 1.0
    budget = 0.6 * n
    solver = pulp_solver(args.solver, args.gap)
    print(f"instance: {n} layers x {m} ops, budget 0.6, overlap {int(0.7 * n)}, solver {type(solver).__name__}, "
          f"relative gap {args.gap:g}")

    start = time.perf_counter()
    prob = pulp.LpProblem("plain", pulp.LpMinimize)
    x = [[prob.add_variable(f"x_{i}_{j}", cat="Binary") for j in range(m)] for i in range(n)]
    prob += pulp.lpSum(scores[i, j] * x[i][j] for i in range(n) for j in range(m))
    prob += pulp.lpSum(costs[i, j] * x[i][j] for i in range(n) for j in range(m)) <= budget
    for i in range(n):
        prob += pulp.lpSum(x[i]) == 1
    prob.solve(solver)
    plain_seconds, plain_objective = time.perf_counter() - start, pulp.value(prob.objective)

    (first,) = select_ops(scores, costs, budget, k=1, solver=args.solver, gap=args.gap)
    print(f"1. first solution: {first.seconds:.3f} s, objective {first.objective:.6f}, proven gap "
          f"{first.gap:.4%} (LP bound {first.lp_bound:.6f}, {first.variables} of {n * m} variables kept); "
          f"plain PuLP model: {plain_seconds:.3f} s, objective {plain_objective:.6f}")

    found = []
    start = time.perf_counter()

    def on_solution(sol):
        found.append(sol)
        if time.perf_counter() - start > args.max_seconds and len(found) < args.k:
            raise OutOfTime

    try:
        select_ops(scores, costs, budget, k=args.k, solver=args.solver, gap=args.gap, on_solution=on_solution)
        status = "all found"
    except OutOfTime:
        status = f"stopped after {args.max_seconds:g} s"
    total = time.perf_counter() - start
    seconds = np.array([s.seconds for s in found])
    print(f"2. {len(found)} of {args.k} diverse solutions in {total:.1f} s ({status}); per solution: median "
          f"{np.median(seconds):.2f} s, last {seconds[-1]:.2f} s; largest proven gap "
          f"{max(s.gap for s in found):.4%}; objective of the first {found[0].objective:.6f}, "
          f"of the last {found[-1].objective:.6f}")
    for j in sorted({0, 4, 9, 19, 49, 99} & set(range(len(found)))):
        print(f"   solution {j + 1:3d}: {found[j].seconds:7.2f} s, cumulative {seconds[:j + 1].sum():7.1f} s, "
              f"gap {found[j].gap:.4%}")


if __name__ == "__main__":
    main()
