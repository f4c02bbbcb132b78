"""Shared search: two workers on one study in a real PostgreSQL server, one killed midway.
Together they evaluate each candidate once, the killed worker's trial is taken over, and
the result equals one worker's uninterrupted run."""

import json
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
from conftest import run_cli

ARGS = ["space=mbconv", "target=macs", "data=synthetic", "data.n=512", "evaluator.epochs=1", "searcher=random",
        "searcher.n_evals=8", "progress=false", "seed=3", "run_name=shared", "save_model=false"]


def trials(storage, study="shared"):
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials()
    except KeyError:  # the study is not created yet
        return []


def owned_by(t, proc):
    return t.user_attrs.get("worker", "").startswith(f"{socket.gethostname()}:{proc.pid}:")


def test_two_workers_share_one_study_and_survive_a_kill(tmp_path, cli_env, postgres_url):
    out = run_cli(ARGS + [f"output_dir={tmp_path / 'alone'}"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    alone = json.loads((tmp_path / "alone" / "shared" / "result.json").read_text())

    def worker(name):
        return subprocess.Popen([sys.executable, "-m", "nas.run", *ARGS, f"storage={postgres_url}",
                                 f"output_dir={tmp_path / name}"], cwd=tmp_path, env=cli_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    storage = optuna.storages.RDBStorage(postgres_url)  # one connection pool for all the polling
    a = worker("a")
    b = worker("b")
    # Kill worker a while it evaluates, after it has finished one candidate.
    deadline, held = time.time() + 300, None
    while time.time() < deadline and a.poll() is None:
        now = trials(storage)
        mine = [t for t in now if owned_by(t, a)]
        if any(t.state.name == "COMPLETE" for t in mine):
            # a RUNNING trial a won: when both workers claim an arch at once, the trial with
            # the higher number loses and its worker closes it as FAIL itself
            held = next((t for t in mine if t.state.name == "RUNNING" and not any(
                o.user_attrs.get("arch_key") == t.user_attrs.get("arch_key") and o.number < t.number
                for o in now)), None)
            if held is not None:
                break
        time.sleep(0.05)
    assert held is not None and a.poll() is None, "worker a ended before it could be killed"
    a.send_signal(signal.SIGKILL)
    a.wait()
    _, err = b.communicate(timeout=600)
    assert b.returncode == 0, err

    final = trials(storage)
    complete = [t for t in final if t.state.name == "COMPLETE"]
    keys = [t.user_attrs["arch_key"] for t in complete]
    assert len(keys) == len(set(keys)) == 8  # each candidate evaluated once
    assert not [t for t in final if t.state.name == "RUNNING"]
    taken_over = next(t for t in final if t.number == held.number)
    assert taken_over.state.name == "COMPLETE" and taken_over.user_attrs["resumed"] is True
    assert not owned_by(taken_over, a)  # worker b finished what a was evaluating
    assert any(owned_by(t, a) for t in complete) and any(owned_by(t, b) for t in complete)

    shared = json.loads((tmp_path / "b" / "shared" / "result.json").read_text())
    assert shared["n_evals"] == 8
    by_key = {e["arch_key"]: e["quality"] for e in alone["history"]}
    assert {e["arch_key"]: e["quality"] for e in shared["history"]} == by_key
    assert shared["best"]["arch_key"] == alone["best"]["arch_key"]


@pytest.mark.parametrize("searcher", [["searcher=optuna", "searcher.n_startup_trials=3"],
                                      ["searcher=bayesopt", "searcher.n_startup=3", "searcher.pool_size=100"]],
                         ids=["optuna", "bayesopt"])
def test_workers_propose_in_parallel_from_each_others_results(tmp_path, cli_env, postgres_url, searcher):
    args = ["space=mbconv", "target=macs", "data=synthetic", "data.n=512", "evaluator.epochs=1", *searcher,
            "searcher.n_evals=10", "progress=false", "seed=4", "run_name=opt",
            "save_model=false", f"storage={postgres_url}"]
    procs = [subprocess.Popen([sys.executable, "-m", "nas.run", *args, f"output_dir={tmp_path / name}"], cwd=tmp_path,
                              env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    storage = optuna.storages.RDBStorage(postgres_url)
    final = trials(storage, "opt")
    complete = [t for t in final if t.state.name == "COMPLETE"]
    keys = [t.user_attrs["arch_key"] for t in complete]
    assert len(keys) == len(set(keys))  # no arch evaluated twice
    # 10 in all (each worker may start one more while the last of the others finishes)
    assert 10 <= len(keys) <= 11 and not [t for t in final if t.state.name == "RUNNING"]
    assert all(any(owned_by(t, p) for t in complete) for p in procs)  # both proposed and evaluated
    results = [json.loads((tmp_path / name / "opt" / "result.json").read_text()) for name in ("a", "b")]
    for result in results:  # each worker's result is the whole shared search
        assert sorted(e["arch_key"] for e in result["history"]) == sorted(keys)
    assert results[0]["best"]["arch_key"] == results[1]["best"]["arch_key"]


def test_workers_on_other_hosts_are_judged_by_their_heartbeat():
    from nas.ledger import HEARTBEAT_GRACE_SECONDS, worker_alive

    other = "another-host:123:456"
    assert worker_alive(other, time.time() - 5)
    assert not worker_alive(other, time.time() - HEARTBEAT_GRACE_SECONDS - 1)
    assert worker_alive(other)  # no heartbeat recorded: trusted
    assert not worker_alive(f"{socket.gethostname()}:999999999:1")  # no such process here
    assert not worker_alive("garbage")
