"""Times an hwnas LUT bundle on the device it runs on; needs only Python 3.8+, numpy and
onnxruntime (no torch, no hwnas). Copied into every bundle as ``run_bundle.py``.

    python run_bundle.py [BUNDLE_DIR] [--threads N] [--rounds R]

Reads ``manifest.json`` (every layer of a search space, and whole calibration and
validation models, as ONNX files) and writes ``timings.json`` beside it: per item, the
median time of each round, in interleaved rounds (every round times every item once, in
a fresh seeded random order; an item's latency is the mean over rounds of the per-round
medians), the protocol hwnas's own harness uses. The file is saved after every round: a
run stopped midway continues where it stopped when started again. Take the timings back
and turn them into a LUT there with ``python -m nas.lut import timings.json target=NAME``.
"""

import argparse
import json
import os
import platform
import random
import sys
import time

FORMAT = "hwnas-timings/1"


def fingerprint(threads):
    """What decides a layer's latency here, besides the layer (hwnas's Fingerprint fields;
    torch is not used, so it is not recorded)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, sep, value = line.partition(":")
                if sep:
                    info[key.strip()] = value.strip()
    except OSError:
        pass
    cpu_id = (f"{info.get('vendor_id', '?')} {info['cpu family']}/{info.get('model', '?')}/{info.get('stepping', '?')}"
              if "cpu family" in info else platform.machine() or None)
    flags = set(info.get("flags", "").split())
    isa = next((name for name, flag in (("AVX512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx")) if flag in flags),
               platform.machine() or None)
    import onnxruntime

    return {"device": "cpu", "processor": info.get("model name") or platform.processor() or platform.machine(),
            "cpu_id": cpu_id, "isa": isa, "logical_cores": os.cpu_count(), "threads": int(threads), "torch": None,
            "backend": f"onnxruntime {onnxruntime.__version__}"}


def session_for(path, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def time_round(session, feed, warmup, min_run_time):
    """(median ms per run, runs) of one round: warm-up, then blocks of runs (a block long
    enough for the clock, ten times more runs until it is) until min_run_time has passed."""
    def block(number):
        start = time.perf_counter()
        for _ in range(number):
            session.run(None, feed)
        return time.perf_counter() - start

    for _ in range(warmup):
        session.run(None, feed)
    number = 1
    while True:
        elapsed = block(number)
        if elapsed >= 2e-3 or number >= 10 ** 6:
            break
        number *= 10
    blocks, total = [elapsed / number], elapsed
    while total < min_run_time or len(blocks) < 3:
        elapsed = block(number)
        blocks.append(elapsed / number)
        total += elapsed
    blocks.sort()
    middle = len(blocks) // 2
    median = blocks[middle] if len(blocks) % 2 else (blocks[middle - 1] + blocks[middle]) / 2
    return median * 1e3, number * len(blocks)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Time an hwnas LUT bundle on this device.")
    parser.add_argument("bundle", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--threads", type=int, default=None, help="default: the manifest's")
    parser.add_argument("--rounds", type=int, default=None, help="default: the manifest's")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    import numpy as np

    with open(os.path.join(args.bundle, "manifest.json")) as fh:
        manifest = json.load(fh)
    harness = manifest["harness"]
    threads = args.threads or harness["threads"]
    rounds = args.rounds or harness["rounds"]
    out_path = os.path.join(args.bundle, "timings.json")
    doc = {"format": FORMAT, "bundle_id": manifest["bundle_id"], "threads": threads, "rounds": rounds,
           "fingerprint": fingerprint(threads), "timings": {}}
    if os.path.exists(out_path):  # a stopped run continues
        with open(out_path) as fh:
            earlier = json.load(fh)
        if earlier.get("bundle_id") == manifest["bundle_id"] and earlier.get("threads") == threads:
            doc["timings"] = earlier.get("timings", {})
    items = manifest["items"]
    timings = {item["id"]: doc["timings"].setdefault(item["id"], {"rounds_ms": [], "runs": 0}) for item in items}
    order = random.Random(manifest.get("seed", 0))
    started = time.time()
    for r in range(rounds):
        todo = [item for item in items if len(timings[item["id"]]["rounds_ms"]) <= r]
        order.shuffle(todo)
        for item in todo:
            session = session_for(os.path.join(args.bundle, item["file"]), threads)
            shape = [harness["batch"], *item["input_shape"]]
            feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
            whole = item["kind"] in ("calibration", "validation")  # whole models are timed longer
            min_run_time = harness["model_min_run_time"] if whole else harness["min_run_time"]
            ms, runs = time_round(session, feed, harness["warmup"], min_run_time)
            timings[item["id"]]["rounds_ms"].append(ms)
            timings[item["id"]]["runs"] += runs
        tmp = out_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(tmp, out_path)
        if not args.quiet:
            print(f"round {r + 1}/{rounds} done ({len(todo)} items, {time.time() - started:.0f} s)", file=sys.stderr)
    print(out_path)


if __name__ == "__main__":
    main()
