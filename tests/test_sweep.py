"""nas.sweep: W&B sweep configurations over a searcher's settings and over a space's
decisions; a sweep run's exact command line (built as W&B's agent builds it) runs offline,
and Hydra's --multirun runs the same settings."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from nas.app.sweep import main as sweep_main

NB201 = ["space=nb201", "evaluator=table", "target=macs", "progress=false"]


def agent_command(config: dict, values: dict) -> list[str]:
    """The command W&B's agent runs for one sweep run with these parameter values: its
    own argument formatting, then the macro expansion of ``wandb agent`` (``${env}`` is
    /usr/bin/env and ``${interpreter}`` is python)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(env=["/usr/bin/env"], interpreter=["python"])
    command = []
    for chunk in config["command"]:
        command += macros[chunk[2:-1]] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


def offline_env(cli_env, tmp_path):
    env = {k: v for k, v in cli_env.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"),
               PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    return env


def write_sweep(tmp_path, capsys, args):
    out = tmp_path / "sweep.yaml"
    assert sweep_main(["--out", str(out), *args]) == 0
    return yaml.safe_load(out.read_text()), capsys.readouterr().out


def test_searcher_sweep_run_command_runs_a_whole_search(tmp_path, cli_env, capsys):
    config, printed = write_sweep(tmp_path, capsys, NB201 + ["searcher=random", "searcher.n_evals=3,4", "seed=0,1"])
    assert config["method"] == "grid" and config["metric"] == {"name": "best_accuracy", "goal": "maximize"}
    assert config["parameters"] == {"searcher.n_evals": {"values": [3, 4]}, "seed": {"values": [0, 1]}}
    assert "${args_no_hyphens}" in config["command"] and "logger=wandb" in config["command"]
    assert "4 combinations" in printed

    env = offline_env(cli_env, tmp_path)
    env["WANDB_RUN_ID"] = "sweeprun01"  # set by the agent for the run it starts
    command = agent_command(config, {"searcher.n_evals": 4, "seed": 1})
    out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "runs" / "nb201-searcher-sweep-n_evals4-seed1"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["n_evals"] == 4 and result["seed"] == 1 and result["searcher"] == "random"
    assert list((run_dir / "wandb").glob("offline-run-*/run-sweeprun01.wandb"))  # the agent's run id is kept

    # The offline way: the printed --multirun line (Hydra's grid over the same values).
    line = next(s.strip() for s in printed.splitlines() if "--multirun" in s)
    multirun = shlex.split(line)
    assert multirun[:4] == ["python", "-m", "nas.run", "--multirun"]
    multirun = [sys.executable] + multirun[1:]
    multirun = [a.replace("searcher.n_evals=3,4", "searcher.n_evals=2,3").replace("seed=0,1", "seed=0")
                for a in multirun]
    out = subprocess.run(multirun, cwd=tmp_path, env=env | {"WANDB_RUN_ID": ""}, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr
    for n in (2, 3):
        result = json.loads((tmp_path / "runs" / f"nb201-searcher-sweep-n_evals{n}-seed0" / "result.json").read_text())
        assert result["n_evals"] == n


def test_arch_sweep_run_command_evaluates_that_arch(tmp_path, cli_env, capsys):
    config, _ = write_sweep(tmp_path, capsys, ["--over", "arch"] + NB201 + [
        "decisions.edge_1_0=nor_conv_3x3", "decisions.edge_2_0=skip_connect,nor_conv_1x1"])
    assert config["method"] == "random"
    params = config["parameters"]
    # edge_1_0 is fixed, edge_2_0 narrowed, the other four edges over all five operations
    assert params["decisions.edge_2_0"] == {"values": ["skip_connect", "nor_conv_1x1"]}
    assert sorted(params) == ["decisions.edge_2_0", "decisions.edge_2_1", "decisions.edge_3_0",
                              "decisions.edge_3_1", "decisions.edge_3_2"]
    assert all(len(params[k]["values"]) == 5 for k in params if k != "decisions.edge_2_0")

    values = {k: spec["values"][-1] for k, spec in params.items()}
    out = subprocess.run(agent_command(config, values), cwd=tmp_path, env=offline_env(cli_env, tmp_path),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    (run_dir,) = (tmp_path / "runs").glob("nb201-arch-sweep-*")
    arch = json.loads((run_dir / "arch.json").read_text())["decisions"]
    assert arch == {"edge_1_0": "nor_conv_3x3", **{k.split(".", 1)[1]: v for k, v in values.items()}}
    result = json.loads((run_dir / "result.json").read_text())
    assert result["n_evals"] == 1


def test_decisions_override_sets_one_arch(tmp_path, cli_env):
    from conftest import run_cli

    out = run_cli(NB201 + ["decisions.edge_1_0=skip_connect", "run_name=d"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    arch = json.loads((tmp_path / "runs" / "d" / "arch.json").read_text())["decisions"]
    assert arch["edge_1_0"] == "skip_connect" and arch["edge_2_0"] == "none"  # the rest: the space's default arch
    out = run_cli(NB201 + ["decisions.edge_9=none"], tmp_path, cli_env)
    assert out.returncode == 2 and "space 'nb201' has no decision 'edge_9'" in out.stderr
    out = run_cli(NB201 + ["decisions.edge_1_0=conv9x9"], tmp_path, cli_env)
    assert out.returncode == 2 and "decisions.edge_1_0='conv9x9' is not an option; accepted: 'none'" in out.stderr


def test_bad_sweeps_are_one_line_errors(tmp_path, capsys):
    cases = [
        (NB201 + ["searcher=random"], "--over searcher needs at least one swept setting"),
        (NB201 + ["searcher.n_evals=3,4", "run_name=x"], "run_name is set by the sweep"),
        (NB201 + ["searcher.n_evals=interval(1,5)"], "interval sweeps are not supported"),
        (NB201 + ["searcher.n_evls=3,4"], "'searcher.n_evls' is not a field of searcher"),
        (["--over", "space"] + NB201, "--over 'space' is not accepted; use one of 'searcher', 'arch'"),
        (["--method", "hyperband"] + NB201 + ["seed=0,1"], "--method 'hyperband' is not accepted"),
        (["--over", "arch"] + NB201 + ["decisions.edge_1_0=conv9x9,none"], "decisions.edge_1_0='conv9x9' is not"),
        (["space=nope", "seed=0,1"], "unknown space 'nope'; registered spaces:"),
    ]
    for args, message in cases:
        assert sweep_main(["--out", str(tmp_path / "s.yaml"), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "s.yaml").exists()
