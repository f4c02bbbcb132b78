"""Small seeded searches of every searcher, printed as one fingerprint per run.

A refactoring must not change what a searcher finds for a seed. Run this before a change
with ``--save before.json`` and after it with ``--compare before.json``: every run's best
architecture, quality, cost and its whole history (rounded to 1e-9) are compared and the
differences printed.

    python benchmarks/seeded_runs.py --save /tmp/before.json
    python benchmarks/seeded_runs.py --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import nas

HANT_POOL = ["teacher", "identity", "efn_k3_e3", "efnv2_k3_e1_se0.04", "cb_res_k3", "cb_stack_k3_w0.5",
             "conv_cs_k1_w1", "repvgg_k3", "vit_d1_w32_h4", "bot_trans_e1", "lambda_e0.5"]


def trained(space, n, batch_size=64, num_classes=4):
    data = nas.get_dataset("synthetic", n=n, num_classes=num_classes, resolution=space.resolution,
                           in_channels=space.in_channels)
    return nas.get_evaluator("train", epochs=1, batch_size=batch_size), data


def tiny(name, **kw):
    return nas.get_space(name, resolution=16, in_channels=kw.pop("in_channels", 1), num_classes=4, **kw)


def run_random():
    return nas.search("nb201", nas.get_searcher("random", n_evals=20), "macs", "table", seed=3)


def run_tpe():
    return nas.search("nb201", nas.get_searcher("optuna", sampler="tpe", n_evals=25), "macs", "table",
                      budget=60e6, seed=3)


def run_nsga2():
    return nas.search("nb201", nas.get_searcher("optuna", sampler="nsga2", n_evals=30, population_size=10),
                      "macs", "table", seed=0)


def run_tunas():
    space = tiny("uib")
    evaluator, data = trained(space, 256)
    return nas.search(space, nas.get_searcher("tunas", steps=8, batch_size=16, reward_batch_size=32, warmup=0.5),
                      "macs", evaluator, data=data, seed=0)


def run_differentiable():
    space = tiny("afrb", width_mult=0.25)
    evaluator, data = trained(space, 128, batch_size=32)
    searcher = nas.get_searcher("differentiable", steps=6, batch_size=16, snapshots=3, penalty_weight=1.0,
                                cost_weight=0.5, evaluate_base=True, alpha_init=1.0, arch_lr=0.01)
    return nas.search(space, searcher, "macs", evaluator, data=data, seed=0)


def run_ilp():
    space = tiny("hant", in_channels=3, pool=HANT_POOL,
                 teacher_arch={"s1_b1_expansion": 6, "s2_b1_expansion": 6, "s3_b1_expansion": 6})
    evaluator, data = trained(space, 400)
    searcher = nas.get_searcher("ilp", k=4, overlap=1, teacher_epochs=1, pretrain_batches=3, held_out=96,
                                finetune_epochs=1, measure_latency=False)
    return nas.search(space, searcher, "macs", evaluator, data=data, seed=0)


def run_nnmass():
    space = nas.get_space("convnext_scaled", resolution=224, num_classes=1000)
    return nas.search(space, "nnmass", "macs", "nnmass", seed=0)


def run_deepreduce():
    data = nas.get_dataset("synthetic", n=256)
    space = nas.get_space("relu_reuse", resolution=data.resolution, in_channels=data.in_channels,
                          num_classes=data.num_classes)
    evaluator = nas.get_evaluator("train", epochs=1, batch_size=64, lr=0.05)
    return nas.search(space, nas.get_searcher("deepreduce", distill=False), "relu", evaluator, data=data, seed=0)


RUNS = {"random": run_random, "optuna_tpe": run_tpe, "optuna_nsga2": run_nsga2, "tunas": run_tunas,
        "differentiable": run_differentiable, "ilp": run_ilp, "nnmass": run_nnmass, "deepreduce": run_deepreduce}


#: extras keys renamed since a saved fingerprint (old -> new), compared under their new names
RENAMED = {"target_cost": "aim_cost", "target_from": "aim_from"}


def fingerprint(result) -> dict:
    def row(e):
        return [e.arch.key(), round(float(e.quality), 9), round(float(e.cost), 9)]

    def steady(value):  # the extras without wall-clock times (and the printed report, which shows them), rounded
        if isinstance(value, dict):
            return {RENAMED.get(k, k): steady(v) for k, v in value.items()
                    if k != "report" and not any(w in k for w in ("seconds", "latency", "time"))}
        if isinstance(value, (list, tuple)):
            return [steady(v) for v in value]
        return round(value, 9) if isinstance(value, float) else value

    history = [row(e) for e in result.history]
    best = result.best
    extras = json.dumps(steady(result.extras), sort_keys=True, default=str)
    return {"best": row(best) if best is not None else None, "n_evals": len(history),
            "history_sha": hashlib.sha256(json.dumps(history).encode()).hexdigest()[:16],
            "extras_sha": hashlib.sha256(extras.encode()).hexdigest()[:16]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=list(RUNS), help=f"any of {', '.join(RUNS)}")
    parser.add_argument("--save", help="write the fingerprints to this JSON file")
    parser.add_argument("--compare", help="compare against fingerprints saved with --save")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.runs) - set(RUNS))
    if unknown:
        parser.error(f"unknown run(s) {unknown}; known: {', '.join(RUNS)}")
    prints = {}
    for name in args.runs:
        start = time.perf_counter()
        prints[name] = fingerprint(RUNS[name]())
        print(f"{name:>15}: {json.dumps(prints[name])}  ({time.perf_counter() - start:.1f} s)", flush=True)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(prints, f, indent=1)
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        differ = [n for n in prints if n in before and before[n] != prints[n]]
        for n in differ:
            print(f"DIFFERS {n}: before {json.dumps(before[n])}\n{'':>15}  now {json.dumps(prints[n])}")
        same = [n for n in prints if n in before and n not in differ]
        print(f"same as before: {len(same)} of {len(prints)} ({', '.join(same)})")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
