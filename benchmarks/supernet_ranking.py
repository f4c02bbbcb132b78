"""Supernet ranking: Kendall's tau between the accuracy of paths with weights inherited from
a trained supernet (BatchNorm recalibrated) and their accuracy trained alone.

``--space uib``: the UIB supernet, trained as TuNAS's shared weights are (SliceSGD, cosine
schedule, batch 64) on uniformly sampled paths (``uniform``); ``sandwich`` also trains the
largest and the smallest path each step and the sampled paths learn from the largest one's
soft labels (in-place distillation, as in BigNAS / OFA), at four paths' work per step;
``tunas`` is the supernet as ``searcher=tunas searcher.stages=1`` trains it (``--steps``
steps, its defaults otherwise: the filter warm-up, paths drawn from the controller, whose
reward aims at the median cost of 200 random networks by MACs).

``--space afrb``: RAN-e's PReLU SuperNet, a path being a form per unit (kernels the base's,
3): its weights with every unit's alpha pinned at 0 (``I``) or 1 (``R``).
``searched`` is the SuperNet as the ``differentiable`` searcher trains it (weights and alphas
together on cross-entropy + 0.01 x the alpha penalty, its defaults, ``--steps`` steps);
``uniform`` trains the weights alone, each step on a path whose forms are drawn uniformly.

``--paths`` distinct paths are drawn uniformly; each is built by the space and trained alone
by the `train` evaluator (the default recipe: 2 epochs) under two seeds, whose own tau is
the ceiling any supernet can reach on this task. Each accuracy's Kendall tau against the
paths' MACs says whether a ranking follows size (a supernet that favours small or large
paths shows it there). ``--save`` writes every path's decisions, MACs and accuracies (JSON).

    python benchmarks/supernet_ranking.py [--space uib] [--paths 20] [--steps 500] [--variants ...]
                                          [--data mnist5k] [--jobs 1] [--save paths.json]
                                          [--alone-from paths.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, not an installed copy
import nas  # noqa: E402
from nas.training.harness import cosine_lr, set_lr  # noqa: E402
from nas.training.supernet import inherited_accuracy, ranking_agreement  # noqa: E402
from nas.training.train import load_batch, sample_indices  # noqa: E402

#: each space's supernet variants (the first is the default)
VARIANTS = {"uib": ("uniform", "sandwich", "tunas"), "afrb": ("searched", "uniform")}

#: per worker process: the data set, its space and one bound evaluator per (seed, epochs)
WORKER: dict = {}


def space_for(space_name: str, data):
    """``space_name`` at the data set's shape and classes, as the CLI fills them."""
    return nas.get_space(space_name, resolution=data.resolution, in_channels=data.in_channels,
                         num_classes=data.num_classes)


def train_alone(job: tuple) -> float:
    """The accuracy of ``arch`` (its decisions) of space ``space_name`` at ``data_name``'s
    shape, trained alone by the ``train`` evaluator under ``seed`` for ``epochs`` (the
    default recipe otherwise). One thread: workers run side by side."""
    space_name, data_name, arch, seed, epochs = job
    torch.set_num_threads(1)
    if WORKER.get("problem") != (space_name, data_name):
        WORKER.clear()
        data = nas.get_dataset(data_name)
        WORKER.update(problem=(space_name, data_name), data=data, space=space_for(space_name, data))
    if (seed, epochs) not in WORKER:
        evaluator = nas.get_evaluator("train", seed=seed, epochs=epochs)
        evaluator.bind(WORKER["space"], WORKER["data"])
        WORKER[seed, epochs] = evaluator
    space = WORKER["space"]
    return WORKER[seed, epochs].evaluate(space, space.validate(nas.Arch(arch))).quality


def train_alone_many(space_name: str, data_name: str, archs: list, seeds: list[int], epochs: int,
                     jobs: int) -> list[list[float]]:
    """``train_alone`` of every arch under every seed, ``jobs`` at a time: per seed, the
    accuracies in the order of ``archs``."""
    work = [(space_name, data_name, dict(a), s, epochs) for s in seeds for a in archs]
    with ProcessPoolExecutor(jobs) as pool:
        accuracies = list(pool.map(train_alone, work))
    return [accuracies[i * len(archs):(i + 1) * len(archs)] for i in range(len(seeds))]


def extreme_path(space, pick):
    """Each numeric decision at its largest (``max``) or smallest (``min``) option; others
    at the default arch's."""
    base = dict(space.default_arch())
    for d in space.decisions():
        if all(isinstance(o, (int, float)) for o in d.options):
            base[d.name] = pick(d.options)
    return space.validate(nas.Arch(base))


def sample_path(space, rng, base):
    """A uniformly drawn path; on afrb its forms only (the kernels are ``base``'s, the
    only ones the SuperNet holds)."""
    arch = space.sample(rng)
    if space.name == "afrb":
        arch = base.replace(**{f"u{u.index}_form": arch[f"u{u.index}_form"] for u in space.units})
    return arch


