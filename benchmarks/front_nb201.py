"""The accuracy/cost front on NAS-Bench-201 (CIFAR-10 table): hypervolume of NSGA-II's front
against random search's at equal evaluations, no budget.

Objectives: cost / the space's largest cost and 1 - accuracy, both minimised; reference
point (1, 1). The table gives the front of all 15,625 cells, whose hypervolume is the
best any search can reach; the benchmark prints the shortfall (that hypervolume minus the
search's, x100) after 50, 100 and 200 evaluations, averaged over the seeds. NSGA-II runs
with its population sized to the evaluations (``population_size`` null: 4 at 50, 10 at
100, 20 at 200) and with a fixed 20 (Optuna's default, the searcher's default before).

    python benchmarks/front_nb201.py [--seeds 20] [--first-seed 0] [--jobs 2] [--targets macs cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from constrained_nb201 import (  # also its thread settings
    STATE, add_common_arguments, prepare, run_all, seeds_line, seeds_of)

import nas

SEARCHERS = {  # label -> (searcher, its settings)
    "random": ("random", {}),
    "NSGA-II sized": ("optuna", {"sampler": "nsga2"}),
    "NSGA-II 20": ("optuna", {"sampler": "nsga2", "population_size": 20}),
}


def hypervolume(points: np.ndarray) -> float:
    """Area dominated by ``points`` (rows of two objectives in [0, 1], minimised) below (1, 1)."""
    area, best_y = 0.0, 1.0
    for x, y in points[np.lexsort((points[:, 1], points[:, 0]))]:
        if y < best_y:
            area += (1.0 - x) * (best_y - y)
            best_y = y
    return area


def one_search(task):
    label, target, n_evals, seed = task
    name, settings = SEARCHERS[label]
    space, scale = STATE["space"], STATE["scale"][target]
    searcher = nas.get_searcher(name, n_evals=n_evals, **settings)
    result = nas.search(space, searcher, STATE["cost_models"][target], "table", seed=seed,
                        study_name=f"{label}-{target}-{seed}")
    points = np.array([[e.cost / scale, 1.0 - e.quality] for e in result.history])
    return label, target, n_evals, seed, hypervolume(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--evaluations", type=int, nargs="+", default=[50, 100, 200])
    args = parser.parse_args()

    accuracy, costs_of = prepare(args.targets, args.reference_lut)
    STATE["scale"], best = {}, {}
    for target, costs in costs_of.items():
        STATE["scale"][target] = costs.max()
        best[target] = hypervolume(np.stack([costs / costs.max(), 1.0 - accuracy], 1))
    # Each number of evaluations is its own search: NSGA-II's sized population depends on it.
    tasks = [(label, target, n, seed) for target in args.targets for n in args.evaluations
             for label in SEARCHERS for seed in seeds_of(args)]
    start = time.time()
    results = run_all(one_search, tasks, args.jobs)
    print(seeds_line(args, len(tasks), time.time() - start))
    print("hypervolume shortfall x100 against the front of all cells (std over seeds in brackets)")
    for target in args.targets:
        print(f"\ntarget={target}: the front of all cells has hypervolume {best[target]:.4f}")
        print(f"{'searcher':<15}" + "".join(f"{f'{n} evaluations':>18}" for n in args.evaluations))
        shortfall = {}
        for label in SEARCHERS:
            shortfall[label] = np.array([[100 * (best[target] - r[4]) for r in results
                                          if r[0] == label and r[1] == target and r[2] == n]
                                         for n in args.evaluations]).T
            cells_ = "".join(f"{m:>11.3f} ({s:.3f})" for m, s in zip(shortfall[label].mean(0),
                                                                     shortfall[label].std(0)))
            print(f"{label:<15}{cells_}")
        for label in list(SEARCHERS)[1:]:
            ratio = shortfall[label].mean(0) / shortfall["random"].mean(0)
            print(f"{label + ' / random':<24}" + "".join(f"{x:>18.3f}" for x in ratio)[9:])


if __name__ == "__main__":
    main()
