"""Scale-out: shared search on PostgreSQL (throughput of 1, 2 and 4 workers sharing one
study, and the database's overhead per trial) and supernet training under torchrun (the
step time of 2 processes against 1).

Each worker is a process running random search with the same seed on NAS-Bench-201 with
the tabular evaluator (an evaluation is a table look-up, so the time is the ledger's:
claiming a candidate, recording its result, reading the others'). The workers split the
candidates between them (each evaluated once); throughput = candidates / wall time from
the common start to the last worker's end. The overhead per trial is the time of one
worker on PostgreSQL minus its time on an in-memory ledger, per candidate. A local server
is started for the run (Debian's postgresql package) and stopped afterwards.

DDP: TuNAS (one stage) on the uib supernet, synthetic 32x32 RGB images, global batch 64 cut
into 2 micro-batches (each on its own path); the step time is rank 0's, from its first to
its last logged step (setup and the final evaluation excluded). The baseline is one
process doing both micro-batches with as many threads as the 2 processes have together.

    python benchmarks/scale.py [--n-evals 200] [--workers 1 2 4] [--ddp-steps 40] [--skip-shared]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

import nas
from nas.app.localdb import LocalPostgres, install_postgres
from nas.ledger import Ledger
from nas.search import SearchProblem, run_search


def worker(storage, study, n_evals: int, start_at: float, out) -> None:
    space = nas.get_space("nb201")
    evaluator = nas.get_evaluator("table")
    evaluator.bind(space, None)
    cost_model = nas.get_cost_model("macs")
    ledger = Ledger(space, study, storage, evaluator.metric, "macs")
    problem = SearchProblem(space, cost_model, evaluator, ledger, None, 0, show_progress=False)
    problem.poll_seconds = 0.05
    searcher = nas.get_searcher("random", n_evals=n_evals)
    time.sleep(max(0.0, start_at - time.time()))  # every worker starts at once
    t0 = time.time()
    result = run_search(searcher, problem)
    out.put((t0, time.time(), result.n_evals, len(result.history) - result.extras["reused_from_ledger"],
             t0 - start_at))


def run_workers(storage, study: str, n_workers: int, n_evals: int) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 15  # after every worker imported torch and opened the ledger
    procs = [ctx.Process(target=worker, args=(storage, study, n_evals, start_at, out)) for _ in range(n_workers)]
    for p in procs:
        p.start()
    rows = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    first, last = min(r[0] for r in rows), max(r[1] for r in rows)
    late = max(r[4] for r in rows)
    if late > 1.0:
        raise RuntimeError(f"a worker started {late:.1f} s late; raise the start delay")
    return {"seconds": last - first, "evaluated_by_worker": [r[3] for r in rows],
            "complete": all(r[2] == n_evals for r in rows)}


def ddp_worker(steps: int, micro_batches: int) -> None:
    """One process of the DDP measurement (started by torchrun, or alone): prints rank 0's
    seconds per training step as JSON."""
    space = nas.get_space("uib", resolution=32, in_channels=3, num_classes=10)
    data = nas.get_dataset("synthetic", n=4096, num_classes=10, resolution=32, in_channels=3)
    evaluator = nas.get_evaluator("train", epochs=1, device="cpu")  # after the timed steps
    evaluator.bind(space, data)
    problem = SearchProblem(space, nas.get_cost_model("macs"), evaluator, None, None, 0, show_progress=False)
    marks = []
    problem.log_progress = lambda step, values: marks.append((step, time.perf_counter()))
    searcher = nas.get_searcher("tunas", stages=1, steps=steps, batch_size=64, reward_batch_size=64,
                                aim_cost=5e6, measure_latency=False, micro_batches=micro_batches)
    run_search(searcher, problem)
    if problem.world.is_main:
        (s0, t0), (s1, t1) = marks[0], marks[-1]
        print(json.dumps({"seconds_per_step": (t1 - t0) / (s1 - s0)}))


def ddp_step_time(processes: int, threads: int, steps: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    worker = [__file__, "--ddp-worker", "--ddp-steps", str(steps)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *worker]
    else:
        cmd = [sys.executable, *worker]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line)["seconds_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-evals", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--ddp-steps", type=int, default=40)
    parser.add_argument("--skip-shared", action="store_true", help="only the DDP measurement")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        return ddp_worker(args.ddp_steps, 2)
    if not args.skip_shared:
        shared_search(args)
    cores = os.cpu_count() or 2
    print(f"DDP: tunas on uib (32x32 synthetic), global batch 64 in 2 micro-batches, {args.ddp_steps} steps")
    one = ddp_step_time(1, 2, args.ddp_steps)
    one_thread = ddp_step_time(1, 1, args.ddp_steps)
    two = ddp_step_time(2, 1, args.ddp_steps)
    print(f"  1 process, 2 threads:        {1000 * one:8.1f} ms/step")
    print(f"  1 process, 1 thread:         {1000 * one_thread:8.1f} ms/step")
    print(f"  2 processes, 1 thread each:  {1000 * two:8.1f} ms/step  "
          f"(step-time ratio 2 vs 1 process: {two / one:.2f}; speed-up {one / two:.2f}x; {cores} cores here)")


def shared_search(args) -> None:
    install_postgres()
    memory = run_workers("memory", "mem", 1, args.n_evals)
    print(f"random search, nb201 table, {args.n_evals} candidates, seed 0")
    print(f"in-memory ledger, 1 worker: {memory['seconds']:.2f} s ({args.n_evals / memory['seconds']:.1f} evals/s)")
    with LocalPostgres() as url:
        base = None
        print(f"{'workers':>8} {'seconds':>9} {'evals/s':>9} {'vs 1':>6}  evaluated by each worker")
        for n in args.workers:
            r = run_workers(url, f"scale-{n}", n, args.n_evals)
            assert r["complete"] and sum(r["evaluated_by_worker"]) == args.n_evals, r
            rate = args.n_evals / r["seconds"]
            base = base or rate
            print(f"{n:>8} {r['seconds']:>9.2f} {rate:>9.1f} {rate / base:>6.2f}  {r['evaluated_by_worker']}")
            if n == 1:
                overhead = (r["seconds"] - memory["seconds"]) / args.n_evals
                print(f"{'':>8} database overhead per trial (1 worker, PostgreSQL - in memory): "
                      f"{1000 * overhead:.1f} ms")


if __name__ == "__main__":
    main()
