"""Experiment tracking for CLI runs: ``logger=wandb`` logs a run to Weights & Biases.

What is logged: the resolved config; per evaluation (as it happens) the quality metric,
the target's cost, MACs, parameters, feasibility and the best quality so far; at the end
the Pareto plot, the best architecture's per-layer costs (and a differentiable search's
trajectory), the front as a table, the best's figures in the summary, and the best Arch
as an artifact (``arch.json``, with ``model.pt`` and ``model.onnx`` when the run saved
them).

``wandb.mode``: ``auto`` logs online when credentials are found (``WANDB_API_KEY``, or
``wandb login``'s entry in ``~/.netrc``) and otherwise offline, into the run directory,
saying so; ``wandb sync`` uploads an offline run later. ``online`` and ``offline`` force
a mode. The run's W&B id is derived from its directory, so a resumed run continues the
same W&B run (under a sweep agent, the agent's id is kept). Sweeps: ``nas.sweep``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from nas.errors import NASError

LOGGERS = ("none", "wandb")
WANDB_MODES = ("auto", "online", "offline")


def wandb_credentials() -> bool:
    """Whether W&B would find an API key without asking (no prompt may ever block a run)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return host in netrc.read_text()
    except OSError:
        return False


def make_logger(cfg: dict, run_dir: Path, metric: str, cost_label: str):
    """The logger the run's ``logger`` field names, or None."""
    name = cfg.get("logger") or "none"
    if name not in LOGGERS:
        raise NASError(f"unknown logger {name!r}; accepted: {', '.join(map(repr, LOGGERS))}")
    if name == "none":
        return None
    return WandbLogger(cfg, run_dir, metric, cost_label)


class WandbLogger:
    def __init__(self, cfg: dict, run_dir: Path, metric: str, cost_label: str):
        settings = dict(cfg.get("wandb") or {})
        mode = settings.get("mode", "auto")
        if mode not in WANDB_MODES:
            raise NASError(f"wandb.mode must be one of {', '.join(map(repr, WANDB_MODES))}, got {mode!r}")
        tags = settings.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise NASError(f"wandb.tags must be a list of strings, got {tags!r}")
        import wandb

        if mode == "auto":
            mode = "online" if wandb_credentials() else "offline"
            if mode == "offline":
                print(f"W&B: no credentials (WANDB_API_KEY or `wandb login`), logging offline to {run_dir / 'wandb'}; "
                      "upload later with `wandb sync`", file=sys.stderr)
        # A W&B sweep agent names the run it started (WANDB_RUN_ID); otherwise the id comes
        # from the run directory, so a resumed run continues its W&B run.
        run_id = os.environ.get("WANDB_RUN_ID") or hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        self.metric, self.cost_label, self.run_dir = metric, cost_label, Path(run_dir)
        try:
            self.run = wandb.init(project=settings.get("project") or "hwnas", entity=settings.get("entity"),
                                  name=cfg["run_name"], id=run_id, resume="allow", dir=str(run_dir), mode=mode,
                                  config=cfg, tags=tags, settings=wandb.Settings(init_timeout=60, silent=True))
        except Exception as exc:  # a tracking service must not cost a search
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NASError(f"W&B could not start a run ({first}); use wandb.mode=offline or logger=none") from None
        self.mode, self.name, self.dir = mode, self.run.name, Path(self.run.dir).parent

    def log_evaluation(self, evaluation, best) -> None:
        """One evaluation, as the search makes it (``best``: the best before it)."""
        known = [q for q in (best.quality if best else None, evaluation.quality if evaluation.feasible else None)
                 if q is not None]
        row = {self.metric: evaluation.quality, self.cost_label: evaluation.cost, "feasible": int(evaluation.feasible),
               **{k: evaluation.metrics[k] for k in ("macs", "params") if k in evaluation.metrics}}
        if known:
            row[f"best_{self.metric}"] = max(known)
        self.run.log(row)

    def finish(self, result, summary: dict) -> None:
        """The run's end: plots, front table, summary and the best Arch as an artifact."""
        import wandb

        images = {p.stem: wandb.Image(str(p)) for p in (self.run_dir / f for f in
                                                         ("pareto.png", "layers.png", "trajectory.png")) if p.exists()}
        if images:
            self.run.log(images)
        front = wandb.Table(columns=["trial", self.metric, self.cost_label, "arch"],
                            data=[[e.trial, e.quality, e.cost, e.arch.to_json()] for e in result.pareto])
        self.run.log({"pareto_front": front})
        self.run.summary.update({"n_evals": result.n_evals, "pareto_size": len(result.pareto)})
        if result.best is not None:
            self.run.summary.update({f"best_{self.metric}": result.best.quality,
                                     f"best_{self.cost_label}": result.best.cost})
            artifact = wandb.Artifact(f"{summary['run_name']}-best-arch", type="arch",
                                      metadata={"space": summary["space"], "quality": result.best.quality,
                                                "cost": result.best.cost, "decisions": dict(result.best.arch)})
            for name in ("arch.json", "model.pt", "model.onnx"):
                if (self.run_dir / name).exists():
                    artifact.add_file(str(self.run_dir / name))
            self.run.log_artifact(artifact)
        self.run.finish()

    def abort(self) -> None:
        self.run.finish(exit_code=1)
