"""What a new user broke in one afternoon (issue 22), each through the CLI as they ran it:
paths outside the run folder, non-finite and negative numbers, tracebacks, state written
before the configuration was checked, plug-ins the LUT command ignored, the Python API's
models, cost formats and TuNAS's progress in the dashboard."""

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, TWO_WIDTHS_PLUGIN, run_cli

import nas
from nas.checks import json_text

NB201 = ["space=nb201", "evaluator=table", "searcher=random", "searcher.n_evals=2", "target=macs", "progress=false",
         "save_model=false"]


def tree(folder: Path) -> dict:
    """Every file under ``folder`` with a digest of its content (folders as None)."""
    return {str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def one_line_error(out) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def cli(module, args, cwd, env, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("run_name, message", [
    ("x/../../../../../../escape", "contains '/'"),
    ("../../escape", "contains '/'"),
    ("..", "is a relative folder"),
    ("", "must be a non-empty name"),
    ("a" * 300, "300 characters long"),
    ("tab\there", "contains '\\t'"),
])
def test_a_run_name_is_one_folder_inside_output_dir(tmp_path, cli_env, run_name, message):
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    before = tree(tmp_path)
    out = run_cli(NB201 + [f"run_name={run_name}"], work, cli_env)
    assert message in one_line_error(out)
    assert tree(tmp_path) == before  # nothing written anywhere: not even output_dir


def test_an_absolute_run_name_is_refused_and_writes_nowhere(tmp_path, cli_env):
    out = run_cli(NB201 + [f"run_name={tmp_path / 'elsewhere'}"], tmp_path, cli_env)
    assert "contains '/'" in one_line_error(out)
    assert list(tmp_path.iterdir()) == []


def test_a_resolution_the_network_cannot_downsample_is_refused(tmp_path, cli_env):
    out = run_cli(["space=mbconv", "target=macs", "data=synthetic", "searcher=random", "space.resolution=1",
                   "progress=false"], tmp_path, cli_env)
    assert "space.resolution=1 is too small for space 'mbconv'" in one_line_error(out)
    with pytest.raises(nas.NASError, match="too small"):
        nas.get_space("uib", resolution=1)
    nas.get_space("uib", resolution=2)  # small images in a space made for large ones stay possible


def test_nsga2_warns_when_its_population_outgrows_the_evaluations(tmp_path, cli_env):
    out = run_cli(NB201 + ["searcher=optuna", "searcher.sampler=nsga2", "searcher.n_evals=3",
                           "searcher.population_size=8"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    assert "warning: searcher.population_size=8 is larger than searcher.n_evals=3" in out.stderr


@pytest.mark.parametrize("module, args, message", [
    ("nas.lut", ["validate", "space=nb201", "target=cpu", "n=0"], "n must be >= 2, got 0"),
    ("nas.lut", ["validate", "space=nb201", "target=cpu", "n=-3"], "n must be >= 2, got -3"),
    ("nas.lut", ["build", "space=nb201", "target=cpu", "min_run_time=nan"], "min_run_time must be a finite number"),
    ("nas.lut", ["build", "space=nb201", "target=cpu", "target.options.lut_dir=/proc/x"],
     "target.options.lut_dir: cannot create or write the folder '/proc/x'"),
    ("nas.dashboard", ["RUN", "--port", "99999"], "--port must be <= 65535, got 99999"),
    ("nas.sweep", ["space=nb201", "evaluator=table", "searcher=random", "target=macs", "seed=range(5,1)"],
     "sweeps over no values"),
    ("nas.sweep", ["--name", "../x", "space=nb201", "evaluator=table", "searcher=random", "target=macs",
                   "seed=0,1"], "--name '../x' contains '/'"),
    ("nas.sweep", ["--out", "/proc/x.yaml", "space=nb201", "evaluator=table", "searcher=random", "target=macs",
                   "seed=0,1"], "--out: cannot write '/proc/x.yaml'"),
    ("nas.run", ["--multirun", *NB201, "seed=0,1", "budget=nan"], "budget must be a finite number"),
    ("nas.run", ["--multirun", *NB201, "run_name=../x,y"], "run_name '../x' contains '/'"),
])
def test_other_commands_refuse_in_one_line(tmp_path, cli_env, module, args, message):
    if module == "nas.dashboard":
        run_dir = tmp_path / "runs" / "ok"
        assert run_cli(NB201 + ["run_name=ok"], tmp_path, cli_env).returncode == 0
        args = [str(run_dir)] + args[1:]
    before = tree(tmp_path)
    out = cli(module, args, tmp_path, cli_env)
    assert message in one_line_error(out)
    assert tree(tmp_path) == before


def test_a_failed_run_writes_nothing_into_an_existing_run_folder(tmp_path, cli_env):
    assert run_cli(NB201 + ["run_name=keep"], tmp_path, cli_env).returncode == 0
    run_dir = tmp_path / "runs" / "keep"
    before = tree(run_dir)
    assert not (run_dir / ".hydra").exists() and not (run_dir / "run.log").exists()  # nothing of Hydra's own
    out = run_cli(NB201 + ["run_name=keep", "storage=postgresql://nobody@127.0.0.1:1/none"], tmp_path, cli_env)
    assert "cannot open storage" in one_line_error(out)
    assert tree(run_dir) == before  # config.yaml still names the run's own ledger
    from nas.app.dashboard import resolve_storage

    assert resolve_storage(str(run_dir)) == (f"sqlite:///{(run_dir / 'ledger.db').resolve()}", "keep")
    # a new run that fails in its setup leaves no folder behind
    out = run_cli(NB201 + ["run_name=new", "storage=postgresql://nobody@127.0.0.1:1/none"], tmp_path, cli_env)
    assert out.returncode == 2 and not (tmp_path / "runs" / "new").exists()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["keep"]


def test_a_damaged_ledger_says_what_to_do(tmp_path, cli_env):
    assert run_cli(NB201 + ["run_name=d"], tmp_path, cli_env).returncode == 0
    ledger = tmp_path / "runs" / "d" / "ledger.db"
    ledger.write_bytes(ledger.read_bytes()[:3000])  # a truncated copy
    line = one_line_error(run_cli(NB201 + ["run_name=d"], tmp_path, cli_env))
    assert "the ledger file is damaged" in line and "move it" in line and "another run_name" in line


def test_every_json_file_is_strict_json(tmp_path, cli_env):
    assert json_text({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}}) == \
        '{"a": null, "b": [null, 1.5], "c": {"d": null}}'

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    assert run_cli(NB201 + ["run_name=j", "budget=9e7"], tmp_path, cli_env).returncode == 0
    for path in (tmp_path / "runs" / "j").glob("*.json"):
        json.loads(path.read_text(), parse_constant=refuse)


def test_one_human_format_for_costs(tmp_path, cli_env):
    from nas.costs import format_cost

    assert format_cost(7588320, "MACs") == "7.588M MACs" and format_cost(8.1234567, "ms") == "8.123 ms"
    assert format_cost(1.2e9, "ReLUs") == "1.2G ReLUs" and format_cost(512, "params") == "512 params"
    out = run_cli(NB201 + ["run_name=f"], tmp_path, cli_env)
    best = next(line for line in out.stdout.splitlines() if line.startswith("best: "))
    assert " MACs, trial " in best and "e+0" not in best
    report = cli("nas.report", [str(tmp_path / "runs" / "f")], tmp_path, cli_env)
    assert report.returncode == 0 and "e+0" not in report.stdout
    rows = [line for line in report.stdout.splitlines() if line[:8].strip().lstrip("* ").isdigit()]
    result = json.loads((tmp_path / "runs" / "f" / "result.json").read_text())
    for row, e in zip(rows, result["pareto"]):  # the cost and MACs columns say the same number the same way
        assert format_cost(e["cost"], "MACs") in row and format_cost(e["metrics"]["macs"], "MACs").split()[0] in row


def test_the_lut_command_loads_plugins_and_the_missing_lut_command_works_when_pasted(tmp_path, cli_env):
    (tmp_path / "my_plugins.py").write_text(TWO_WIDTHS_PLUGIN)
    env = dict(cli_env, PYTHONPATH=f"{tmp_path}:{cli_env['PYTHONPATH']}")
    lut_dir = tmp_path / "my luts"
    args = ["plugins=[my_plugins]", "space=two_widths", "searcher=random", "searcher.n_evals=2", "data=synthetic",
            "data.n=64", "evaluator.epochs=1", "progress=false", "target=cpu", "target.options.build=none",
            f"target.options.lut_dir={lut_dir}", "searcher.max_samples_per_eval=5"]
    line = one_line_error(run_cli(args + ["run_name=none"], tmp_path, env))
    command = shlex.split(line.split("build it with: ", 1)[1])
    assert command[:4] == ["python", "-m", "nas.lut", "build"] and "plugins=[my_plugins]" in command
    assert f"target.options.lut_dir={lut_dir}" in command
    assert str(ROOT) not in line  # nothing points into the package
    built = cli("nas.lut", [*command[3:], "rounds=1", "min_run_time=0.002", "overhead_models=3", "progress=false"],
                tmp_path, env)
    assert built.returncode == 0, built.stderr
    found = run_cli(args + ["run_name=found"], tmp_path, env)
    assert found.returncode == 0, found.stderr
    assert json.loads((tmp_path / "runs" / "found" / "result.json").read_text())["lut"]["this_machine"] is True


def test_a_python_search_keeps_its_best_model_in_a_run_folder(tmp_path):
    data = nas.get_dataset("synthetic", n=96)

    def search():
        return nas.search("mbconv", nas.get_searcher("random", n_evals=2), cost_model="macs",
                          evaluator=nas.get_evaluator("train", epochs=1), data=data, run_dir=tmp_path / "mine")

    result = search()
    model, arch, space = nas.load(tmp_path / "mine")
    assert arch == result.best.arch and space.name == "mbconv"
    assert sum(p.numel() for p in model.parameters()) > 0
    saved = json.loads((tmp_path / "mine" / "result.json").read_text())
    assert saved["weights"] == "model.pt" and saved["best"]["arch_key"] == result.best.arch.key()
    again = search()  # the folder's ledger: read back, not trained again
    assert again.extras["reused_from_ledger"] == 2 and again.best.quality == result.best.quality
    with pytest.raises(nas.NASError, match="nas.load takes a run folder .* got SearchResult"):
        nas.load(result)


def test_opspec_help_and_the_readme_describe_every_built_in_kind():
    from nas.ops import OP_KINDS

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Describing the layers.**"):]
    for kind in ("conv", "norm", "linear", "pool", "gap", "add", "identity", "zero", "mbconv"):
        assert kind in OP_KINDS and f"``{kind}``" in nas.OpSpec.__doc__ and f"| `{kind}`" in section.replace(
            "| `identity`, `zero`", "| `identity` | `zero`")
    assert "register_op_kind" in nas.OpSpec.__doc__ and "TracedOpKind" in nas.OpSpec.__doc__
    # the README's example of a composite kind runs
    import re

    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", section, re.S).group(1), namespace)
    op = namespace["op"]
    assert op.kind == "se" and op.macs() > 0 and op.num_params() > 0


def test_tunas_writes_its_trajectory_and_a_readable_progress_study(tmp_path, cli_env):
    args = ["space=uib", "space.resolution=16", "searcher=tunas", "data.n=96", "searcher.steps=2",
            "searcher.batch_size=16", "searcher.reward_batch_size=16", "target=macs", "data=synthetic",
            "evaluator.epochs=1", "progress=false", "save_model=false", "searcher.measure_latency=false",
            "run_name=t"]
    out = run_cli(args, tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "runs" / "t"
    assert (run_dir / "trajectory.png").stat().st_size > 0
    from optuna_dashboard import get_note

    study = optuna.load_study(study_name="t:progress", storage=f"sqlite:///{run_dir / 'ledger.db'}")
    note = get_note(study)
    assert "not an evaluation" in note and "Best Trial and History panels mean nothing" in note
    for t in study.trials:  # every quantity is named next to its trial number
        assert f"| #{t.number} | {t.user_attrs['quantity']} |" in note
    assert study.metric_names == ["last logged value (not an objective)"]


def test_a_worker_waits_for_the_others_to_finish_searching(tmp_path):
    """A shared optuna search's result is the whole search: a worker reads the others'
    evaluations back only once no live worker can start another (issue: a worker that
    finished first missed the last evaluation of one still between counting and claiming)."""
    import os

    from nas.ledger import Ledger, _process_start_ticks

    space = nas.get_space("nb201")
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    me = Ledger(space, "s", storage)
    parent = os.getppid()  # a live process standing in for another worker
    other = f"{me.worker.rsplit(':', 2)[0]}:{parent}:{_process_start_ticks(parent)}"
    me.storage.set_study_user_attr(me.study_id, f"worker {other}", 0.0)
    assert me.still_searching() == [other]
    me.storage.set_study_user_attr(me.study_id, f"done {other}", 1.0)
    assert me.still_searching() == []
    me.done_searching()
    assert Ledger(space, "s", storage).still_searching() == []  # a new worker sees both done
