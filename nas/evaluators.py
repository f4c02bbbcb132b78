"""Evaluators give an Arch its quality (higher is better, accuracy in [0, 1])."""

from __future__ import annotations

import abc
import csv
import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nas.arch import Arch
from nas.data import ImageDataset
from nas.errors import NASError
from nas.registry import register_evaluator
from nas.space import Space
from nas.train import OPTIMIZERS, resolve_device, train


@dataclass
class Score:
    """What an evaluator says of one Arch. ``model`` is the trained network, if any."""

    quality: float
    metrics: dict = field(default_factory=dict)
    model: nn.Module | None = None


class Evaluator(abc.ABC):
    name: str = ""
    #: name of the quality metric (the ledger's first objective)
    metric: str = "accuracy"
    #: whether :meth:`bind` needs a data set
    needs_data: bool = False

    def bind(self, space: Space, data: ImageDataset | None = None) -> None:
        """Check that this evaluator can score archs of ``space`` (NASError if not)."""
        self.space = space
        self.data = data
        if self.needs_data and data is None:
            raise NASError(f"evaluator {self.name!r} needs a data set")

    @abc.abstractmethod
    def evaluate(self, space: Space, arch: Arch) -> Score:
        """Score one (validated) arch of ``space``."""


def arch_seed(seed: int, arch: Arch) -> int:
    """A seed that depends on the run seed and the arch only, so an arch evaluated again
    (after a resume, or by another worker) gets exactly the same result."""
    digest = hashlib.sha256(f"{seed}:{arch.canonical_json()}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@register_evaluator("train")
class TrainEvaluator(Evaluator):
    """Short training from scratch on the run's data set; quality = validation accuracy."""

    needs_data = True

    def __init__(self, epochs: int = 2, batch_size: int = 128, optimizer: str = "sgd", lr: float = 0.05,
                 momentum: float = 0.9, weight_decay: float = 5e-4, device: str = "auto", seed: int = 0):
        if epochs < 1:
            raise NASError(f"evaluator.epochs must be >= 1, got {epochs}")
        if batch_size < 2:
            raise NASError(f"evaluator.batch_size must be >= 2, got {batch_size}")
        if lr <= 0:
            raise NASError(f"evaluator.lr must be > 0, got {lr}")
        if optimizer not in OPTIMIZERS:
            raise NASError(f"unknown optimizer {optimizer!r}; accepted: {', '.join(map(repr, OPTIMIZERS))}")
        self.epochs, self.batch_size, self.optimizer = epochs, batch_size, optimizer
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.device = resolve_device(device)
        self.seed = seed

    def bind(self, space, data=None):
        super().bind(space, data)
        data.check_model_input(space.input_shape, space.num_classes)

    def evaluate(self, space, arch, teacher: nn.Module | None = None, distill_weight: float = 0.0,
                 temperature: float = 1.0):
        """Train ``arch`` from scratch; with a ``teacher``, with knowledge distillation from
        it (see :func:`nas.train.train`)."""
        s = arch_seed(self.seed, arch)
        torch.manual_seed(s)
        model = space.build(arch)
        metrics = train(model, self.data, space.input_shape, self.epochs, self.batch_size, self.optimizer,
                        self.lr, self.momentum, self.weight_decay, s, self.device, teacher=teacher,
                        distill_weight=distill_weight, temperature=temperature)
        return Score(metrics["accuracy"], metrics, model.cpu())


class BenchmarkTable:
    """A tabular benchmark: table key -> quality (read from a CSV file, optionally gzipped)."""

    def __init__(self, rows: dict[str, float], metric: str, source: str):
        self.rows = rows
        self.metric = metric
        self.source = source

    @classmethod
    def from_csv(cls, path, key_column: str, value_column: str, scale: float = 1.0) -> "BenchmarkTable":
        path = Path(path)
        if not path.is_file():
            raise NASError(f"benchmark table {str(path)!r} does not exist")
        opener = gzip.open if path.suffix == ".gz" else open
        rows = {}
        with opener(path, "rt", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or key_column not in reader.fieldnames or value_column not in reader.fieldnames:
                raise NASError(f"benchmark table {str(path)!r} needs columns {key_column!r} and {value_column!r}; "
                               f"it has {reader.fieldnames}")
            for row in reader:
                try:
                    rows[row[key_column]] = float(row[value_column]) * scale
                except ValueError:
                    raise NASError(f"benchmark table {str(path)!r}: {value_column}={row[value_column]!r} "
                                   f"is not a number (row {reader.line_num})") from None
        if not rows:
            raise NASError(f"benchmark table {str(path)!r} has no rows")
        return cls(rows, value_column, str(path))

    def __len__(self):
        return len(self.rows)

    def lookup(self, key: str) -> float:
        try:
            return self.rows[key]
        except KeyError:
            raise NASError(f"benchmark table {self.source!r} has no entry {key!r}") from None

    def best(self) -> tuple[str, float]:
        key = max(self.rows, key=self.rows.__getitem__)
        return key, self.rows[key]


@register_evaluator("table")
class TableEvaluator(Evaluator):
    """Looks an Arch up in its space's benchmark table (or a CSV given by ``path``)."""

    def __init__(self, path: str | None = None):
        self.path = path
        self.table = None

    def bind(self, space, data=None):
        super().bind(space, data)
        space.require("table", "evaluator 'table'")
        self.table = space.benchmark_table(self.path)
        self.metric = self.table.metric

    def evaluate(self, space, arch):
        return Score(self.table.lookup(space.table_key(arch)))
