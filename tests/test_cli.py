"""The run CLI end to end, in subprocesses, as a user runs it."""

import json
import sqlite3
import subprocess
import sys

import numpy as np
import optuna
import pytest
import torch
from conftest import TWO_WIDTHS_PLUGIN, run_cli

import nas

NB201 = ["space=nb201", "evaluator=table", "searcher=random", "target=macs", "progress=false"]


def ledger_count(run_dir):
    with sqlite3.connect(run_dir / "ledger.db") as db:
        return db.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0]


def test_help_lists_plugins(tmp_path, cli_env):
    out = run_cli(["--help"], tmp_path, cli_env)
    assert out.returncode == 0
    for word in ("nb201", "mbconv", "random", "optuna", "macs", "roofline_cpu", "mnist5k", "cifar10", "table"):
        assert word in out.stdout


@pytest.mark.parametrize("args,message", [
    (["space=nope"], "unknown space 'nope'; registered spaces: 'afrb', 'convnext_scaled', 'hant', 'mbconv', 'nb201', 'relu_reuse', 'rexnet', 'uib'"),
    (["searcher=nope"], "unknown searcher 'nope'; registered searchers:"),
    (["target=nope"], "unknown target 'nope'; registered targets:"),
    (["data=nope"], "unknown data set 'nope'; registered data sets:"),
    (["evaluator=nope"], "unknown evaluator 'nope'"),
    (["space.widht=3"], "'space.widht' is not a field of space (uib); its fields are:"),
    (["nonsense=1"], "'nonsense' is not a field of the run"),
    (["searcher=random", "searcher.n_evals=many"], "field 'n_evals' must be an integer"),
    (["searcher.n_evals=5"], "'searcher.n_evals' is not a field of searcher (tunas)"),
    (["data=cifar10", "data.path=/no/such/folder"], "cifar10 data folder '/no/such/folder' does not exist"),
    (NB201 + ["budget=1000"], "budget 1k MACs (1000) is infeasible for space 'nb201'"),
    (["space=nb201", "evaluator=table", "space.resolution=30"], "nb201 needs a resolution divisible by 4"),
    (["justaword"], "is not an override"),
    (["space=convnext_scaled", "searcher=nnmass", "target=macs", "searcher.budgets=[{flops: 1e9}]"],
     "searcher.budgets[0] names 'flops'; accepted: macs, params, cost"),
    (["space=rexnet", "target=macs", "searcher=random", "space.grid=huge"], "unknown grid 'huge'; accepted:"),
    (NB201 + ["arch=no_such_preset"], "arch='no_such_preset' is neither a preset of space 'nb201' ('resnet') nor a path"),
    (NB201 + ["target=pi"], "cost model 'pi' needs relu_ms and mac_ms"),
    (["space=relu_reuse", "searcher=deepreduce", "searcher.base=resnet99"],
     "searcher.base='resnet99' is neither a preset of space 'relu_reuse'"),
    (["space=uib", "searcher=deepreduce"], "searcher 'deepreduce' needs a space with 'relu_stages'"),
    # non-finite, negative and wrong-kind values, and folders that cannot be (issue 22)
    (NB201 + ["budget=nan"], "budget must be a finite number, got nan"),
    (NB201 + ["budget=inf"], "budget must be a finite number, got inf"),
    (NB201 + ["budget=-5"], "budget must be > 0"),
    (NB201 + ["seed=-1"], "seed must be >= 0, got -1"),
    (NB201 + ["seed=1e3"], "seed must be an integer"),
    (NB201 + ["progress=maybe"], "progress must be true or false, got 'maybe'"),
    (NB201 + ["save_model=2"], "save_model must be true or false, got 2"),
    (NB201 + ["searcher=optuna", "searcher.n_startup_trials=-1"], "field 'n_startup_trials' must be >= 0, got -1"),
    (NB201 + ["searcher=optuna", "searcher.max_proposals_per_eval=inf"],
     "field 'max_proposals_per_eval' must be an integer"),
    (NB201 + ["output_dir=/proc"], "cannot create or write the folder '/proc/"),
    (NB201 + ["output_dir=/dev/null"], "output_dir '/dev/null' exists and is not a folder"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, cli_env, args, message):
    out = run_cli(args, tmp_path, cli_env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert message in lines[0]
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # a refused run leaves nothing behind


def test_nb201_run_dir_and_ledger(tmp_path, cli_env):
    out = run_cli(NB201 + ["searcher=optuna", "searcher.n_evals=12", "run_name=t"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "runs" / "t"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["n_evals"] == 12 and len(result["history"]) == 12
    assert result["cost_unit"] == "MACs" and result["quality_metric"] == "accuracy"
    assert result["weights"] is None  # a table has no trained weights
    best = result["best"]
    assert best["quality"] == max(e["quality"] for e in result["history"])
    space = nas.get_space("nb201")
    arch = nas.Arch.from_json((run_dir / "arch.json").read_text())
    assert space.validate(arch).key() == best["arch_key"]
    assert (run_dir / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "config.yaml").exists()
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run_dir / 'ledger.db'}")
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 12 and study.metric_names == ["accuracy", "macs"]
    t = trials[0]
    assert set(t.params) == {d.name for d in space.decisions()}
    assert nas.Arch.from_json(t.user_attrs["arch"]) == nas.Arch(t.params)
    assert "params" in t.user_attrs["metrics"] and len(t.values) == 2


def test_rerun_resumes_and_bad_rerun_loses_nothing(tmp_path, cli_env):
    args = NB201 + ["searcher.n_evals=5", "run_name=r"]
    assert run_cli(args, tmp_path, cli_env).returncode == 0
    run_dir = tmp_path / "runs" / "r"
    before = (run_dir / "result.json").read_text()
    assert ledger_count(run_dir) == 5
    out = run_cli(args + ["budget=1"], tmp_path, cli_env)
    assert out.returncode == 2 and ledger_count(run_dir) == 5
    assert (run_dir / "result.json").read_text() == before
    out = run_cli(args + ["space.channels=8", "evaluator=train"], tmp_path, cli_env)
    assert out.returncode == 2 and "was made with other settings" in out.stderr
    out = run_cli(NB201 + ["searcher.n_evals=8", "run_name=r"], tmp_path, cli_env)
    assert out.returncode == 0 and "5 read back from the ledger" in out.stdout
    assert ledger_count(run_dir) == 8


def test_training_run_saves_loadable_best_model(tmp_path, cli_env):
    out = run_cli(["space=mbconv", "searcher=random", "target=macs", "data=synthetic", "searcher.n_evals=2",
                   "evaluator.epochs=1", "progress=false", "run_name=m"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "runs" / "m"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["weights"] == "model.pt"
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    space = nas.get_space(saved["space"], **saved["space_config"])
    assert space.input_shape == (3, 16, 16) and space.num_classes == 4  # taken from the data set
    model = space.build(nas.Arch(saved["arch"]))
    model.load_state_dict(saved["state_dict"])
    assert saved["arch_key"] == result["best"]["arch_key"]
    # one call loads it back; the ONNX export computes the same logits
    loaded, arch, loaded_space = nas.load(run_dir)
    assert arch.key() == result["best"]["arch_key"] and loaded_space.input_shape == (3, 16, 16)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model.eval()(x)
        assert torch.equal(loaded(x), expected)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"x": x.numpy()})
    assert np.allclose(logits, expected.numpy(), atol=1e-4)
    assert (run_dir / "layers.png").stat().st_size > 0
    # the front as a table
    report = subprocess.run([sys.executable, "-m", "nas.report", str(run_dir)], capture_output=True, text=True,
                            env=cli_env)
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if line[:8].strip().lstrip("* ").isdigit()]
    assert len(rows) == len(result["pareto"])
    assert sum(line.startswith("*") for line in rows) == 1
    missing = subprocess.run([sys.executable, "-m", "nas.report", str(tmp_path / "nope")], capture_output=True,
                             text=True, env=cli_env)
    assert missing.returncode == 2 and "has no result.json" in missing.stderr
    with pytest.raises(nas.NASError, match="cannot load a model"):
        nas.load(tmp_path / "nope")


def test_third_party_space_from_cli(tmp_path, cli_env):
    (tmp_path / "my_plugins.py").write_text(TWO_WIDTHS_PLUGIN)
    env = dict(cli_env, PYTHONPATH=f"{tmp_path}:{cli_env['PYTHONPATH']}")
    args = ["plugins=[my_plugins]", "space=two_widths", "searcher=random", "target=macs", "data=synthetic",
            "searcher.n_evals=2",
            "evaluator.epochs=1", "progress=false", "run_name=p"]
    out = run_cli(args, tmp_path, env)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "runs" / "p" / "result.json").read_text())["n_evals"] == 2
    assert "two_widths" in run_cli(["plugins=[my_plugins]", "--help"], tmp_path, env).stdout


def test_multirun_sweeps_with_hydra(tmp_path, cli_env):
    out = run_cli(["--multirun"] + NB201 + ["seed=0,1", "searcher.n_evals=3"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    results = sorted((tmp_path / "runs").glob("nb201-*-seed*/result.json"))
    assert [json.loads(p.read_text())["seed"] for p in results] == [0, 1]


def test_evaluate_one_arch_and_reject_a_bad_one(tmp_path, cli_env):
    space = nas.get_space("nb201")
    arch = space.arch_from_table_key(space.benchmark_table().best()[0])
    (tmp_path / "good.json").write_text(arch.to_json(space="nb201"))
    (tmp_path / "bad.json").write_text(arch.replace(edge_1_0="conv_9x9").to_json(space="nb201"))
    out = run_cli(NB201 + ["arch=good.json", "run_name=one"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "runs" / "one" / "result.json").read_text())
    assert result["n_evals"] == 1 and result["best"]["quality"] == pytest.approx(0.943733)
    out = run_cli(NB201 + ["arch=bad.json", "run_name=one"], tmp_path, cli_env)
    assert out.returncode == 2
    assert "decision 'edge_1_0' has no option 'conv_9x9'; options are: 'none', 'skip_connect'" in out.stderr
    assert ledger_count(tmp_path / "runs" / "one") == 1


def test_nnmass_run_reproduces_ran_i_budgets(tmp_path, cli_env):
    out = run_cli(["space=convnext_scaled", "searcher=nnmass", "target=macs", "progress=false", "run_name=n"],
                  tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    assert "budget 3.3G MACs / 21M params (±6%)" in out.stdout and "budget 8.5G MACs / 50M params" in out.stdout
    result = json.loads((tmp_path / "runs" / "n" / "result.json").read_text())
    assert result["quality_metric"] == "nn_mass" and result["evaluator"] == "nnmass"  # the searcher's default
    assert [len(b["ranked"]) for b in result["budgets"]] == [5, 5, 5] and result["n_evals"] == 15
    assert result["candidates"] == 680  # 800 multiplier pairs, 680 distinct networks


def test_rexnet_optuna_under_a_flops_budget(tmp_path, cli_env):
    space = nas.get_space("rexnet", resolution=28, in_channels=1)
    budget = sorted(sum(op.macs() for op in space.ops(a)) for a in space.enumerate())[3000]
    out = run_cli(["space=rexnet", "searcher=optuna", "target=macs", f"budget={budget}", "searcher.n_evals=3",
                   "searcher.n_startup_trials=2", "evaluator.epochs=1", "progress=false", "run_name=x"],
                  tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "runs" / "x" / "result.json").read_text())
    assert result["n_evals"] == 3 and all(e["cost"] <= budget for e in result["history"])
    assert 0.1 < result["best"]["quality"] <= 1
