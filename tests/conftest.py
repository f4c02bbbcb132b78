import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Keep tests fast and deterministic on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def cli_env():
    """Environment for CLI subprocesses: the checkout first on the path, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(args, cwd, env, timeout=300):
    import subprocess

    return subprocess.run([sys.executable, "-m", "nas.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
