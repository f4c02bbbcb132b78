"""A run killed with SIGKILL midway and started again ends exactly like an uninterrupted one."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import run_cli

N_EVALS = 6


def complete_trials(db):
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return 0


def comparable(result):
    keep = ("arch_key", "quality", "cost", "feasible", "trial")
    return {"best": {k: result["best"][k] for k in keep},
            "pareto": [{k: e[k] for k in keep} for e in result["pareto"]],
            "history": [{k: e[k] for k in keep} for e in result["history"]],
            "n_evals": result["n_evals"]}


@pytest.mark.parametrize("searcher", [["searcher=random"], ["searcher=optuna", "searcher.n_startup_trials=2"]])
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, cli_env, searcher):
    args = ["space=mbconv", "target=macs", "data=synthetic", "data.n=768", f"searcher.n_evals={N_EVALS}", "evaluator.epochs=2", "progress=false",
            "run_name=k", "seed=5", *searcher]
    # Uninterrupted reference run.
    ref_dir = tmp_path / "ref"
    out = run_cli(args + [f"output_dir={ref_dir}"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    reference = json.loads((ref_dir / "k" / "result.json").read_text())

    # The same command, killed once two evaluations are in the ledger.
    run_dir = tmp_path / "killed"
    db = run_dir / "k" / "ledger.db"
    proc = subprocess.Popen([sys.executable, "-m", "nas.run", *args, f"output_dir={run_dir}"], cwd=tmp_path,
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while complete_trials(db) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = complete_trials(db)
    assert 2 <= done < N_EVALS
    assert not (run_dir / "k" / "result.json").exists()

    out = run_cli(args + [f"output_dir={run_dir}"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    resumed = json.loads((run_dir / "k" / "result.json").read_text())
    assert resumed["reused_from_ledger"] >= done
    assert comparable(resumed) == comparable(reference)
