import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Keep tests fast and deterministic on a 2-core machine.
torch.set_num_threads(1)

#: modules whose tests each run the CLI several times (reference, killed, resumed, torchrun):
#: run first, so that two workers end on short tests rather than one on a long one
LONG_FIRST = ("test_resume.py", "test_distributed.py", "test_shared.py", "test_machine_luts.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONG_FIRST)  # stable: the order is kept otherwise


@pytest.fixture(scope="session", autouse=True)
def lut_folder(tmp_path_factory):
    """A LUT folder of the test session's own: no test reads or fills the user's cache, and
    none finds a LUT of this machine it did not build (CI machines differ)."""
    from nas.lut import LUT_DIR_ENV

    folder = tmp_path_factory.mktemp("lut_folder")
    previous = os.environ.get(LUT_DIR_ENV)
    os.environ[LUT_DIR_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(LUT_DIR_ENV, None)
    else:
        os.environ[LUT_DIR_ENV] = previous


@pytest.fixture
def cli_env(lut_folder):
    """Environment for CLI subprocesses: the checkout first on the path, one thread, the
    session's LUT folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(args, cwd, env, timeout=300):
    import subprocess

    return subprocess.run([sys.executable, "-m", "nas.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


#: a space plug-in written as a user would, imported with plugins=[my_plugins]
TWO_WIDTHS_PLUGIN = '''
from torch import nn
import nas

@nas.register_space("two_widths")
class TwoWidths(nas.Space):
    def _make_decisions(self):
        return [nas.Decision("width", (4, 8))]

    def ops(self, arch):
        w = arch["width"]
        return [nas.OpSpec.make("conv", "conv", c_in=self.in_channels, c_out=w, res=self.resolution, k=3, act="relu"),
                nas.OpSpec.make("gap", "gap", c_in=w, res=self.resolution),
                nas.OpSpec.make("linear", "fc", c_in=w, c_out=self.num_classes)]

    def build(self, arch):
        return nn.Sequential(*(op.build() for op in self.ops(arch)))
'''


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="session")
def chromium():
    """Debian's headless Chromium, installed with apt-get by the test setup when missing."""
    import shutil
    import subprocess

    def find():
        return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)

    if find() is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=1200).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=1200)
    path = find()
    if path is None:
        pytest.fail("the dashboard test needs Chromium: apt-get install chromium (the setup does it when run as root)")
    return path


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of the test's own (Debian's package, installed by the setup when
    missing): a fresh data folder, listening on 127.0.0.1 only, stopped afterwards."""
    from nas.app.localdb import LocalPostgres, install_postgres, postgres_binary

    install_postgres()
    if postgres_binary("initdb") is None:
        pytest.fail("the shared-search test needs PostgreSQL: apt-get install postgresql (done by the setup as root)")
    server = LocalPostgres(max_connections=50)
    with server as url:
        yield url
    assert not server.listening(), "PostgreSQL still listens after the test"
