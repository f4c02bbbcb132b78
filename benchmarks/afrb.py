"""RAN-e's AFRB space: latency of the presets, and the memory of a search step.

Prints

1. for each preset of Fig. 4 (SuperNet, SubNetworks A-C, Ground Truth), at the
   configuration the CLI gives the space by default (``mnist5k``: 28x28x1, 10 classes,
   width 0.5), its MACs, its latency predicted by the shipped CPU LUT and measured end to
   end (interleaved rounds, ``nas.latency``), each relative to the all-IBN SuperNet;
2. the peak memory of one step of the differentiable search (the PReLU SuperNet,
   forward and backward with the alpha penalty) relative to one plain training step of
   the all-IBN SuperNet built as a standalone model, at that configuration and at the
   paper's (224 px, 1000 classes, width 1). Each step runs in a fresh process after one
   warm-up step (which allocates the optimizer's state); its peak is the growth of the
   process's resident set during the step (peak reset through /proc/self/clear_refs,
   glibc told to return every allocation over 64 KiB to the system when freed). Linux only.

    python benchmarks/afrb.py [--batch 64] [--batch-224 8] [--rounds 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, not an installed copy

STEP = r"""
import json, sys
sys.path.insert(0, {root!r})
import torch, torch.nn.functional as F
import nas
space = nas.get_space("afrb", resolution={res}, in_channels={cin}, num_classes={classes}, width_mult={width})
torch.manual_seed(0)
if {search}:
    model = space.relaxed()
    step_loss = lambda out, y: F.cross_entropy(out, y) + 0.01 * model.penalty()
else:
    model = space.build(space.preset("supernet_all_ibn"))
    step_loss = F.cross_entropy
model = model.to(memory_format=torch.channels_last).train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn({batch}, {cin}, {res}, {res}).contiguous(memory_format=torch.channels_last)
y = torch.randint({classes}, ({batch},))
def step():
    loss = step_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
def status_kib(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field))
step()  # optimizer state and lazy initialisations outside the measured step
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak resident set (VmHWM) to the current one
before = status_kib("VmRSS")
step()
print(json.dumps({{"peak_kib": status_kib("VmHWM") - before}}))
"""


def step_peak_mib(search: bool, res: int, cin: int, classes: int, width: float, batch: int) -> float:
    code = STEP.format(root=str(ROOT), res=res, cin=cin, classes=classes, width=width, batch=batch, search=search)
    # Every large allocation its own mapping, returned to the system when freed, so that the
    # resident set follows the live tensors instead of the allocator's cache.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"] / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="batch of the memory steps at 28 px")
    parser.add_argument("--batch-224", type=int, default=8, help="batch of the memory steps at 224 px")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the latency measurement")
    args = parser.parse_args()

    import nas
    from nas.lut import LUTCost, measure_models

    data = nas.get_dataset("mnist5k")
    space = nas.get_space("afrb", resolution=data.resolution, in_channels=data.in_channels,
                          num_classes=data.num_classes, width_mult=0.5)
    lut = LUTCost("cpu", space)  # this machine's LUT (built into the LUT folder if there is none)
    presets = space.presets()
    archs = [space.preset(p) for p in presets]
    settings = dataclasses.replace(lut.lut.settings, rounds=args.rounds)
    timings = measure_models(space, archs, settings, progress=False)
    rows = []
    for name, arch, timing in zip(presets, archs, timings):
        ops = space.ops(arch)
        rows.append((name, sum(op.macs() for op in ops), lut.cost(ops), timing.ms, timing.iqr_ms))
    ref = rows[presets.index("supernet_all_ibn")]
    print(f"1. Presets at 28x28x1, width 0.5, one thread, batch 1 (relative to the all-IBN SuperNet); "
          f"{lut.provenance()}")
    print(f"   {'preset':18s} {'MACs':>9s} {'x':>6s} {'LUT ms':>8s} {'x':>6s} {'measured ms':>12s} {'x':>6s} "
          f"{'LUT error':>9s}")
    for name, macs, predicted, measured, iqr in rows:
        print(f"   {name:18s} {macs / 1e6:8.3f}M {macs / ref[1]:6.3f} {predicted:8.3f} {predicted / ref[2]:6.3f} "
              f"{measured:8.3f}±{iqr:<4.2f} {measured / ref[3]:6.3f} {predicted / measured - 1:+9.1%}")

    print("2. Peak memory of one training step (growth of the resident set during the step)")
    for label, res, cin, classes, width, batch in (
            ("28x28x1, width 0.5", data.resolution, data.in_channels, data.num_classes, 0.5, args.batch),
            ("224x224x3, width 1, 1000 classes", 224, 3, 1000, 1.0, args.batch_224)):
        plain = step_peak_mib(False, res, cin, classes, width, batch)
        search = step_peak_mib(True, res, cin, classes, width, batch)
        print(f"   {label}, batch {batch}: plain SuperNet step {plain:.1f} MiB, search step {search:.1f} MiB, "
              f"ratio {search / plain:.2f}")


if __name__ == "__main__":
    main()
