"""Mean regret of the random and Optuna (TPE) searchers on NAS-Bench-201 (CIFAR-10 table).

Regret = best accuracy in the table minus the best accuracy found, in percentage points,
after 50, 100 and 200 evaluations (distinct architectures), averaged over 20 seeds.

    python benchmarks/searchers_nb201.py [--seeds 20] [--checkpoints 50 100 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import nas


def regrets(searcher_name: str, cfg: dict, seeds: int, checkpoints: list[int]) -> tuple[np.ndarray, float]:
    space = nas.get_space("nb201")
    top = space.benchmark_table().best()[1]
    out = np.zeros((seeds, len(checkpoints)))
    start = time.perf_counter()
    for seed in range(seeds):
        searcher = nas.get_searcher(searcher_name, n_evals=max(checkpoints), **cfg)
        result = nas.search(space, searcher, "macs", "table", seed=seed, study_name=f"{searcher_name}-{seed}")
        best_so_far = np.maximum.accumulate([e.quality for e in result.history])
        out[seed] = [100 * (top - best_so_far[c - 1]) for c in checkpoints]
    return out, (time.perf_counter() - start) / seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[50, 100, 200])
    args = parser.parse_args()
    top_key, top = nas.get_space("nb201").benchmark_table().best()
    print(f"NAS-Bench-201 CIFAR-10: best accuracy {100 * top:.4f}% ({top_key})")
    print(f"mean regret in percentage points over {args.seeds} seeds (std in brackets)")
    header = f"{'searcher':<14}" + "".join(f"{f'after {c}':>18}" for c in args.checkpoints) + f"{'s/search':>10}"
    print(header)
    rows = {}
    for label, name, cfg in (("random", "random", {}), ("optuna (TPE)", "optuna", {"sampler": "tpe"})):
        r, secs = regrets(name, cfg, args.seeds, args.checkpoints)
        rows[label] = r
        cells = "".join(f"{m:>11.3f} ({s:.3f})" for m, s in zip(r.mean(0), r.std(0)))
        print(f"{label:<14}{cells}{secs:>10.2f}")
    ratio = rows["optuna (TPE)"].mean(0) / rows["random"].mean(0)
    print(f"{'TPE / random':<14}" + "".join(f"{x:>18.2f}" for x in ratio))


if __name__ == "__main__":
    main()
