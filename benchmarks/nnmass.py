"""RAN-i's training-free scaling: how fast NN-Mass scores candidates, and how well it ranks them.

Prints

1. the time to score every candidate of ``convnext_scaled`` at 224 px (RAN-i's 800 width x
   depth multipliers: MACs, params, the cost model's cost and NN-Mass, as the ``nnmass``
   searcher does), against the time of one forward pass of ConvNeXt-T at batch 1 on this
   CPU (the cheapest thing a training-based ranking would have to do per candidate);
2. on the embedded data (``mnist5k``: 28x28x1, 10 classes) with a small ConvNeXt base
   (stem stride 2, widths 16-32-64-128, depths 1-1-3-1), the candidates within
   ``--tolerance`` of a MACs budget (``--budget-ratio`` x the base's MACs) ranked by NN-Mass;
   the ``--per-end`` highest and lowest are trained for ``--epochs`` (AdamW) and the Kendall
   tau between NN-Mass and validation accuracy is printed, with MACs' for comparison.

    python benchmarks/nnmass.py [--epochs 3] [--per-end 3] [--budget-ratio 1.0] [--tolerance 0.1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, not an installed copy


def main() -> None:
    import torch
    from scipy.stats import kendalltau

    import nas
    from nas.search import SearchProblem

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-end", type=int, default=3)
    parser.add_argument("--budget-ratio", type=float, default=1.0)
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    # 1. scoring speed
    space = nas.get_space("convnext_scaled", resolution=224, num_classes=1000)
    searcher = nas.get_searcher("nnmass")
    problem = SearchProblem(space, nas.get_cost_model("macs"), nas.get_evaluator("nnmass"), show_progress=False)
    start = time.perf_counter()
    rows = searcher.score(problem, searcher.candidates(space, 0))
    scoring = time.perf_counter() - start
    model = space.build(space.preset("convnext_t")).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        model(x)
        forward = time.perf_counter() - start
    print(f"1. scored {len(rows)} distinct candidates ({space.size()} multiplier pairs) in {scoring:.3f} s "
          f"({scoring / len(rows) * 1e3:.2f} ms each); one ConvNeXt-T forward pass at 224 (batch 1, 1 thread): "
          f"{forward:.3f} s; scoring all / one forward pass = {scoring / forward:.2f}")

    # 2. NN-Mass vs accuracy after short training on the embedded data
    data = nas.get_dataset("mnist5k")
    small = nas.get_space("convnext_scaled", resolution=28, in_channels=1, num_classes=10, stem_stride=2,
                          base_dims=[16, 32, 64, 128], base_depths=[1, 1, 3, 1])
    base_macs = sum(op.macs() for op in small.ops(small.preset("convnext_t")))
    budget = {"macs": args.budget_ratio * base_macs}
    searcher = nas.get_searcher("nnmass", budgets=[budget], tolerance=args.tolerance)
    problem = SearchProblem(small, nas.get_cost_model("macs"), nas.get_evaluator("nnmass"), show_progress=False)
    matches = searcher.matches(searcher.score(problem, searcher.candidates(small, 0)), budget)
    if len(matches) < 2 * args.per_end:
        raise SystemExit(f"only {len(matches)} candidates within ±{args.tolerance:.0%} of {budget['macs']:.3g} MACs; "
                         "raise --tolerance or lower --per-end")
    chosen = matches[: args.per_end] + matches[-args.per_end:]
    evaluator = nas.get_evaluator("train", epochs=args.epochs, optimizer="adamw", lr=args.lr, weight_decay=0.05,
                                  seed=args.seed)
    evaluator.bind(small, data)
    print(f"2. {len(matches)} candidates within ±{args.tolerance:.0%} of {budget['macs'] / 1e6:.2f}M MACs; training "
          f"the {args.per_end} highest and {args.per_end} lowest NN-Mass for {args.epochs} epochs on mnist5k")
    accuracies = []
    for row in chosen:
        start = time.perf_counter()
        accuracy = evaluator.evaluate(small, row["arch"]).quality
        accuracies.append(accuracy)
        widths, depths = small.shape(row["arch"])
        print(f"   NN-Mass {row['nn_mass']:7.0f}  {row['macs'] / 1e6:6.2f}M MACs  {row['params'] / 1e3:7.1f}k params  "
              f"widths {list(widths)} depths {list(depths)}: accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)")
    tau_mass = kendalltau([r["nn_mass"] for r in chosen], accuracies).statistic
    tau_macs = kendalltau([r["macs"] for r in chosen], accuracies).statistic
    top, bottom = accuracies[: args.per_end], accuracies[args.per_end:]
    print(f"   Kendall tau (NN-Mass, accuracy) = {tau_mass:.3f}; (MACs, accuracy) = {tau_macs:.3f}; mean accuracy "
          f"of the highest NN-Mass {sum(top) / len(top):.4f}, of the lowest {sum(bottom) / len(bottom):.4f}")


if __name__ == "__main__":
    main()
