"""``python -m nas.dashboard RUN_DIR_OR_STORAGE [--port 8080] [--host 127.0.0.1]``: the
Optuna dashboard for a run's ledger.

The argument is a run directory (its ``config.yaml`` names the storage, by default the
SQLite ``ledger.db`` beside it, and the study: the run name), a ``.db`` SQLite file, a
``.log`` journal file, or any Optuna storage URL (``postgresql://...``). In the dashboard
every evaluation is a trial: the decisions are its parameters, the quality metric and the
target's cost its two named objectives (so the Pareto-front plot shows the search's
front), the arch JSON and the other metrics its user attributes. Searchers that learn a
distribution over decisions keep their progress in a study of its own, ``RUN_NAME:progress``
(``nas.ledger.ProgressLog``), plotted as intermediate values. The server listens on
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import yaml

from nas import checks
from nas.errors import USER_ERROR_EXIT_CODE, NASError


def resolve_storage(target: str) -> tuple[str, str | None]:
    """(storage URL or journal path, the run's study name or None) for the argument."""
    if "://" in target:
        return target, None
    path = Path(target).expanduser()
    if path.is_dir():
        config_path = path / "config.yaml"
        if not config_path.is_file():
            raise NASError(f"{target!r} is not a run directory (it has no config.yaml); give a run directory, "
                           "a .db or .log file, or a storage URL")
        config = yaml.safe_load(config_path.read_text()) or {}
        storage = config.get("storage") or f"sqlite:///{(path / 'ledger.db').resolve()}"
        return storage, config.get("run_name")
    if path.is_file() and path.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{path.resolve()}", None
    if path.is_file() and path.suffix == ".log":
        return str(path.resolve()), None
    raise NASError(f"{target!r} is neither a run directory, a .db/.sqlite file, a .log journal file nor a storage URL")


def study_url(storage, study_name: str | None, host: str, port: int) -> str:
    """The dashboard's page for the run's study (its study list when none is named)."""
    base = f"http://{host}:{port}/dashboard"
    if study_name is None:
        return base
    names = {s.study_name: s._study_id for s in storage.get_all_studies()}
    if study_name not in names:
        raise NASError(f"the storage has no study {study_name!r} (it has: {', '.join(sorted(names)) or 'none'}); "
                       "has the run evaluated anything yet?")
    return f"{base}/studies/{names[study_name]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nas.dashboard",
                                     description="Open a run's ledger in the Optuna dashboard.")
    parser.add_argument("target", help="run directory, .db or .log file, or Optuna storage URL")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from nas.ledger import open_storage

    try:
        checks.port("--port", args.port)
        location, study_name = resolve_storage(args.target)
        storage = open_storage(location)
        url = study_url(storage, study_name, args.host, args.port)
        with socket.socket() as probe:  # a taken port is a one-line error, not a traceback
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((args.host, args.port))
            except OSError as exc:
                raise NASError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); choose another --port")
    except NASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    from optuna_dashboard import run_server

    print(f"Optuna dashboard: {url}  (Ctrl+C stops it)", flush=True)
    try:
        run_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0
