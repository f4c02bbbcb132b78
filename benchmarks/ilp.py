"""HANT's operation selection (Eq. 3) at the paper's size: the first solution and K diverse ones.

For each instance (default both, 46 layers x 197 ops, budget 0.6 of the teacher's cost,
overlap 0.7 of the layers, one solver thread):

- ``random``: scores from a gamma distribution with the teacher op at zero, costs uniform
  with the teacher op the slowest;
- ``realistic``: per-layer latency uneven (the first third of the layers hold half of it),
  each op's cost following its capacity, scores falling with capacity and growing with
  depth, an identity op (almost free, a large score), a third of the ops dominated copies
  of others (costlier and worse);

it prints:

1. the first solution (``select_ops(k=1)`` proven within ``--gap``): seconds and proven gap;
2. K solutions (``--k``, default 100) with ``--time-limit`` seconds per solution on average (after
   its LP relaxation): CPU seconds (this process and solver child processes, e.g. CBC)
   and wall seconds for all K and for the first 10, the proven gap of the first 10 (max)
   and of all K (median, max), and how many stopped at the limit;
3. solution 50's ILP (the 49 before it fixed) solved for ``--reference-seconds`` by HiGHS
   on every variable: its objective and bound against solution 50's.

    python benchmarks/ilp.py [--instances random,realistic] [--k 100] [--time-limit 0.25]
        [--solver auto|cbc|highs] [--gap 0.001] [--reference-seconds 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, not an installed copy


def random_instance(rng, n, m):
    scores = rng.gamma(2.0, 0.05, (n, m))
    scores[:, 0] = 0.0
    costs = rng.uniform(0.2, 1.0, (n, m))
    costs[:, 0] = 1.0
    return scores, costs


def realistic_instance(rng, n, m):
    """Op 0 the teacher's (full capacity, score 0, its layer's whole latency), op 1 an
    identity; the others of random capacity, a third of them dominated copies."""
    third = n // 3
    weight = np.concatenate([rng.uniform(0.7, 1.3, third) * 0.5 / third,
                             rng.uniform(0.7, 1.3, n - third) * 0.5 / (n - third)])
    weight /= weight.sum()
    depth = 1.0 + 2.0 * np.arange(n) / max(n - 1, 1)
    capacity = np.concatenate([[1.0, 0.0], rng.uniform(0.05, 0.95, m - 2)])
    dominated = np.concatenate([[False, False], rng.random(m - 2) < 1 / 3])
    scores, costs = np.empty((n, m)), np.empty((n, m))
    for i in range(n):
        cost = weight[i] * (0.08 + 0.92 * capacity ** rng.uniform(0.8, 1.2)) * rng.lognormal(0, 0.08, m)
        score = 0.04 * depth[i] * (1 - capacity) ** 1.5 * rng.lognormal(0, 0.25, m)
        worse = rng.uniform(1.05, 1.4, m)
        cost, score = np.where(dominated, cost * worse, cost), np.where(dominated, score * worse, score)
        cost[0], score[0] = weight[i], 0.0
        cost[1], score[1] = 0.02 * weight[i], 0.12 * depth[i] * rng.uniform(0.8, 1.2)
        scores[i], costs[i] = score, cost
    return scores, costs


INSTANCES = {"random": random_instance, "realistic": realistic_instance}


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (CBC runs as one)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reference_solve(scores, costs, budget, overlap, earlier, seconds):
    """The ILP after ``earlier`` solutions, every variable, HiGHS for ``seconds``: (objective, bound)."""
    from searchers.ilp import Instance, _restricted_highs

    inst = Instance(scores, costs)
    previous = [inst.variables(choice) for choice in earlier]
    found = _restricted_highs(inst, np.arange(len(inst.a)), budget, previous, overlap, 1e-4, seconds, None)
    return (None, None) if found is None else (found[0], found[2])


def main() -> None:
    from searchers.ilp import select_ops

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", default="random,realistic")
    parser.add_argument("--layers", type=int, default=46)
    parser.add_argument("--ops", type=int, default=197)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--time-limit", type=float, default=0.25, help="seconds per solution")
    parser.add_argument("--solver", default="auto")
    parser.add_argument("--gap", type=float, default=1e-3)
    parser.add_argument("--reference-seconds", type=float, default=60.0, help="0: no reference solve")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n, m = args.layers, args.ops
    overlap = int(0.7 * n)
    select_ops([[0.0, 1.0]], [[1.0, 0.5]], 1.0)  # loads scipy and the solver once, outside the timings
    for name in args.instances.split(","):
        if name not in INSTANCES:
            raise SystemExit(f"unknown instance {name!r}; accepted: {', '.join(INSTANCES)}")
        scores, costs = INSTANCES[name](np.random.default_rng(args.seed), n, m)
        budget = 0.6 * costs[:, 0].sum()
        print(f"{name} instance: {n} layers x {m} ops, budget 0.6 of the teacher's, overlap {overlap}, "
              f"solver {args.solver}, relative gap {args.gap:g}", flush=True)

        cpu, wall = cpu_seconds(), time.perf_counter()
        (first,) = select_ops(scores, costs, budget, k=1, solver=args.solver, gap=args.gap)
        print(f"  1. first solution: {time.perf_counter() - wall:.3f} s wall, {cpu_seconds() - cpu:.3f} CPU-s, "
              f"objective {first.objective:.6f}, proven gap {first.gap:.4%}", flush=True)

        marks, found = {}, []
        cpu, wall = cpu_seconds(), time.perf_counter()

        def on_solution(sol):
            found.append(sol)
            if len(found) == 10:
                marks[10] = (cpu_seconds() - cpu, time.perf_counter() - wall)

        solutions = select_ops(scores, costs, budget, k=args.k, solver=args.solver, gap=args.gap,
                               time_limit=args.time_limit, on_solution=on_solution)
        total_cpu, total_wall = cpu_seconds() - cpu, time.perf_counter() - wall
        gaps = np.array([s.gap for s in solutions])
        print(f"  2. {len(solutions)} of {args.k} solutions, {args.time_limit:g} s limit each: {total_cpu:.1f} CPU-s, "
              f"{total_wall:.1f} s wall; proven gap median {np.median(gaps):.3%}, max {gaps.max():.3%}; "
              f"{sum(s.timed_out for s in solutions)} stopped at the limit", flush=True)
        if 10 in marks:
            print(f"     first 10: {marks[10][0]:.1f} CPU-s, {marks[10][1]:.1f} s wall, proven gap max "
                  f"{gaps[:10].max():.3%}, {np.sum(gaps[:10] <= 1e-3)} of 10 within 0.1%", flush=True)
        print("     gap by solution: " + ", ".join(f"{j}: {gaps[j - 1]:.2%}" for j in (1, 5, 10, 20, 50, 100)
                                                      if j <= len(gaps)), flush=True)
        if args.reference_seconds > 0 and len(solutions) >= 50:
            objective, bound = reference_solve(scores, costs, budget, overlap, [s.choice for s in solutions[:49]],
                                               args.reference_seconds)
            fifty = solutions[49]
            if objective is None:
                print(f"  3. solution 50's ILP: nothing found in {args.reference_seconds:g} s", flush=True)
            else:
                print(f"  3. solution 50's ILP, HiGHS for {args.reference_seconds:g} s on every variable: objective "
                      f"{objective:.6f}, bound {bound:.6f}; solution 50: objective {fifty.objective:.6f} "
                      f"({fifty.objective / objective - 1:+.3%}), bound {fifty.bound:.6f}", flush=True)


if __name__ == "__main__":
    main()
