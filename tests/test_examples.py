"""The examples run as their docstrings say."""

import json
import os
import subprocess
import sys

from conftest import ROOT, run_cli


def test_custom_space_example_from_python(cli_env):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_space.py")], capture_output=True,
                         text=True, env=cli_env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "space tiny_cnn: 729 architectures" in out.stdout
    assert "6 evaluated; Pareto front" in out.stdout and "best within the budget" in out.stdout
    assert "needs a space with 'supernet'" in out.stdout and "to offer it, implement supernet()" in out.stdout


def test_custom_space_example_from_the_cli(tmp_path, cli_env):
    env = dict(cli_env, PYTHONPATH=os.pathsep.join([str(ROOT / "examples"), cli_env["PYTHONPATH"]]))
    out = run_cli(["plugins=[custom_space]", "space=tiny_cnn", "data=digits", "searcher=optuna", "searcher.n_evals=6",
                   "target=macs", "evaluator.epochs=2", "progress=false", "run_name=c"], tmp_path, env)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "runs" / "c" / "result.json").read_text())
    assert result["space"] == "tiny_cnn" and result["n_evals"] == 6 and result["weights"] == "model.pt"
