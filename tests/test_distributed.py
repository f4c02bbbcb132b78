"""Supernet training under torchrun: 2 processes on CPU (gloo) against one process with
the same global batch cut into the same micro-batches."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from test_resume import checkpoint_position, comparable

import nas
from nas.training.distributed import RunningStats
from nas.world import World

SMALL_POOL = "[teacher,identity,efn_k3_e3,efnv2_k3_e1_se0.04,cb_res_k3,conv_cs_k1_w1,repvgg_k3]"
COMMON = ["target=macs", "data=synthetic", "evaluator.epochs=1", "progress=false", "save_model=false",
          "searcher.measure_latency=false"]
TUNAS = ["space=uib", "space.resolution=16", "searcher=tunas", "data.n=192", "searcher.steps=4",
         "searcher.batch_size=16", "searcher.reward_batch_size=32", *COMMON]
DIFFERENTIABLE = ["searcher=differentiable", "data.n=128", "searcher.steps=5", "searcher.batch_size=16",
                  "searcher.snapshots=5", *COMMON]
HANT = ["space=hant", "space.resolution=16", "space.in_channels=3", "space.num_classes=4", f"space.pool={SMALL_POOL}",
        "searcher=ilp", "searcher.k=2", "searcher.teacher_epochs=1", "searcher.pretrain_batches=3",
        "searcher.batch_size=32", "searcher.held_out=64", "searcher.finetune_epochs=1", "data.n=256", *COMMON]


def torchrun(args, cwd, env, nproc=2, **kw):
    """torchrun's processes, each one's output also kept in ``cwd/torchrun-logs`` (see
    :func:`rank_logs`: a failure shows every rank's, not only the last lines of both)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           f"--log-dir={Path(cwd) / 'torchrun-logs'}", "--tee=3", "-m", "nas.run", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=kw.get("timeout", 400))


def rank_logs(cwd) -> str:
    """Each rank's stderr of the torchrun runs in ``cwd``, for a failure's message."""
    return "\n".join(f"--- {path.relative_to(cwd)}:\n{path.read_text()[-6000:]}"
                     for path in sorted((Path(cwd) / "torchrun-logs").rglob("stderr.log")))


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (torchrun's workers may sit in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def two_ways(args, tmp_path, cli_env):
    """result.json of the search run by 2 processes and by 1 with 2 micro-batches."""
    out = torchrun(args + ["run_name=ddp"], tmp_path, cli_env)
    assert out.returncode == 0, rank_logs(tmp_path)
    one = run_cli(args + ["run_name=one", "searcher.micro_batches=2"], tmp_path, cli_env)
    assert one.returncode == 0, one.stderr
    return [json.loads((tmp_path / "runs" / name / "result.json").read_text()) for name in ("ddp", "one")]


def close(a, b, tol=1e-5):
    """Nested results equal, floats within ``tol``."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= tol * max(1.0, abs(a))
    return a == b


def test_tunas_on_two_processes_matches_one_process_with_the_same_global_batch(tmp_path, cli_env):
    ddp, one = two_ways(TUNAS, tmp_path, cli_env)
    assert len(ddp["stages"]) == 2
    for got, want in zip(ddp["stages"], one["stages"]):
        assert got["argmax_arch"] == want["argmax_arch"]
        assert close(got["final_probs"], want["final_probs"]) and close(got["trajectory"], want["trajectory"])
        assert close(got["mean_reward_last_10pct"], want["mean_reward_last_10pct"])
    # the controller moved: the comparison is not one of two untouched uniform distributions
    assert any(len(set(p)) > 1 for stage in ddp["stages"] for p in stage["final_probs"].values())
    assert ddp["best"]["arch_key"] == one["best"]["arch_key"]
    assert ddp["n_evals"] == 1  # rank 0 alone evaluates and writes the run directory


@pytest.mark.parametrize("space", [["space=afrb", "space.width_mult=0.25"], ["space=uib", "space.resolution=16"]])
def test_differentiable_on_two_processes_matches_one_process(tmp_path, cli_env, space):
    ddp, one = two_ways(space + DIFFERENTIABLE, tmp_path, cli_env)
    assert close(ddp["trajectory"], one["trajectory"]) and close(ddp["final"], one["final"])
    assert ddp["after"]["arch"] == one["after"]["arch"]
    first, last = ddp["trajectory"][0], ddp["trajectory"][-1]
    kind = "alpha" if "alpha" in last else "probs"
    assert last[kind] != first[kind]  # the architecture parameters were trained


def test_hant_pretraining_on_two_processes_matches_one_process(tmp_path, cli_env):
    ddp, one = two_ways(HANT, tmp_path, cli_env)
    assert close(ddp["selections"], one["selections"]) and close(ddp["teacher_loss"], one["teacher_loss"])
    assert ddp["chosen_solution"] == one["chosen_solution"]
    assert ddp["best"]["arch_key"] == one["best"]["arch_key"]


def test_a_run_killed_under_torchrun_resumes_in_one_process(tmp_path, cli_env):
    """The checkpoint does not depend on the number of processes that wrote it."""
    args = TUNAS[:4] + ["searcher.steps=8", "searcher.checkpoint_every=2"] + TUNAS[5:]
    out = run_cli(args + ["run_name=ref", "searcher.micro_batches=2"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    reference = json.loads((tmp_path / "runs" / "ref" / "result.json").read_text())
    run = args + ["run_name=k", "searcher.micro_batches=2"]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "nas.run", *run], cwd=tmp_path, env=cli_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = tmp_path / "runs" / "k" / "tunas" / "state.pt"
    deadline = time.time() + 300
    while not ((checkpoint_position(state) if state.exists() else None) or (-1, 0)) >= (1, 2):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    family = [proc.pid] + descendants(proc.pid)
    for pid in family:  # torchrun and its workers at once, as when the machine goes down
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert (1, 2) <= checkpoint_position(state) < (1, 8)
    out = run_cli(run, tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    resumed = json.loads((tmp_path / "runs" / "k" / "result.json").read_text())
    for got, want in zip(resumed["stages"], reference["stages"]):
        assert close(got["final_probs"], want["final_probs"]) and got["argmax_arch"] == want["argmax_arch"]
    assert comparable(resumed) == comparable(reference)


def test_torchrun_errors_are_one_line(tmp_path, cli_env):
    out = torchrun(["space=nb201", "evaluator=table", "searcher=random", "target=macs", "run_name=r"], tmp_path,
                   cli_env)
    assert out.returncode != 0
    # (--tee prefixes each worker's lines with its name, e.g. "[default0]:")
    errors = [line for line in (re.sub(r"^\[\w+\]:", "", raw) for raw in out.stderr.splitlines())
              if line.startswith("error:")]
    # (a worker torchrun stops as soon as the other failed may not get to print it)
    assert errors and all("trains no shared weights" in e and "tunas" in e for e in errors)
    # one line per worker; the traceback torchrun prints for a failed worker is its own
    assert "nas/run.py" not in out.stderr and "nas/search.py" not in out.stderr
    out = torchrun(TUNAS + ["run_name=m", "searcher.micro_batches=3"], tmp_path, cli_env)
    assert out.returncode != 0
    assert "error: searcher.micro_batches must be a multiple of the 2 processes" in out.stderr


def test_running_stats_of_micro_batches_are_their_mean():
    bn = torch.nn.BatchNorm1d(3)
    x = [torch.randn(8, 3), torch.randn(8, 3) + 2]
    expect = [torch.nn.BatchNorm1d(3) for _ in x]
    for m, xi in zip(expect, x):
        m(xi)
    with RunningStats(bn, World(), 2) as stats:
        for xi in x:
            bn(xi)
            stats.pass_done()
    assert torch.allclose(bn.running_mean, (expect[0].running_mean + expect[1].running_mean) / 2)
    assert torch.allclose(bn.running_var, (expect[0].running_var + expect[1].running_var) / 2)
    assert int(bn.num_batches_tracked) == 1


def test_micro_batches_must_divide_among_processes():
    with pytest.raises(nas.NASError, match="multiple of the 2 processes"):
        World(0, 2).micro_batches(3, "searcher.micro_batches")
    assert World(1, 2).micro_batches(None, "x") == (2, range(1, 2))
    assert World(1, 2).micro_batches(4, "x") == (4, range(2, 4))
