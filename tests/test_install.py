"""The installed package (not the checkout) carries its configs, data and plug-ins."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ROOT


def test_installed_package_works_outside_the_checkout(tmp_path):
    try:
        dist = metadata.distribution("hwnas")
    except metadata.PackageNotFoundError:
        pytest.skip("the project is not installed (pip install .)")
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        pytest.skip("editable install: the checkout is the package")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import json, nas, nas.app.run\n"
        "t = nas.get_space('nb201').benchmark_table()\n"
        "print(json.dumps({'file': nas.__file__, 'spaces': nas.list_spaces(), 'searchers': nas.list_searchers(),"
        " 'rows': len(t), 'conf': nas.app.run.yaml_options('target'),"
        " 'luts': {s: len(nas.lut.LUTFile.load(nas.lut.reference_path('cpu', s)).entries) for s in nas.list_spaces()}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert ROOT not in Path(info["file"]).resolve().parents
    assert {"nb201", "mbconv"} <= set(info["spaces"]) and {"random", "optuna"} <= set(info["searchers"])
    assert info["rows"] == 15625 and {"cpu", "macs", "relu"} <= set(info["conf"])
    assert {"uib", "tunas"} <= set(info["spaces"]) | set(info["searchers"])
    assert all(n > 0 for n in info["luts"].values())  # every space's CPU LUT is installed
