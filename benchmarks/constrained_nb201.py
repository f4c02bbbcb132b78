"""Search under a hardware budget on NAS-Bench-201 (CIFAR-10 table): regret of random, TPE,
NSGA-II and the cost-aware Bayesian optimisation (``bayesopt``) against the best cell
within the budget.

For each target (``macs``, and ``cpu``: this machine's LUT, built in fast mode when there
is none; ``--reference-lut`` uses the shipped one, another machine's) the budget is the
median and the 25th percentile of the target's cost over all 15,625 cells. Regret = the
best accuracy of a cell within the budget minus the best accuracy found within it, in
percentage points, after 50, 100 and 200 evaluations (distinct networks trained, here
looked up), averaged over the seeds. A searcher that proposes a cell over the budget has it
priced but not evaluated; the table counts those proposals too.

    python benchmarks/constrained_nb201.py [--seeds 20] [--first-seed 0] [--jobs 2] [--targets macs cpu]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

# one thread per search, so that CPU seconds compare and parallel jobs do not compete
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import numpy as np

import nas

SEARCHERS = {  # label -> (searcher, its settings)
    "random": ("random", {}),
    "TPE": ("optuna", {"sampler": "tpe"}),
    "NSGA-II": ("optuna", {"sampler": "nsga2"}),
    "bayesopt": ("bayesopt", {}),
}

#: set in the parent before the workers fork: the space, its table and the cost models
STATE: dict = {}


def cost_model(target: str, reference_lut: bool):
    space = STATE["space"]
    if target == "cpu":
        return nas.get_cost_model("lut", space=space, target="cpu", reference=reference_lut)
    return nas.get_cost_model(target)


def seeds_of(args) -> range:
    """The seeds ``--seeds`` and ``--first-seed`` name."""
    return range(args.first_seed, args.first_seed + args.seeds)


def seeds_line(args, n_searches: int, seconds: float) -> str:
    """The first line of a NAS-Bench-201 benchmark's output: seeds and searches run."""
    seeds = seeds_of(args)
    return (f"NAS-Bench-201 CIFAR-10, {len(seeds)} seeds ({seeds[0]}-{seeds[-1]}), {n_searches} searches in "
            f"{seconds:.0f} s")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run from this one on (other seeds than the reported ones, to check a change)")
    parser.add_argument("--targets", nargs="+", default=["macs", "cpu"], choices=["macs", "cpu"])
    parser.add_argument("--reference-lut", action="store_true",
                        help="price target=cpu with the shipped LUT (another machine's) instead of this machine's")
    parser.add_argument("--jobs", type=int, default=1, help="searches run in parallel (processes)")


def prepare(targets: list[str], reference_lut: bool) -> tuple[np.ndarray, dict]:
    """Fill STATE (the space, accuracy by table key, cost models); every cell's accuracy
    and, per target, every cell's cost."""
    space = nas.get_space("nb201")
    table = space.benchmark_table()
    cells = list(space.enumerate())
    STATE["space"] = space
    STATE["accuracy"] = {space.table_key(a): table.lookup(space.table_key(a)) for a in cells}
    STATE["cost_models"] = {t: cost_model(t, reference_lut) for t in targets}
    for target, model in STATE["cost_models"].items():
        if target == "cpu":
            print(f"target=cpu prices with the {model.lut.whose()}")
    costs = {t: np.array([m.arch_cost(space, a) for a in cells]) for t, m in STATE["cost_models"].items()}
    return np.array([STATE["accuracy"][space.table_key(a)] for a in cells]), costs


def run_all(function, tasks: list, jobs: int) -> list:
    """``function`` over ``tasks``, in ``jobs`` forked processes (they inherit STATE)."""
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            return pool.map(function, tasks, chunksize=1)
    return [function(t) for t in tasks]


def one_search(task):
    label, target, budget, seed, checkpoints = task
    name, settings = SEARCHERS[label]
    space, accuracy_of = STATE["space"], STATE["accuracy"]
    searcher = nas.get_searcher(name, n_evals=max(checkpoints), **settings)
    start = time.process_time()
    result = nas.search(space, searcher, STATE["cost_models"][target], "table", budget=budget, seed=seed,
                        study_name=f"{label}-{target}-{seed}")
    seconds = time.process_time() - start
    found = [accuracy_of[space.table_key(e.arch)] for e in result.history if e.feasible]
    best_so_far = np.maximum.accumulate(found) if found else np.zeros(1)
    best = [best_so_far[min(c, len(best_so_far)) - 1] for c in checkpoints]
    priced = result.extras.get("proposals", result.extras.get("samples", len(result.history)))
    return label, target, budget, seed, best, priced / max(1, len(found)), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--percentiles", type=float, nargs="+", default=[50, 25])
    parser.add_argument("--searchers", nargs="+", default=list(SEARCHERS), choices=list(SEARCHERS))
    args = parser.parse_args()

    accuracy, costs_of = prepare(args.targets, args.reference_lut)
    tasks, settings = [], []
    for target in args.targets:
        costs = costs_of[target]
        for q in args.percentiles:
            budget = float(np.percentile(costs, q))
            feasible = costs <= budget
            top = accuracy[feasible].max()
            settings.append((target, budget, q, feasible.mean(), top))
            tasks += [(label, target, budget, seed, args.checkpoints)
                      for label in args.searchers for seed in seeds_of(args)]
    start = time.time()
    results = run_all(one_search, tasks, args.jobs)
    print(seeds_line(args, len(tasks), time.time() - start))
    print("mean regret in percentage points (std over seeds in brackets); 'proposals/eval': proposals per evaluation (those "
          "over the budget are priced, not evaluated; bayesopt prices its candidates first); 'CPU-s': per search")
    for target, budget, q, share, top in settings:
        unit = STATE["cost_models"][target].unit
        print(f"\ntarget={target}, budget = {q:g}th percentile = {nas.costs.format_cost(budget, unit)} "
              f"({100 * share:.0f}% of cells within), best cell within: {100 * top:.2f}%")
        header = f"{'searcher':<10}" + "".join(f"{f'after {c}':>17}" for c in args.checkpoints)
        print(header + f"{'proposals/eval':>16}{'CPU-s':>8}")
        regret = {}
        for label in args.searchers:
            rows = [r for r in results if r[0] == label and r[1] == target and r[2] == budget]
            regret[label] = np.array([[100 * (top - b) for b in r[4]] for r in rows])
            cells_ = "".join(f"{m:>10.3f} ({s:.3f})" for m, s in zip(regret[label].mean(0), regret[label].std(0)))
            print(f"{label:<10}{cells_}{np.mean([r[5] for r in rows]):>16.2f}{np.mean([r[6] for r in rows]):>8.1f}")
        if "random" in regret:
            base = regret["random"].mean(0)
            for label in args.searchers:
                if label != "random":
                    ratio = regret[label].mean(0) / np.maximum(base, 1e-12)
                    print(f"{label + ' / random':<21}" + "".join(f"{x:>17.3f}" for x in ratio)[6:])


if __name__ == "__main__":
    main()
