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
    args = ["space=mbconv", "target=macs", "data=synthetic", "data.n=384", f"searcher.n_evals={N_EVALS}", "evaluator.epochs=1", "progress=false",
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


TUNAS = ["space=uib", "space.resolution=16", "searcher=tunas", "target=macs", "data=synthetic", "data.n=256",
         "evaluator.epochs=1", "searcher.steps=10", "searcher.batch_size=16", "searcher.reward_batch_size=32",
         "searcher.checkpoint_every=2", "searcher.measure_latency=false", "progress=false", "run_name=t",
         "save_model=false"]


def checkpoint_position(path):
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return state.get("stage", 0), state["step"]


def stop_when(proc, path, position, sig):
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        at = checkpoint_position(path) if path.exists() else None
        if at is not None and at >= position:
            proc.send_signal(sig)
            return proc.wait(timeout=120)
        time.sleep(0.05)
    raise AssertionError(f"the run ended (or stalled) before its checkpoint reached {position}")


def test_tunas_stopped_by_sigterm_and_killed_resumes_to_the_uninterrupted_result(tmp_path, cli_env):
    out = run_cli(TUNAS + [f"output_dir={tmp_path / 'ref'}"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    reference = json.loads((tmp_path / "ref" / "t" / "result.json").read_text())

    run = TUNAS + [f"output_dir={tmp_path / 'run'}"]
    state = tmp_path / "run" / "t" / "tunas" / "state.pt"

    def start():
        return subprocess.Popen([sys.executable, "-m", "nas.run", *run], cwd=tmp_path, env=cli_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    # SIGTERM in stage 1: the current step is saved, the run stops with the resume hint
    proc = start()
    assert stop_when(proc, state, (0, 4), signal.SIGTERM) == 130
    assert "run the same command again to resume" in proc.stderr.read()
    stopped_at = checkpoint_position(state)
    assert (0, 4) <= stopped_at < (1, 0)
    # SIGKILL in stage 2: only the periodic checkpoints survive
    proc = start()
    assert stop_when(proc, state, (1, 4), signal.SIGKILL) == -signal.SIGKILL
    assert checkpoint_position(state) < (1, 10)
    out = run_cli(run, tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    resumed = json.loads((tmp_path / "run" / "t" / "result.json").read_text())
    for got, want in zip(resumed["stages"], reference["stages"]):
        assert got["final_probs"] == want["final_probs"] and got["trajectory"] == want["trajectory"]
        assert got["argmax_arch"] == want["argmax_arch"]
        assert got["mean_reward_last_10pct"] == want["mean_reward_last_10pct"]
    assert comparable(resumed) == comparable(reference)


@pytest.mark.parametrize("space", [["space=uib", "space.resolution=16"], ["space=afrb", "space.width_mult=0.25"]])
def test_differentiable_killed_resumes_to_the_uninterrupted_result(tmp_path, cli_env, space):
    args = space + ["searcher=differentiable", "target=macs", "data=synthetic", "data.n=128", "evaluator.epochs=1",
                    "searcher.steps=12", "searcher.batch_size=16", "searcher.checkpoint_every=2",
                    "searcher.snapshots=12", "searcher.measure_latency=false", "progress=false", "run_name=d",
                    "save_model=false"]
    out = run_cli(args + [f"output_dir={tmp_path / 'ref'}"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    reference = json.loads((tmp_path / "ref" / "d" / "result.json").read_text())
    run = args + [f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.Popen([sys.executable, "-m", "nas.run", *run], cwd=tmp_path, env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert stop_when(proc, tmp_path / "run" / "d" / "differentiable" / "state.pt", (0, 6), signal.SIGKILL) < 0
    out = run_cli(run, tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    resumed = json.loads((tmp_path / "run" / "d" / "result.json").read_text())
    for key in ("trajectory", "final", "after"):
        assert resumed[key] == reference[key], key
    assert comparable(resumed) == comparable(reference)


def test_a_diverging_search_stops_with_the_step_and_its_checkpoint_intact(tmp_path, cli_env):
    import re

    import torch

    args = ["space=afrb", "space.width_mult=0.25", "searcher=differentiable", "target=macs", "data=synthetic",
            "data.n=128", "searcher.steps=20", "searcher.batch_size=16", "searcher.checkpoint_every=1",
            "searcher.lr=1e12", "searcher.measure_latency=false", "progress=false", "run_name=div"]
    out = run_cli(args, tmp_path, cli_env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    step = int(re.search(r"diverged at step (\d+) \(loss (nan|inf|-inf)\)", line).group(1))
    state = torch.load(tmp_path / "runs" / "div" / "differentiable" / "state.pt", weights_only=True)
    assert state["step"] == step  # saved after the last good step
    assert all(torch.isfinite(v).all() for v in state["relaxation"].values() if v.is_floating_point())


def kill_when(proc, ready, what):
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before {what}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_deepreduce_killed_resumes_to_the_uninterrupted_result(tmp_path, cli_env):
    args = ["space=relu_reuse", "searcher=deepreduce", "data=synthetic", "data.n=128", "evaluator.epochs=1",
            "searcher.reuse_factors=[4]", "progress=false", "run_name=d", "seed=3"]
    out = run_cli(args + [f"output_dir={tmp_path / 'ref'}"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    reference = json.loads((tmp_path / "ref" / "d" / "result.json").read_text())
    run = args + [f"output_dir={tmp_path / 'run'}"]
    db = tmp_path / "run" / "d" / "ledger.db"
    proc = subprocess.Popen([sys.executable, "-m", "nas.run", *run], cwd=tmp_path, env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: complete_trials(db) >= 2, "two evaluations were in its ledger")
    done = complete_trials(db)
    assert 2 <= done < reference["n_evals"]
    out = run_cli(run, tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    resumed = json.loads((tmp_path / "run" / "d" / "result.json").read_text())
    assert resumed["reused_from_ledger"] >= done
    assert resumed["networks"] == reference["networks"]
    assert comparable(resumed) == comparable(reference)


def test_hant_killed_in_pretraining_resumes_to_the_uninterrupted_result(tmp_path, cli_env):
    pool = "[teacher,identity,efn_k3_e3,cb_res_k3,conv_cs_k1_w1,repvgg_k3]"
    args = ["space=hant", "space.resolution=16", "space.in_channels=3", "space.num_classes=4", f"space.pool={pool}",
            "searcher=ilp", "searcher.k=2", "searcher.teacher_epochs=1", "searcher.pretrain_batches=8",
            "searcher.checkpoint_every=2", "searcher.held_out=64", "searcher.finetune_epochs=1", "data=synthetic",
            "data.n=300", "evaluator.epochs=1", "target=macs", "progress=false", "run_name=h",
            "searcher.measure_latency=false"]
    out = run_cli(args + [f"output_dir={tmp_path / 'ref'}"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    reference = json.loads((tmp_path / "ref" / "h" / "result.json").read_text())
    run = args + [f"output_dir={tmp_path / 'run'}"]
    state = tmp_path / "run" / "h" / "hant" / "candidates.pt"
    proc = subprocess.Popen([sys.executable, "-m", "nas.run", *run], cwd=tmp_path, env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: state.exists() and (checkpoint_position(state) or (0, 0))[1] >= 2,
              "its pretraining checkpoint reached step 2")
    assert 2 <= checkpoint_position(state)[1] < 8
    assert (tmp_path / "run" / "h" / "hant" / "teacher.pt").is_file()
    out = run_cli(run, tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    resumed = json.loads((tmp_path / "run" / "h" / "result.json").read_text())
    for key in ("selections", "teacher_loss", "chosen_solution"):
        assert resumed[key] == reference[key], key
    assert resumed["teacher"]["accuracy"] == reference["teacher"]["accuracy"]
    assert resumed["teacher"]["weights"].endswith("teacher.pt")  # the killed run's teacher, not trained again
    assert comparable(resumed) == comparable(reference)
