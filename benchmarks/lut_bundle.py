"""A device's LUT by bundle, round trip on this machine: export a space's bundle, time it
with its runner in a Python that has only numpy and onnxruntime (no torch, no hwnas),
import the timings, and print the LUT's validation on the bundle's validation models
(timed by the runner, never seen by the fit) with the time each step took.

    python benchmarks/lut_bundle.py [--space uib] [SPACE OVERRIDES ...] [--n 30] [--rounds 7]

By default the space is searched at the default job's configuration (``uib`` on mnist5k:
28x28, one channel, ten classes). Target of the round trip: Spearman >= 0.98 and >= 90%
of the validation models within +-10% for ``uib``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, not an installed copy
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="uib")
    parser.add_argument("overrides", nargs="*", default=None,
                        help="space fields as FIELD=VALUE (default: resolution=28 in_channels=1 num_classes=10)")
    parser.add_argument("--n", type=int, default=30, help="validation models")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    from test_bundle import bare_python

    from nas.app.lut import main as lut_main

    overrides = args.overrides or ["resolution=28", "in_channels=1", "num_classes=10"]
    work = Path(tempfile.mkdtemp(prefix="lut_bundle_"))
    os.environ["HWNAS_LUT_DIR"] = str(work / "luts")
    bundle = work / "bundle"
    start = time.perf_counter()
    if lut_main(["export", f"space={args.space}", *(f"space.{o}" for o in overrides), "--out", str(bundle),
                 f"n={args.n}", f"rounds={args.rounds}", "progress=false"]):
        raise SystemExit("export failed")
    exported = time.perf_counter() - start
    python = bare_python(work)
    start = time.perf_counter()
    subprocess.run([str(python), "run_bundle.py"], cwd=bundle, env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
                   check=True)
    timed = time.perf_counter() - start
    start = time.perf_counter()
    if lut_main(["import", str(bundle / "timings.json"), "target=roundtrip"]):
        raise SystemExit("import failed")
    imported = time.perf_counter() - start
    [path] = (work / "luts" / "roundtrip" / args.space).glob("*.json")
    validation = json.loads(path.read_text())["meta"]["validation"]
    print(f"{args.space} ({' '.join(overrides)}): export {exported:.0f} s, runner {timed:.0f} s, import "
          f"{imported:.1f} s; validation on {validation['n']} models: Spearman {validation['spearman']:.3f}, "
          f"MAPE {validation['mape']:.1f}%, within ±10% {validation['within_10pct']:.0f}%, within ±5% "
          f"{validation['within_5pct']:.0f}%  (files in {work})")


if __name__ == "__main__":
    main()
