"""Shared search on PostgreSQL: throughput of 1, 2 and 4 workers sharing one study, and
the database's overhead per trial.

Each worker is a process running random search with the same seed on NAS-Bench-201 with
the tabular evaluator (an evaluation is a table look-up, so the time is the ledger's:
claiming a candidate, recording its result, reading the others'). The workers split the
candidates between them (each evaluated once); throughput = candidates / wall time from
the common start to the last worker's end. The overhead per trial is the time of one
worker on PostgreSQL minus its time on an in-memory ledger, per candidate. A local server
is started for the run (Debian's postgresql package) and stopped afterwards.

    python benchmarks/scale.py [--n-evals 200] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import nas
from nas.ledger import Ledger
from nas.localdb import LocalPostgres, install_postgres
from nas.search import SearchProblem, run_search


def worker(storage, study, n_evals: int, start_at: float, out) -> None:
    space = nas.get_space("nb201")
    evaluator = nas.get_evaluator("table")
    evaluator.bind(space, None)
    cost_model = nas.get_cost_model("macs")
    ledger = Ledger(space, study, storage, evaluator.metric, "macs")
    problem = SearchProblem(space, cost_model, evaluator, ledger, None, 0, False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-evals", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
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
