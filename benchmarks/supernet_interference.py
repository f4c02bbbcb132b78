"""Why the UIB supernet ranks paths poorly: how much its paths interfere, by kind of decision.

For each setting, a UIB supernet is trained as ``supernet_ranking.py``'s ``uniform``
variant is (SliceSGD, cosine schedule from 0.1, batch 64, ``--steps``), except that its
paths vary only in the setting's kinds of decision, every other decision held at the
space's default arch (IB blocks of expansion 4 with a 3x3 middle depthwise, each stage at
its first width and depth). Kinds: ``width`` and ``depth`` (per stage), ``kernels`` (both
depthwise kernels of a block, 0 = none), ``expansion``, ``fused`` (Fused-IB or not).
A setting is ``none`` (one fixed path), ``all``, kinds joined by ``+`` (``kernels+fused``),
or ``all-KIND`` (every kind but one). Printed per setting: the training accuracy of the
sampled paths over the last fifth of the steps, and the accuracy with inherited weights
(BatchNorm recalibrated) of ``--paths`` paths drawn the same way: where one fixed path
learns the task in the steps given, the drop with more kinds varied is what the shared
weights lose to serving them all.

    python benchmarks/supernet_interference.py [--settings none width ... all] [--steps 500]
                                               [--data mnist5k_clutter] [--paths 6] [--jobs 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, not an installed copy
import nas  # noqa: E402
from nas.training.supernet import inherited_accuracy  # noqa: E402
from supernet_ranking import space_for, train_uib_supernet  # noqa: E402

#: kind of decision -> the suffixes of its decisions' names
KINDS = {"width": ("_width",), "depth": ("_depth",), "kernels": ("_start_dw", "_mid_dw"),
         "expansion": ("_expansion",), "fused": ("_fused",)}
DEFAULT_SETTINGS = ("none", "width", "depth", "kernels", "expansion", "fused", "all")


def kinds_of(setting: str) -> tuple[str, ...]:
    """The kinds of decision a setting varies; ValueError naming the accepted forms."""
    if setting == "none":
        return ()
    if setting == "all":
        return tuple(KINDS)
    if setting.startswith("all-") and setting[4:] in KINDS:
        return tuple(k for k in KINDS if k != setting[4:])
    kinds = tuple(setting.split("+"))
    if all(k in KINDS for k in kinds):
        return kinds
    raise ValueError(f"setting {setting!r}: use none, all, all-KIND or KIND[+KIND...] with KIND one of "
                     f"{', '.join(KINDS)}")


def path_sampler(space, kinds: tuple[str, ...]):
    """``sample(rng)``: a uniform draw of the decisions of ``kinds``, the rest the default arch's."""
    base = space.default_arch()
    suffixes = tuple(s for k in kinds for s in KINDS[k])
    varied = [d.name for d in space.decisions() if suffixes and d.name.endswith(suffixes)]

    def sample(rng):
        drawn = space.sample(rng)
        return space.validate(space.canonicalize(base.replace(**{n: drawn[n] for n in varied})))
    return sample


def one_setting(job: tuple) -> tuple:
    setting, data_name, steps, n_paths, seed = job
    torch.set_num_threads(1)
    data = nas.get_dataset(data_name)
    space = space_for("uib", data)
    sample = path_sampler(space, kinds_of(setting))
    hits: list[float] = []
    start = time.time()
    supernet = train_uib_supernet(space, data, steps, 64, 0.1, False, seed, sample=sample, hits=hits)
    seconds = time.time() - start
    rng = np.random.default_rng(seed + 1)
    inherited = [inherited_accuracy(supernet, sample(rng), data, space.input_shape, 256, "cpu")
                 for _ in range(n_paths)]
    return setting, float(np.mean(hits[-max(1, steps // 5):])), inherited, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--data", default="mnist5k_clutter")
    parser.add_argument("--paths", type=int, default=6, help="paths whose inherited accuracy is measured per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="settings trained in parallel (one thread each)")
    args = parser.parse_args()
    for setting in args.settings:
        try:
            kinds_of(setting)
        except ValueError as e:
            parser.error(str(e))
    jobs = [(s, args.data, args.steps, args.paths, args.seed) for s in args.settings]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one_setting, jobs))
    print(f"uib supernets on {args.data}, {args.steps} steps of 64 each, paths varying only in the kinds named "
          f"(the rest the default arch's); inherited: {args.paths} paths drawn the same way")
    print(f"{'varied':<24}{'training accuracy, last fifth':>30}{'inherited mean (min-max)':>30}{'seconds':>9}")
    for setting, train_accuracy, inherited, seconds in results:
        print(f"{setting:<24}{100 * train_accuracy:>29.1f}%{100 * np.mean(inherited):>14.1f}% "
              f"({100 * min(inherited):.1f}-{100 * max(inherited):.1f}){seconds:>9.0f}")


if __name__ == "__main__":
    main()
