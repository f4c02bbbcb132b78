"""DeepReShape's ReLU-reuse against conventional channel scaling, at the same ReLU budgets.

On the embedded data (``mnist5k``: 28x28x1, 10 classes), an HRN network (``--hrn``,
default HRN-2x5x2x, m = 16, phi = 2: App. E's networks have alpha = 2) has its ReLUs cut by
a factor N in {2, 4, 8} (``--factors``) in two ways, as in DeepReShape's Fig. 16:

- conventional channel scaling (DeepReDuce's reshaping): m = 16 / N, every stage N times
  narrower, so its ReLUs fall by N too;
- ReLU-reuse with factor N in every block (width kept; the stem's ReLU stays as it is).

Every network is trained from scratch for ``--epochs`` (SGD, cosine schedule) with the
same seed, and the table lists its ReLUs per image (total and stagewise), MACs and
validation accuracy; the last column is ReLU-reuse's accuracy minus channel scaling's at
the same factor N. Training runs on one thread; about 10 minutes with the defaults.

    python benchmarks/relu_reuse.py [--hrn hrn_2x5x2x] [--factors 2 4 8] [--epochs 3] [--seeds 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, not an installed copy


def main() -> None:
    import numpy as np
    import torch

    import nas
    from nas.training.evaluator import TrainEvaluator

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hrn", default="hrn_2x5x2x", help="a preset of relu_reuse at grid=published")
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per network (accuracy averaged)")
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = nas.get_dataset("mnist5k")
    ms = sorted({16 // n for n in args.factors if 16 % n == 0} | {16})
    space = nas.get_space("relu_reuse", grid="published", resolution=data.resolution, in_channels=data.in_channels,
                          num_classes=data.num_classes, ms=ms)
    base = space.preset(args.hrn)
    stages = range(1, 5)
    networks = [("base", 1, base)]
    for n in args.factors:
        if 16 % n:
            raise SystemExit(f"--factors: channel scaling of m = 16 by 1/{n} is not a whole width; use 2, 4, 8 or 16")
        networks.append(("channel scaling", n, space.scale_channels(base, 1 / n)))
        networks.append(("ReLU-reuse", n, space.treat_stages(base, stages, f"reuse{n}")))

    print(f"{args.hrn} on mnist5k ({len(data.train)} training, {len(data.val)} validation images), "
          f"{args.epochs} epochs, {args.seeds} seed(s)")
    rows = []
    for method, n, arch in networks:
        accs, seconds = [], 0.0
        for seed in range(args.seeds):
            ev = TrainEvaluator(epochs=args.epochs, batch_size=128, lr=args.lr, device="cpu", seed=seed)
            ev.bind(space, data)
            start = time.perf_counter()
            accs.append(ev.evaluate(space, arch).quality)
            seconds += time.perf_counter() - start
        relus = space.stage_relus(arch)
        macs = sum(op.macs() for op in space.ops(arch))
        rows.append((method, n, relus, macs, float(np.mean(accs)), seconds))
        print(f"  trained {method} N={n} in {seconds:.0f} s", flush=True)

    scaled = {n: acc for method, n, _, _, acc, _ in rows if method == "channel scaling"}
    print(f"\n{'network':<22} {'ReLUs':>8} {'stagewise ReLUs':<30} {'MACs':>7} {'accuracy':>8} {'reuse - scaling':>15}")
    for method, n, relus, macs, acc, _ in rows:
        name = method if n == 1 else f"{method} N={n}"
        gain = f"{acc - scaled[n]:+.4f}" if method == "ReLU-reuse" else ""
        print(f"{name:<22} {sum(relus):>8,} {str(relus):<30} {macs / 1e6:>6.1f}M {acc:>8.4f} {gain:>15}")


if __name__ == "__main__":
    main()
