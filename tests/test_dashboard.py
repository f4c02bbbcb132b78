"""python -m nas.dashboard: a run's ledger in the Optuna dashboard, loaded in headless
Chromium; the page shows the study, its named objectives and its Pareto front. A
screenshot is kept in test-artifacts/dashboard.png."""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import CHROMIUM_FLAGS, ROOT, run_cli

NB201 = ["space=nb201", "evaluator=table", "searcher=random", "target=macs", "progress=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def page_text(html: str) -> str:
    html = re.sub(r"<(style|script)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_dashboard_shows_the_runs_study_in_chromium(tmp_path, cli_env, chromium):
    out = run_cli(NB201 + ["searcher.n_evals=8", "run_name=dash"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "runs" / "dash" / "result.json").read_text())

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "nas.dashboard", str(tmp_path / "runs" / "dash"), "--port",
                               str(port)], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/api/studies")
        url = server.stdout.readline().split()[2]
        assert url == f"http://127.0.0.1:{port}/dashboard/studies/1"
        browse = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000"]
        dom = subprocess.run(browse + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
        text = page_text(dom.stdout)
        assert "dash (id=1)" in text, text[:500]
        assert "Objective X: accuracy" in text and "Objective Y: macs" in text  # the ledger's metric names
        assert "Pareto Front" in text
        # "Best Trials" lists the non-dominated trials: the run's Pareto front
        best = text.split("Best Trials", 1)[1]
        shown = {int(n) for n in re.findall(r"Trial (\d+) Objective Values", best)}
        assert shown == {e["trial"] for e in result["pareto"]}
        for e in result["pareto"]:
            assert f"edge_1_0: {e['arch']['edge_1_0']}" in best

        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shot = artifacts / "dashboard.png"
        shot.unlink(missing_ok=True)
        subprocess.run(browse + ["--window-size=1400,1000", f"--screenshot={shot}", url], capture_output=True,
                       timeout=120)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not port_open(port)


def test_dashboard_bad_input_is_one_line(tmp_path, cli_env):
    def dashboard(*args):
        return subprocess.run([sys.executable, "-m", "nas.dashboard", *args], env=cli_env, capture_output=True,
                              text=True, timeout=60)

    out = dashboard(str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "is neither a run directory, a .db/.sqlite file" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = run_cli(NB201 + ["searcher.n_evals=2", "run_name=d"], tmp_path, cli_env)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = dashboard(str(tmp_path / "runs" / "d"), "--port", str(taken.getsockname()[1]))
    assert out.returncode == 2 and "choose another --port" in out.stderr
