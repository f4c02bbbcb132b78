"""How long a full LUT build takes per space on this machine.

Runs the real command, ``python -m nas.lut build space=NAME target=cpu``, into a fresh
temporary LUT folder for every registered space (or those named), and prints the number
of OpSpecs, the wall time, and the time per OpSpec. As a baseline measured in the same
run, it also builds each LUT with one round instead of the default seven (ratio = the
price of the interleaved rounds that make the LUT agree with whole models; see
latency_luts/README.md). The calibration models are left out of both (overhead_models=0)
and timed separately, since they are the same work as ``validate``.

    python benchmarks/lut_build_time.py [SPACE ...] [--rounds 7]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, not an installed copy


def build(space: str, lut_dir: str, rounds: int, overhead_models: int) -> tuple[float, int]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "nas.lut", "build", f"space={space}", "target=cpu",
                          f"target.options.lut_dir={lut_dir}", f"rounds={rounds}",
                          f"overhead_models={overhead_models}", "progress=false"],
                         cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"build of {space} failed:\n{out.stderr}")
    entries = int(re.search(r"(\d+) entries", out.stdout).group(1))
    return seconds, entries


def main() -> None:
    import nas

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spaces", nargs="*", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calibration-models", type=int, default=20)
    args = parser.parse_args()
    spaces = args.spaces or nas.list_spaces()
    print(f"{'space':<12} {'OpSpecs':>8} {'1 round s':>10} {f'{args.rounds} rounds s':>11} {'ms/op':>8} "
          f"{'ratio':>6} {'calib. s':>10}")
    for space in spaces:
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as full:
            base, _ = build(space, one, 1, 0)
            seconds, entries = build(space, full, args.rounds, 0)
            with_calibration, _ = build(space, full, args.rounds, args.calibration_models)
        print(f"{space:<12} {entries:>8} {base:>10.1f} {seconds:>11.1f} {1e3 * seconds / entries:>8.1f} "
              f"{seconds / base:>6.2f} {with_calibration:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
