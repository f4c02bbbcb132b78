"""A PostgreSQL server of one's own for trying shared search on one machine, for tests and
benchmarks: Debian's ``postgresql`` package, a fresh data folder, listening on 127.0.0.1
only (and a Unix socket in that folder), trust authentication, stopped by ``stop()``.

    with LocalPostgres() as url:      # postgresql://postgres@127.0.0.1:PORT/postgres
        ...  # python -m nas.run ... storage=URL run_name=NAME, on several workers
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from nas.errors import NASError


def postgres_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def install_postgres() -> None:
    """apt-get install postgresql when it is missing and this process may (root)."""
    if postgres_binary("initdb") is not None or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "postgresql"]
    if subprocess.run(install, env=env, capture_output=True, timeout=1200).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        subprocess.run(install, env=env, capture_output=True, timeout=1200)


class LocalPostgres:
    def __init__(self, max_connections: int = 100):
        if postgres_binary("initdb") is None:
            raise NASError("PostgreSQL is not installed: apt-get install postgresql")
        self.root = Path(tempfile.mkdtemp(prefix="nas-pg-"))
        self.data = self.root / "data"
        self.as_user = []
        if os.geteuid() == 0:  # the server refuses to run as root
            shutil.chown(self.root, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.max_connections = max_connections

    def start(self) -> str:
        self._run(postgres_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                   f"-c max_connections={self.max_connections}")
        self._run(postgres_binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "start")
        return self.url

    def stop(self) -> None:
        """Stop the server (checked by its port: a stopped server's process may linger as
        a zombie here) and delete its folder."""
        if self.data.exists():
            self._run(postgres_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _run(self, *args, check=True):
        out = subprocess.run(self.as_user + list(args), capture_output=True, text=True, timeout=300)
        if check and out.returncode != 0:
            raise NASError(f"{Path(args[0]).name} failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}")

    def __enter__(self) -> str:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
