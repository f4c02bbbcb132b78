"""logger=wandb: a run logged to Weights & Biases, offline without credentials, read back
from the run's own W&B log file."""

import json
import struct

from conftest import run_cli

NB201 = ["space=nb201", "evaluator=table", "searcher=random", "target=macs", "progress=false"]


def wandb_records(path):
    """The protobuf records of a W&B transaction log (a LevelDB-style log: 32 KiB blocks of
    chunks with a 7-byte header: CRC, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or last chunk of a record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_logger_runs_offline_without_credentials(tmp_path, cli_env):
    env = {k: v for k, v in cli_env.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"))
    out = run_cli(NB201 + ["logger=wandb", "searcher.n_evals=5", "run_name=w", "wandb.tags=[ci]"], tmp_path, env,
                  timeout=240)
    assert out.returncode == 0, out.stderr
    assert "W&B: no credentials" in out.stderr and "logging offline" in out.stderr
    assert "W&B: logged offline as 'w'" in out.stdout
    run_dir = tmp_path / "runs" / "w"
    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(log)
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["run_name"] == "w" and config["space"]["name"] == "nb201" and list(run.tags) == ["ci"]
    rows = [{item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
             for item in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
    evaluations = [row for row in rows if "accuracy" in row]
    assert len(evaluations) == 5
    result = json.loads((run_dir / "result.json").read_text())
    assert [row["accuracy"] for row in evaluations] == [e["quality"] for e in result["history"]]
    assert evaluations[-1]["best_accuracy"] == result["best"]["quality"]
    assert any("pareto" in row and "layers" in row for row in rows) and any("pareto_front" in row for row in rows)
    artifacts = {r.artifact.name: r.artifact for r in records if r.WhichOneof("record_type") == "artifact"}
    assert artifacts["w-best-arch"].type == "arch"
    assert "exit" in kinds


def test_bad_logger_settings_are_one_line_errors(tmp_path, cli_env):
    out = run_cli(NB201 + ["logger=tensorboard"], tmp_path, cli_env)
    assert out.returncode == 2 and "unknown logger 'tensorboard'; accepted: 'none', 'wandb'" in out.stderr
    out = run_cli(NB201 + ["logger=wandb", "wandb.mode=sometimes"], tmp_path, cli_env)
    assert out.returncode == 2 and "wandb.mode must be one of 'auto', 'online', 'offline'" in out.stderr
