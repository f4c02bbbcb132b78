"""TuNAS on the UIB space: supernet overhead, latency error, one stage vs two.

Prints

1. the time of one supernet training step on a sampled path divided by the time of the
   same step on the standalone model of that path (MobileNetV4's weight sharing should
   cost little: target <= 1.3), median over sampled paths, both timed in the same run;
2. for the two-stage search with its defaults (``python -m nas.run space=uib
   searcher=tunas target=cpu``): the latency target, the final architecture's LUT
   latency and its error against the target, and its measured latency;
3. one-stage against two-stage search at the same latency target and the same number
   of steps in total: accuracy (retrained from scratch) and latency.

    python benchmarks/tunas_uib.py [--steps 250] [--paths 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, not an installed copy


def step_seconds(model_step, repeats: int = 8) -> float:
    for _ in range(2):
        model_step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model_step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def supernet_overhead(n_paths: int, seed: int) -> list[float]:
    import nas

    data = nas.get_dataset("mnist5k")
    space = nas.get_space("uib", resolution=data.resolution, in_channels=data.in_channels,
                          num_classes=data.num_classes)
    torch.manual_seed(seed)
    supernet = space.supernet().to(memory_format=torch.channels_last)
    x, y = data.batch(data.train, slice(0, 64), space.input_shape)
    x = x.contiguous(memory_format=torch.channels_last)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n_paths):
        arch = space.sample(rng)
        alone = supernet.export(arch).to(memory_format=torch.channels_last).train()
        opt_super = torch.optim.SGD(supernet.parameters(), lr=1e-3, momentum=0.9)
        opt_alone = torch.optim.SGD(alone.parameters(), lr=1e-3, momentum=0.9)

        def super_step():
            opt_super.zero_grad(set_to_none=True)
            F.cross_entropy(supernet(x, arch), y).backward()
            opt_super.step()

        def alone_step():
            opt_alone.zero_grad(set_to_none=True)
            F.cross_entropy(alone(x), y).backward()
            opt_alone.step()

        supernet.train()
        # interleave the two, so that drift of the machine hits both alike
        s1, a1 = step_seconds(super_step), step_seconds(alone_step)
        a2, s2 = step_seconds(alone_step), step_seconds(super_step)
        ratios.append((s1 + s2) / (a1 + a2))
    return ratios


def run(args: list[str], out_dir: str) -> dict:
    cmd = [sys.executable, "-m", "nas.run", "space=uib", "searcher=tunas", "target=cpu", "progress=false",
           f"output_dir={out_dir}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    (run_dir,) = [p for p in Path(out_dir).iterdir() if p.is_dir()]
    return json.loads((run_dir / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=250, help="steps per stage of the two-stage search")
    parser.add_argument("--paths", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    ratios = supernet_overhead(args.paths, args.seed)
    print(f"supernet step / standalone step of the same path: median {np.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}) over {len(ratios)} sampled paths (target <= 1.3)")

    results = {}
    for stages, steps in ((2, args.steps), (1, 2 * args.steps)):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            extra = [f"searcher.stages={stages}", f"searcher.steps={steps}", f"seed={args.seed}"]
            if stages == 1:  # the same target as the two-stage search
                extra.append(f"searcher.aim_cost={results[2]['aim_cost']}")
            results[stages] = run(extra, out)
            results[stages]["seconds"] = time.perf_counter() - start
    two = results[2]
    print(f"two-stage search (defaults, {args.steps} steps per stage, {two['seconds']:.0f} s): target "
          f"{two['aim_cost']:.3f} ms ({two['aim_from']}), final LUT latency {two['best']['cost']:.3f} ms, "
          f"error {100 * two['cost_error']:+.1f}%, measured {two.get('measured_latency_ms', float('nan')):.3f} ms")
    print(f"{'search':<11} {'steps':>6} {'accuracy':>9} {'LUT ms':>8} {'vs target':>10} {'measured ms':>12}")
    for stages in (1, 2):
        r = results[stages]
        print(f"{f'{stages}-stage':<11} {2 * args.steps:>6} "
              f"{r['best']['quality']:>9.4f} {r['best']['cost']:>8.3f} {100 * r['cost_error']:>+9.1f}% "
              f"{r.get('measured_latency_ms', float('nan')):>12.3f}")


if __name__ == "__main__":
    main()
