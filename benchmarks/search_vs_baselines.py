"""Weight-sharing search against black-box baselines at equal training compute (uib, afrb).

Searchers, each run by ``python -m nas.run`` as a user runs them, on this machine's ``cpu``
LUT. ``--space uib``:

- ``tunas-2``: two-stage TuNAS (MobileNetV4's: stage 2 searches the depthwise layers), ``--steps`` per stage;
- ``tunas-2-fine``: the same with stage 2 over every fine decision (``searcher.stage2=fine``:
  also kernel 7, the expansion and Fused-IB);
- ``tunas-1``: one-stage TuNAS, twice the steps in one stage;

``--space afrb``:

- ``differentiable``: RAN-e's search, ``2 x --steps`` joint steps of the PReLU SuperNet
  (alpha penalty 0.01, its default) with ``searcher.cost_weight=1``: under the budget the
  search pays for expected latency above it; the forms only (kernels stay 3, the SuperNet's);

and on both:

- ``random`` and ``TPE`` (optuna): ``n_evals`` networks, each trained by the run's evaluator.

Compute is counted in training examples (forward and backward passes): a supernet step
trains on ``batch_size`` examples, and the network a weight-sharing search finds is then
trained from scratch like any evaluation (``epochs x`` the training split); each baseline
gets as many evaluations as that total buys (rounded to the nearest). TuNAS's reward
batches are forward passes only; they are printed, not counted.

Budgets: the ``cpu`` latency's median over 200 random networks (what the default job aims at)
and its 25th percentile, given as ``budget=``: the baselines evaluate only networks within
it; TuNAS aims at it, and an argmax over it is changed to the controller's most probable
choices within it before it is trained (``--tunas-aim-only``: the budget is only TuNAS's aim,
``searcher.aim_cost``, and the table shows where its argmax lands).

The accuracy a search "found" is not the search's own figure: the best of several noisy
trainings is biased upwards. Every found network is trained again, alone, under
``--truth-seeds`` fresh seeds (outside the counted compute) and the mean is reported, with
its latency by the LUT and measured here end to end (after all searches, one at a time).

The data: ``mnist5k_clutter`` (digits shifted by up to 4 pixels over 4 fragments of other
digits). On plain ``mnist5k`` every uib network lands within about 2 points after the
default two epochs, one seed's noise; the benchmark prints both spreads for the data it ran.
``--epochs`` sets the evaluator's epochs for every training (searches and fresh seeds).

    python benchmarks/search_vs_baselines.py [--space uib] [--seeds 3] [--steps 250] [--epochs 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, not an installed copy
# one thread per job, so that parallel jobs do not compete for the cores
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
os.environ.update(ONE_THREAD)

import nas  # noqa: E402
from supernet_ranking import space_for, train_alone_many  # noqa: E402

#: each space's searchers: its weight-sharing ones, then the baselines
SEARCHERS = {"uib": ("tunas-2", "tunas-2-fine", "tunas-1", "random", "TPE"),
             "afrb": ("differentiable", "random", "TPE")}
WEIGHT_SHARING = ("tunas-2", "tunas-2-fine", "tunas-1", "differentiable")


def searcher_args(label: str, budget: float, steps: int, n_evals: int, tunas_aim_only: bool) -> list[str]:
    """The CLI overrides of one search. Every searcher gets ``budget=``: the baselines never
    evaluate a network over it, TuNAS aims at it and the differentiable search pays for
    expected cost above it, and both change a result over it to fit. With
    ``tunas_aim_only``, TuNAS gets it only as its aim (``searcher.aim_cost``), to see where
    its argmax lands."""
    tunas = ["searcher=tunas", f"searcher.aim_cost={budget}" if tunas_aim_only else f"budget={budget}",
             "searcher.measure_latency=false"]
    return {
        "tunas-2": [*tunas, "searcher.stages=2", f"searcher.steps={steps}"],
        "tunas-2-fine": [*tunas, "searcher.stages=2", "searcher.stage2=fine", f"searcher.steps={steps}"],
        "tunas-1": [*tunas, "searcher.stages=1", f"searcher.steps={2 * steps}"],
        "differentiable": ["searcher=differentiable", f"budget={budget}", f"searcher.steps={2 * steps}",
                           "searcher.cost_weight=1", "searcher.measure_latency=false"],
        "random": ["searcher=random", f"searcher.n_evals={n_evals}", f"budget={budget}"],
        "TPE": ["searcher=optuna", "searcher.sampler=tpe", f"searcher.n_evals={n_evals}", f"budget={budget}"],
    }[label]


def run_search(job: tuple) -> dict:
    """One search through the CLI; its result.json and wall seconds."""
    label, seed, budget, args, space_name, data, epochs, out = job
    cmd = [sys.executable, "-m", "nas.run", f"space={space_name}", "target=cpu", f"data={data}", f"seed={seed}",
           f"evaluator.epochs={epochs}", "progress=false", "save_model=false", f"output_dir={out}",
           f"run_name={label}-{budget:.4f}-seed{seed}", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads((Path(out) / f"{label}-{budget:.4f}-seed{seed}" / "result.json").read_text())
    result["wall_s"] = time.perf_counter() - start
    return result


def mean_sd(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="uib", choices=sorted(SEARCHERS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=250,
                        help="TuNAS steps per stage of the two-stage search (one-stage TuNAS and the "
                             "differentiable search: twice as many)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="the evaluator's epochs for every training (default: the evaluator's, 2)")
    parser.add_argument("--searchers", nargs="+", default=None,
                        choices=sorted({s for labels in SEARCHERS.values() for s in labels}),
                        help="default: all of the space's: "
                             + "; ".join(f"{k}: {' '.join(v)}" for k, v in SEARCHERS.items()))
    parser.add_argument("--percentiles", nargs="+", type=float, default=[50, 25],
                        help="budgets: percentiles of the cpu latency over 200 random networks")
    parser.add_argument("--data", default="mnist5k_clutter")
    parser.add_argument("--truth-seeds", type=int, default=2, help="fresh trainings of every found network")
    parser.add_argument("--jobs", type=int, default=2, help="searches and trainings in parallel (one thread each)")
    parser.add_argument("--tunas-aim-only", action="store_true",
                        help="give TuNAS the budget only as its aim (searcher.aim_cost), not as budget=")
    parser.add_argument("--save", help="also write every search's result, the fresh trainings and the measured "
                                       "latencies to this JSON file")
    args = parser.parse_args()
    labels = args.searchers or list(SEARCHERS[args.space])
    unknown = [s for s in labels if s not in SEARCHERS[args.space]]
    if unknown:
        parser.error(f"--searchers {' '.join(unknown)}: not run on {args.space}; its searchers are "
                     f"{', '.join(SEARCHERS[args.space])}")

    data = nas.get_dataset(args.data)
    space = space_for(args.space, data)
    evaluator = nas.get_evaluator("train", **({"epochs": args.epochs} if args.epochs else {}))
    lut = nas.get_cost_model("lut", space=space, target="cpu")  # this machine's (built once when missing)
    rng = np.random.default_rng(0)  # as TuNAS's default aim: 200 random networks
    costs = [lut.arch_cost(space, space.sample(rng)) for _ in range(200)]
    budgets = {p: float(np.percentile(costs, p)) for p in args.percentiles}
    # the weight-sharing searcher's default batch sizes, as the runs use them
    shared = nas.get_searcher("tunas" if args.space == "uib" else "differentiable")
    per_evaluation = evaluator.recipe.epochs * len(data.train)
    shared_examples = 2 * args.steps * shared.batch_size + per_evaluation
    n_evals = max(1, round(shared_examples / per_evaluation))
    print(f"{args.space} on {args.data} ({len(data.train)} training, {len(data.val)} validation images), "
          f"{evaluator.recipe.epochs} epochs per training, {lut.provenance(short=True) or 'this machine'}; budgets: "
          + ", ".join(f"p{p:g} {b:.3f} ms" for p, b in budgets.items()))
    reward = (f" (plus {2 * args.steps * shared.reward_batch_size:,} forward-only reward examples)"
              if args.space == "uib" else "")
    print(f"compute per search: {'TuNAS' if args.space == 'uib' else 'differentiable'} {2 * args.steps} supernet "
          f"steps of {shared.batch_size} + retraining {per_evaluation:,} = {shared_examples:,} examples{reward}; "
          f"random / TPE {n_evals} evaluations of {per_evaluation:,} = {n_evals * per_evaluation:,}")

    jobs = [(label, seed, budget, searcher_args(label, budget, args.steps, n_evals, args.tunas_aim_only),
             args.space, args.data, evaluator.recipe.epochs)
            for p, budget in budgets.items() for seed in range(args.seeds) for label in labels]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out, ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_search, [(*job, out) for job in jobs]))
    print(f"{len(jobs)} searches in {time.perf_counter() - start:.0f} s")

    found = {r["best"]["arch_key"]: r["best"]["arch"] for r in results if r["best"]}
    start = time.perf_counter()
    by_seed = train_alone_many(args.space, args.data, list(found.values()),
                               [1000 + s for s in range(args.truth_seeds)], evaluator.recipe.epochs, args.jobs)
    truth = {key: [accuracies[i] for accuracies in by_seed] for i, key in enumerate(found)}
    print(f"{len(found)} distinct networks trained again under {args.truth_seeds} seeds in "
          f"{time.perf_counter() - start:.0f} s")

    from nas.lut import measure_in_fresh_process
    measured = {}
    for key, arch in found.items():  # one at a time: nothing else runs
        timing, _ = measure_in_fresh_process(space, space.validate(nas.Arch(arch)), lut.lut.settings)
        measured[key] = timing.ms
    if args.save:
        Path(args.save).write_text(json.dumps({
            "budgets": budgets, "searches": [{"searcher": job[0], "seed": job[1], "budget": job[2], **r}
                                             for job, r in zip(jobs, results)],
            "fresh_seed_accuracy": truth, "measured_ms": measured}, indent=1))

    noise = [abs(a[0] - a[1]) for a in truth.values()] if args.truth_seeds > 1 else []
    random_evals = [e["quality"] for r, job in zip(results, jobs) if job[0] == "random" for e in r["history"]]
    if len(random_evals) > 1 and noise:
        print(f"the setting: random networks' accuracy {100 * min(random_evals):.1f}-{100 * max(random_evals):.1f}% "
              f"(sd {100 * statistics.stdev(random_evals):.2f} points over {len(random_evals)}); the same network "
              f"under two seeds differs by {100 * statistics.mean(noise):.2f} points on average")
    print(f"\n{'budget':<18} {'searcher':<14} {'accuracy (fresh seeds)':>22} {'own figure':>10} {'LUT ms':>14} "
          f"{'measured ms':>14} {'within':>6} {'examples':>9} {'wall s':>7}")
    for p, budget in budgets.items():
        for label in labels:
            rows = [r for r, job in zip(results, jobs) if job[0] == label and job[2] == budget]
            best = [r["best"] for r in rows if r["best"]]
            keys = [b["arch_key"] for b in best]
            accuracy = [statistics.mean(truth[k]) for k in keys]
            examples = shared_examples if label in WEIGHT_SHARING else n_evals * per_evaluation
            within = sum(b["cost"] <= budget for b in best)
            print(f"p{p:g} {budget:>7.3f} ms    {label:<14} {mean_sd(accuracy):>22} "
                  f"{statistics.mean(b['quality'] for b in best):>10.3f} {mean_sd(b['cost'] for b in best):>14} "
                  f"{mean_sd(measured[k] for k in keys):>14} {within:>3}/{len(best):<2} {examples:>9,} "
                  f"{statistics.mean(r['wall_s'] for r in rows):>7.0f}")


if __name__ == "__main__":
    main()