def train_shared_weights(space, data, supernet, optimizer, lr: float, steps: int, batch_size: int, seed: int,
                         backward) -> None:
    """``steps`` steps of ``optimizer`` (cosine schedule from ``lr``) on batches of
    ``batch_size``; ``backward(x, y, rng)`` computes one step's gradients."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    pool = torch.arange(len(data.train))
    supernet.train()
    for step in range(steps):
        set_lr(optimizer, cosine_lr(lr, step, steps))
        x, y = load_batch(data, sample_indices(pool, batch_size, gen), space.input_shape, "cpu")
        optimizer.zero_grad(set_to_none=True)
        backward(x, y, rng)
        optimizer.step()


def train_uib_supernet(space, data, steps: int, batch_size: int, lr: float, sandwich: bool, seed: int,
                       sample=None, hits: list | None = None):
    """The UIB supernet after ``steps`` on paths drawn by ``sample(rng)`` (default: the
    space's uniform draw); ``hits``, when given, receives each step's training accuracy of
    its sampled path (the first, with the sandwich rule)."""
    torch.manual_seed(seed)
    supernet = space.supernet().to(memory_format=torch.channels_last)
    largest, smallest = extreme_path(space, max), extreme_path(space, min)
    sample = sample or space.sample

    def backward(x, y, rng):
        if sandwich:
            logits = supernet(x, largest)
            F.cross_entropy(logits, y).backward()
            soft = logits.detach().softmax(1)
            for i, arch in enumerate((smallest, sample(rng), sample(rng))):
                path_logits = supernet(x, arch)
                F.cross_entropy(path_logits, soft).backward()
                if hits is not None and i == 1:
                    hits.append(float((path_logits.argmax(1) == y).float().mean()))
        else:
            logits = supernet(x, sample(rng))
            F.cross_entropy(logits, y).backward()
            if hits is not None:
                hits.append(float((logits.argmax(1) == y).float().mean()))

    train_shared_weights(space, data, supernet, supernet.optimizer(lr, momentum=0.9, weight_decay=4e-5), lr,
                         steps, batch_size, seed, backward)
    return supernet


def search_problem(space, data, seed: int):
    """A search problem on ``data`` priced by MACs: what a searcher's own supernet training needs."""
    evaluator = nas.get_evaluator("train", seed=seed)
    evaluator.bind(space, data)
    return nas.SearchProblem(space, nas.get_cost_model("macs"), evaluator, seed=seed, show_progress=False)


def train_tunas_supernet(space, data, steps: int, batch_size: int, lr: float | None, seed: int):
    """The UIB supernet after a one-stage TuNAS search of ``steps`` steps (its own training,
    controller and warm-up; costs by MACs)."""
    searcher = nas.get_searcher("tunas", stages=1, steps=steps, batch_size=batch_size, measure_latency=False,
                                **({"lr": lr} if lr is not None else {}))
    return searcher.train_supernet(search_problem(space, data, seed))[2]


def train_afrb_supernet(space, data, steps: int, batch_size: int, lr: float | None, searched: bool, seed: int):
    """The AFRB SuperNet after ``steps``: trained by the ``differentiable`` searcher itself
    (``searched``), or its weights alone on uniformly drawn paths, with the searcher's
    optimizer settings."""
    searcher = nas.get_searcher("differentiable", steps=steps, batch_size=batch_size,
                                **({"lr": lr} if lr is not None else {}))
    if searched:
        return searcher.train_relaxation(search_problem(space, data, seed))[1]
    torch.manual_seed(seed)
    base = space.default_arch()
    supernet = space.relaxed(base).to(memory_format=torch.channels_last)

    def backward(x, y, rng):
        supernet.pin(sample_path(space, rng, base))
        F.cross_entropy(supernet(x), y).backward()

    train_shared_weights(space, data, supernet,
                         supernet.weight_optimizer(searcher.lr, searcher.momentum, searcher.weight_decay),
                         searcher.lr, steps, batch_size, seed, backward)
    return supernet


def saved_paths(path: str, space, data_name: str, epochs: int) -> tuple[list, list[list[float]]]:
    """The paths of a ``--save`` file and, per seed, their accuracies trained alone; SystemExit
    when the file is of another space, data set or number of epochs, or not such a file."""
    try:
        saved = json.loads(Path(path).read_text())
        found = {key: saved[key] for key in ("space", "data", "epochs")}
        paths = [space.validate(nas.Arch(p["arch"])) for p in saved["paths"]]
        alone = [[p["alone"][i] for p in saved["paths"]] for i in range(2)]
    except (OSError, ValueError, KeyError, IndexError, TypeError, nas.NASError) as e:
        raise SystemExit(f"--alone-from {path}: not a file written by --save ({type(e).__name__}: {e})")
    wanted = {"space": space.name, "data": data_name, "epochs": epochs}
    if found != wanted:
        raise SystemExit(f"--alone-from {path}: its paths are of {found}, this run's of {wanted}")
    return paths, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="uib", choices=sorted(VARIANTS))
    parser.add_argument("--paths", type=int, default=20)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None,
                        help="supernet learning rate (default: uib 0.1, as TuNAS; the tunas variant and afrb: "
                             "their searcher's own)")
    parser.add_argument("--variants", nargs="+", default=None,
                        choices=sorted({v for vs in VARIANTS.values() for v in vs}),
                        help="how the supernet is trained, each variant its own supernet (default: all of "
                             "the space's: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in VARIANTS.items()) + ")")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--epochs", type=int, default=2, help="standalone training of each path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="paths trained alone in parallel (one thread each)")
    parser.add_argument("--save", help="also write every path's decisions, MACs and accuracies to this JSON file")
    parser.add_argument("--alone-from", help="a file written by --save: rank its paths against its accuracies trained "
                                             "alone (of the same space, data and epochs) instead of drawing and "
                                             "training paths")
    args = parser.parse_args()
    variants = args.variants or list(VARIANTS[args.space])
    unknown = [v for v in variants if v not in VARIANTS[args.space]]
    if unknown:
        parser.error(f"--variants {' '.join(unknown)}: not a variant of {args.space}; its variants are "
                     f"{', '.join(VARIANTS[args.space])}")
    torch.set_num_threads(1)

    data = nas.get_dataset(args.data)
    space = space_for(args.space, data)
    if args.alone_from:
        paths, alone = saved_paths(args.alone_from, space, args.data, args.epochs)
    else:
        rng = np.random.default_rng(args.seed)
        base = space.default_arch()
        paths, keys = [], set()
        while len(paths) < args.paths:
            arch = sample_path(space, rng, base)
            if arch.key() not in keys:
                keys.add(arch.key())
                paths.append(arch)
    inherited, supernet_seconds = {}, {}
    for variant in variants:
        start = time.time()
        if variant == "tunas":
            supernet = train_tunas_supernet(space, data, args.steps, args.batch_size, args.lr, args.seed)
        elif args.space == "uib":
            supernet = train_uib_supernet(space, data, args.steps, args.batch_size, args.lr or 0.1,
                                          variant == "sandwich", args.seed)
        else:
            supernet = train_afrb_supernet(space, data, args.steps, args.batch_size, args.lr,
                                           variant == "searched", args.seed)
        supernet_seconds[variant] = time.time() - start
        inherited[variant] = [inherited_accuracy(supernet, a, data, space.input_shape, 256, "cpu") for a in paths]
        if variant == "searched":
            alphas = np.array(list(supernet.state().values()))
            print(f"{variant}: alphas at the end {alphas.min():+.2f} to {alphas.max():+.2f} "
                  f"(mean {alphas.mean():+.2f})")
    if args.alone_from:
        alone_text = f"trained alone for {args.epochs} epochs under 2 seeds as read from {args.alone_from}"
    else:
        start = time.time()
        alone = train_alone_many(args.space, args.data, paths, [args.seed, args.seed + 1], args.epochs, args.jobs)
        alone_text = f"each trained alone for {args.epochs} epochs under 2 seeds ({time.time() - start:.0f} s)"
    print(f"{args.space} on {args.data} ({space.resolution}x{space.resolution}x{space.in_channels}, "
          f"{space.num_classes} classes), {len(paths)} paths, {alone_text}; supernets of {args.steps} steps of "
          f"{args.batch_size}: "
          + ", ".join(f"{v} ({supernet_seconds[v]:.0f} s)" for v in variants))
    mean_alone = np.mean(alone, 0)
    print(f"accuracy trained alone: {100 * mean_alone.min():.2f}-{100 * mean_alone.max():.2f}% "
          f"(seed-to-seed difference {100 * np.mean(np.abs(np.subtract(*alone))):.2f} points on average)")
    rows = [(f"{v}: inherited vs alone (mean of 2 seeds)", inherited[v], mean_alone) for v in variants]
    rows.append(("alone seed 1 vs alone seed 2 (the ceiling)", alone[0], alone[1]))
    for v in variants:
        print(f"{v}: accuracy with inherited weights {100 * min(inherited[v]):.2f}-{100 * max(inherited[v]):.2f}%")
    for label, a, b in rows:
        r = ranking_agreement(a, b)
        print(f"{label:<48} Kendall tau {r['kendall_tau']:+.3f}   Spearman {r['spearman']:+.3f}")
    macs = [nas.get_cost_model("macs").arch_cost(space, a) for a in paths]
    by_size = [(f"{v}: inherited", inherited[v]) for v in variants] + [("alone (mean of 2 seeds)", mean_alone)]
    print("Kendall tau against the paths' MACs: " + ", ".join(
        f"{label} {ranking_agreement(a, macs)['kendall_tau']:+.3f}" for label, a in by_size))
    if args.save:
        Path(args.save).write_text(json.dumps({
            "space": args.space, "data": args.data, "steps": args.steps, "epochs": args.epochs,
            "paths": [{"arch": dict(a), "macs": m, "alone": [float(s[i]) for s in alone],
                       "inherited": {v: float(inherited[v][i]) for v in variants}}
                      for i, (a, m) in enumerate(zip(paths, macs))]}, indent=1))
        print(f"every path's figures: {args.save}")


if __name__ == "__main__":
    main()
