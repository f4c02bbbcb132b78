"""A run's best model back in one call (:func:`load`), and its export to ONNX.

A run directory keeps the best trained model as ``model.pt`` (the space's name and
configuration, the Arch and the weights) next to ``arch.json``; :func:`load` rebuilds the
space (importing the run's ``plugins`` first, for spaces defined in user code), the
network, and loads the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from nas.arch import Arch
from nas.errors import NASError
from nas.space import Space


class SavedModel(NamedTuple):
    """A trained network with its architecture and space (unpacks as ``model, arch, space``)."""

    model: nn.Module
    arch: Arch
    space: Space


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` through a temporary file, so a kill never leaves a torn checkpoint."""
    tmp = Path(path).with_suffix(Path(path).suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class BestModelKeeper:
    """Keeps the best feasible trained model of a search as ``run_dir/model.pt`` (written
    atomically, replaced when a better one is evaluated): the ``on_evaluation`` hook of a
    :class:`nas.SearchProblem`, for the CLI's runs and ``nas.search(run_dir=...)`` alike."""

    FILE = "model.pt"

    def __init__(self, run_dir: Path, space: Space):
        self.path, self.space = Path(run_dir) / self.FILE, space

    def __call__(self, evaluation, model, best_before) -> None:
        if model is None or not evaluation.feasible:
            return
        if best_before is None or evaluation.quality > best_before.quality or (
                evaluation.quality == best_before.quality and evaluation.cost < best_before.cost):
            save_atomic({"space": self.space.name, "space_config": self.space.config(), "arch": dict(evaluation.arch),
                         "arch_key": evaluation.arch.key(), "state_dict": model.state_dict()}, self.path)

    def weights_of(self, best) -> str | None:
        """The file name of the kept model when it is ``best``'s (a resumed run may have
        found its best before the model was kept), else None."""
        if best is None or not self.path.exists():
            return None
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        return self.FILE if saved.get("arch_key") == best.arch.key() else None


def write_result(run_dir: Path, summary: dict, result, space: Space) -> None:
    """A finished search's files in its run folder: ``result.json`` (``summary``, strict
    JSON) and, when it found one, the best architecture as ``arch.json``."""
    from nas.checks import json_text

    (Path(run_dir) / "result.json").write_text(json_text(summary, indent=2))
    if result.best is not None:
        (Path(run_dir) / "arch.json").write_text(result.best.arch.to_json(space=space.name, indent=2))


def load(run_dir) -> SavedModel:
    """The best trained model of the run in ``run_dir`` (a folder of ``python -m nas.run``
    or of ``nas.search(..., run_dir=...)``), in eval mode, on the CPU."""
    import yaml

    from nas import get_space
    from nas.registry import import_plugins

    if not isinstance(run_dir, (str, Path)):
        raise NASError(f"nas.load takes a run folder (str or Path), got {type(run_dir).__name__}; a search keeps "
                       "its best model when given one: nas.search(..., run_dir='runs/mine'), then nas.load('runs/mine')")
    run_dir = Path(run_dir).expanduser()
    path = run_dir / "model.pt"
    if not path.is_file():
        why = "no such run directory" if not run_dir.is_dir() else \
            "no model.pt: the run trained no network within its budget, its evaluator does not train, or save_model=false"
        raise NASError(f"cannot load a model from {str(run_dir)!r}: {why}")
    config = run_dir / "config.yaml"
    if config.is_file():
        import_plugins((yaml.safe_load(config.read_text()) or {}).get("plugins"))
    saved = torch.load(path, map_location="cpu", weights_only=True)
    space = get_space(saved["space"], **saved["space_config"])
    arch = space.validate(Arch(saved["arch"]))
    model = space.build(arch)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise NASError(f"{str(path)!r} does not fit the network space {space.name!r} builds for its arch: "
                       f"{str(exc).splitlines()[0]}") from None
    return SavedModel(model.eval(), arch, space)


def onnx_bytes(module: nn.Module, x: torch.Tensor, dynamic_batch: bool = False) -> bytes:
    """``module`` exported to ONNX for inputs like ``x`` (input name ``x``, output
    ``logits``); with ``dynamic_batch`` for any batch size, else for ``x``'s."""
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of torch.export, which
        # needs the onnxscript package on top; it exports these plain CNN layers exactly.
        warnings.simplefilter("ignore")
        axes = {"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
        torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes=axes)
    return buffer.getvalue()


def export_onnx(run_dir, path=None) -> Path:
    """Write the run's best model as ONNX (``run_dir/model.onnx`` by default; any batch
    size; its Arch JSON in the metadata under ``arch``); needs the ``onnx`` package
    (``pip install 'hwnas[onnx]'``)."""
    try:
        import onnx
    except ImportError:
        raise NASError("ONNX export needs the onnx package: pip install 'hwnas[onnx]'") from None
    model, arch, space = load(run_dir)
    path = Path(path) if path is not None else Path(run_dir) / "model.onnx"
    data = onnx_bytes(model, torch.zeros(1, *space.input_shape), dynamic_batch=True)
    proto = onnx.load_from_string(data)
    proto.metadata_props.add(key="arch", value=arch.to_json(space=space.name))
    onnx.save(proto, str(path))
    return path
